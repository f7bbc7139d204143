"""The Graph tab in real headless Chromium: graphs of a torch-exported ONNX model, a TF1 Saver
``.meta`` and a ``.keras`` file laid out by the vendored elkjs; a clicked node's weights; scopes
collapsing and expanding; search; pan and zoom; nodes coloured by change between two checkpoints;
markup in names shown as text. Screenshots: ``test-artifacts/viewer-graph-*.png``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _graph_files import MARKUP, GraphFiles, graph_files_once
from _chromium import ARTIFACTS, viewer_page

from weightvault.viewer import ViewerServer

ONNX_A, ONNX_B, META0, META1, KERAS, HOSTILE = range(6)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> GraphFiles:
    return graph_files_once(tmp_path_factory)


@pytest.fixture(scope="module")
def server(files: GraphFiles) -> Iterator[ViewerServer]:
    paths = [files.onnx_a, files.onnx_b, files.tf_meta0, files.tf_meta1, files.keras, files.hostile]
    with ViewerServer(paths).start() as srv:
        yield srv


@pytest.fixture
def page(browser: Any, server: ViewerServer) -> Iterator[Any]:
    with viewer_page(browser, server.url, 60_000) as page:
        yield page


def layouts(page: Any) -> int:
    return int(page.evaluate("() => window.__graphTimings.length"))


def wait_layout(page: Any, before: int) -> None:
    page.wait_for_function(f"() => window.__graphTimings.length > {before}")


def open_graph(page: Any, file: int) -> None:
    before = layouts(page)
    page.select_option("#file-select", str(file))
    page.click('#tabs button[data-view="graph"]')
    wait_layout(page, before)


def node(page: Any, name: str) -> Any:
    return page.locator(f'.gnode[data-name="{name}"]')


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"viewer-graph-{name}.png"
    page.screenshot(path=os.fspath(path))
    assert path.stat().st_size > 10_000
    return path


def test_onnx_graph_and_a_nodes_weights(page: Any) -> None:
    open_graph(page, ONNX_A)
    names = page.eval_on_selector_all(".gnode", "gs => gs.map(g => g.dataset.name)")
    assert set(names) == {"image", "/conv/Conv", "/act/Relu", "/pool/GlobalAveragePool", "/Flatten", "/fc/Gemm", "logits (output)"}
    assert node(page, "/fc/Gemm").locator(".gop").text_content() == "Gemm"
    assert "[1×3×8×8]" in page.eval_on_selector_all(".gedge-label", "ts => ts.map(t => t.textContent)")
    node(page, "/fc/Gemm").click()
    panel = page.locator("#graph-panel")
    assert panel.locator(".gweights-list li").evaluate_all("ls => ls.map(l => l.dataset.name)") == ["fc.weight", "fc.bias"]
    page.wait_for_selector("#graph-weight .graph-stats")
    assert panel.locator("#graph-weight h4").first.text_content() == "fc.weight"
    assert panel.locator("#graph-weight .chip").first.text_content() == "float32"
    assert panel.locator("#graph-weight svg.hist rect.bar").count() > 0
    assert panel.locator("#graph-weight canvas.heat").count() == 1  # [5, 4]: a heat-map
    panel.locator('.gweights-list li[data-name="fc.bias"]').click()
    page.wait_for_function("() => (document.querySelector('#graph-weight h4') || {}).textContent === 'fc.bias'")
    assert node(page, "/fc/Gemm").get_attribute("class").split().count("selected") == 1
    shot(page, "onnx")


def test_tf_meta_training_graph_scopes_and_search(page: Any) -> None:
    open_graph(page, META1)
    assert node(page, "layer1/MatMul").count() == 1  # 112 nodes: every scope open
    before = layouts(page)
    page.click("#graph-collapse")
    wait_layout(page, before)
    scopes = set(page.eval_on_selector_all(".gnode.scope", "gs => gs.map(g => g.dataset.scope)"))
    assert {"layer1", "layer2", "gradients", "GradientDescent", "save"} <= scopes
    assert node(page, "layer1/MatMul").count() == 0
    shot(page, "tf-collapsed")
    before = layouts(page)
    page.dblclick('.gnode.scope[data-scope="layer2"]')
    wait_layout(page, before)
    assert node(page, "layer2/MatMul").count() == 1 and node(page, "layer1/MatMul").count() == 0
    # search opens the scopes around the node found, selects it and lists its weights
    before = layouts(page)
    page.fill("#graph-search", "layer1/MatMul")
    page.press("#graph-search", "Enter")
    wait_layout(page, before)
    page.wait_for_selector('.gnode.selected[data-name="layer1/MatMul"]')
    assert page.locator(".gweights-list li").evaluate_all("ls => ls.map(l => l.dataset.name)") == ["layer1/weights"]
    # the scope breadcrumb collapses it again
    before = layouts(page)
    page.locator("#graph-panel .scope-crumbs button", has_text="layer1").click()
    wait_layout(page, before)
    assert node(page, "layer1/MatMul").count() == 0
    assert page.locator('.gnode.scope.selected[data-scope="layer1"]').count() == 1
    shot(page, "tf-search")


def test_keras_nested_model_and_pan_zoom(page: Any) -> None:
    open_graph(page, KERAS)
    assert node(page, "inner/d1").count() == 1 and node(page, "fc1").count() == 1
    node(page, "inner/d1").click()
    assert page.locator(".gweights-list li").evaluate_all("ls => ls.map(l => l.dataset.name)") == ["inner/d1/kernel", "inner/d1/bias"]
    before = layouts(page)
    page.locator("#graph-panel .scope-crumbs button", has_text="inner").click()
    wait_layout(page, before)
    assert page.locator('.gnode.scope[data-scope="inner"]').count() == 1 and node(page, "inner/d1").count() == 0
    transform = page.get_attribute("#graph-layer", "transform")
    box = page.locator("#graph-canvas").bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.wheel(0, -400)  # zoom in around the pointer
    zoomed = page.get_attribute("#graph-layer", "transform")
    assert zoomed != transform
    page.mouse.down()
    page.mouse.move(box["x"] + 250, box["y"] + 180, steps=5)
    page.mouse.up()
    assert page.get_attribute("#graph-layer", "transform") not in (transform, zoomed)
    shot(page, "keras")


def test_diff_colouring_shows_what_changed(page: Any) -> None:
    open_graph(page, ONNX_A)
    page.select_option("#graph-diff-file", str(ONNX_B))
    page.wait_for_selector(".gnode.changed")
    changed = page.eval_on_selector_all(".gnode.changed", "gs => gs.map(g => g.dataset.name)")
    unchanged = page.eval_on_selector_all(".gnode.unchanged", "gs => gs.map(g => g.dataset.name)")
    assert changed == ["/fc/Gemm"] and unchanged == ["/conv/Conv"]  # only fc's weights moved
    node(page, "/fc/Gemm").click()
    page.wait_for_selector("#graph-weight .graph-diff-hist svg.hist")
    assert "max |Δ| 0.5" in page.text_content("#graph-panel .diff-line")
    shot(page, "diff-onnx")
    # TF1: one training step of layer2 only, between two Saver checkpoints of one graph
    before = layouts(page)
    page.select_option("#file-select", str(META0))
    wait_layout(page, before)
    page.select_option("#graph-diff-file", str(META1))
    page.wait_for_selector('.gnode.changed[data-name="layer2/MatMul"]')
    assert "changed" not in node(page, "layer1/MatMul").get_attribute("class").split()
    assert "unchanged" in node(page, "layer1/MatMul").get_attribute("class").split()
    page.select_option("#graph-diff-metric", "max_rel")
    assert node(page, "layer2/MatMul").evaluate("g => g.querySelector('rect').style.fill") != ""
    shot(page, "diff-tf")


def test_markup_in_names_is_text(page: Any) -> None:
    open_graph(page, HOSTILE)
    titles = page.eval_on_selector_all(".gnode > title", "ts => ts.map(t => t.textContent)")
    assert any(MARKUP in t for t in titles)  # the full name, as text
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#graph-canvas img, #graph-canvas script, #graph-panel img").count() == 0
    evil = page.locator(".gnode", has=page.locator(".gop", has_text="Gemm"))
    evil.click()
    assert MARKUP[:20] in page.text_content("#graph-panel .gpanel-title")
    assert page.locator("#graph-panel img, #graph-panel script").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    # the cycle b -> c -> b is laid out like any other edge
    assert node(page, "/loop/b").count() == 1 and node(page, "/loop/c").count() == 1


def test_file_without_a_graph_says_so(browser: Any, tmp_path: Path) -> None:
    import numpy as np

    import weightvault

    path = weightvault.save({"w": np.ones(3, np.float32)}, tmp_path / "w.safetensors", fsync=False)
    with ViewerServer([path]).start() as srv:
        page = browser.new_page()
        page.goto(srv.url)
        page.wait_for_selector(".tensor-row")
        page.click('#tabs button[data-view="graph"]')
        page.wait_for_selector(".graph-none")
        assert "carries no model graph" in page.text_content(".graph-none")
        page.close()


def test_graph_too_large_shows_the_error(browser: Any, tmp_path: Path) -> None:
    from _graph_files import many_nodes_onnx

    from weightvault.graph import MAX_NODES

    path = tmp_path / "huge.onnx"
    path.write_bytes(many_nodes_onnx(MAX_NODES))
    with ViewerServer([path]).start() as srv:
        page = browser.new_page()
        page.goto(srv.url)
        page.wait_for_selector("#file-select option", state="attached")
        page.click('#tabs button[data-view="graph"]')
        page.wait_for_selector("#error-panel:not([hidden])")
        assert "more than 50,000 nodes" in page.text_content("#error-message")
        assert page.text_content(".graph-none") == "No graph: see the error above."
        page.close()
