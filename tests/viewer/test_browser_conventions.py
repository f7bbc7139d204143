"""Issue 14 item 8, in a real headless Chromium: the viewer does what users expect of it.

Files are written by the real frameworks: two torch training checkpoints (model, Adam state, a
step counter and the RNG state) for Compare, a CheckpointManager run with ``best=`` and
``max_to_keep`` for Runs, and a safetensors file with a [50000, 8] embedding for the heat-map.
Screenshots go to ``test-artifacts/viewer-conv-*.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _chromium import ARTIFACTS
from test_browser import screenshot

import weightvault
from weightvault.viewer import ViewerServer

torch = pytest.importorskip("torch")

TALL = "embedding.weight"
LONG_SHAPE = "conv3d.deep.kernel"
OUTLIER = 100.0


def _training_checkpoints(root: Path) -> tuple[Path, Path]:
    """Two torch.save checkpoints of one training run, 1 and 6 Adam steps in: many changed rows."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(12)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = model(torch.randn(4, 16)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    paths = []
    for name, steps, global_step in (("a.pt", 1, 100), ("b.pt", 5, 600)):
        train(steps)
        path = root / name
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": global_step, "rng": torch.get_rng_state()}
        torch.save(state, path)
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("viewer-conv")
    a, b = _training_checkpoints(root)
    rng = np.random.default_rng(3)
    tall = rng.normal(size=(50000, 8)).astype(np.float32)
    tall[31_234, 5] = OUTLIER  # one value a block mean averages away and block max-|x| shows
    tall_path = root / "tall.safetensors"
    weightvault.save(
        {TALL: tall, LONG_SHAPE: np.zeros((12, 4, 3, 3, 7, 5, 1000), np.float16), "a.b.c.d.e.f.g.h.bias": np.ones(3, np.float32)},
        tall_path,
        fsync=False,
    )
    from weightvault.checkpoint.manager import CheckpointManager

    run = root / "run"
    with CheckpointManager(run, max_to_keep=2, best=("loss", "min", 1), fsync=False) as mgr:
        for step, loss in ((100, 1.0), (200, 0.2), (300, 0.5), (400, 0.6)):
            mgr.save(step, {"w": np.full(4, step, np.float32)}, metrics={"loss": loss})
    return {"a": a, "b": b, "tall": tall_path, "run": run}


def _open(browser: Any, url: str, ready: str, width: int = 1400, height: int = 900) -> tuple[Any, Any, list[str]]:  # noqa: F811
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector(ready)
    return context, page, errors


@pytest.fixture(scope="module")
def compare_server(files: dict[str, Path]) -> Iterator[ViewerServer]:
    with ViewerServer([files["a"], files["b"]]).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def misc_server(files: dict[str, Path]) -> Iterator[ViewerServer]:
    with ViewerServer([files["tall"], files["run"], files["a"]]).start() as srv:
        yield srv


@pytest.fixture
def compare_page(browser: Any, compare_server: ViewerServer) -> Iterator[Any]:  # noqa: F811
    context, page, errors = _open(browser, compare_server.url, "#compare-summary")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
def misc_page(browser: Any, misc_server: ViewerServer) -> Iterator[Any]:  # noqa: F811
    context, page, errors = _open(browser, misc_server.url, ".tensor-row", width=1100)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def _rows(page: Any, table: str) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        f"{table} tr[data-name]",
        "rs => rs.map(r => ({name: r.dataset.name, role: r.dataset.role,"
        " maxAbs: Number(r.children[2].textContent), bar: r.querySelector('.hbar').getBoundingClientRect().width}))",
    )


# -- Compare --------------------------------------------------------------------------------------


def test_two_paths_open_on_compare_with_the_result(compare_page: Any) -> None:
    assert compare_page.is_visible("#view-compare") and compare_page.is_hidden("#view-tensors")
    assert compare_page.get_attribute('#tabs button[data-view="compare"]', "aria-selected") == "true"
    assert compare_page.input_value("#compare-a") == "0" and compare_page.input_value("#compare-b") == "1"
    assert "changed" in compare_page.inner_text("#compare-summary")  # ran without a click


def test_compare_groups_model_optimizer_other(compare_page: Any) -> None:
    model = _rows(compare_page, "#changed-table")
    optimizer = _rows(compare_page, "#changed-table-optimizer")
    other = _rows(compare_page, "#changed-table-other")
    assert len(model) == 24 and {r["role"] for r in model} == {"model"}
    assert all(r["name"].startswith("model/") for r in model)
    assert len(optimizer) == 48 and all(r["name"].endswith(("exp_avg", "exp_avg_sq")) for r in optimizer)
    assert {r["name"] for r in other} == {"rng", *(f"optimizer/state/{i}/step" for i in range(24))}
    headings = compare_page.eval_on_selector_all(".diff-section h3", "hs => hs.map(h => h.textContent)")
    assert [h.rsplit(" ", 1)[0] for h in headings[:3]] == [
        "Changed values: Model",
        "Changed values: Optimizer state",
        "Changed values: Other state (counters, RNG, learning rates)",
    ]


def test_compare_bars_are_scaled_within_their_group(compare_page: Any) -> None:
    model = _rows(compare_page, "#changed-table")
    other = _rows(compare_page, "#changed-table-other")
    # the RNG bytes and step counters move by far more than any weight...
    assert max(r["maxAbs"] for r in other) > 100 * max(r["maxAbs"] for r in model)
    # ...yet the weights' bars are not flattened: the largest fills the cell, the others in proportion
    widths = sorted(r["bar"] for r in model)
    assert widths[-1] == pytest.approx(120, abs=1)
    assert widths[len(widths) // 2] > 20
    for r in model:
        expected = max(2, 120 * r["maxAbs"] / max(m["maxAbs"] for m in model))
        assert r["bar"] == pytest.approx(expected, rel=0.05, abs=1.5)


def test_compare_sorts_and_filters(compare_page: Any) -> None:
    model = _rows(compare_page, "#changed-table")
    values = [r["maxAbs"] for r in model]
    assert values == sorted(values, reverse=True)  # default: largest max |Δ| first
    compare_page.select_option("#compare-sort", "name")
    names = [r["name"] for r in _rows(compare_page, "#changed-table")]
    assert names == sorted(names) and names != [r["name"] for r in model]
    compare_page.fill("#compare-filter", "model/1")
    compare_page.wait_for_function("() => document.querySelectorAll('#changed-table tr[data-name]').length === 6")
    names = [r["name"] for r in _rows(compare_page, "#changed-table")]
    assert names == ["model/1.bias", "model/1.weight", "model/10.bias", "model/10.weight", "model/11.bias", "model/11.weight"]
    assert compare_page.locator("#changed-table-optimizer").count() == 0  # no optimizer name matches
    assert "showing 6 of" in compare_page.inner_text("#compare-lists")
    compare_page.fill("#compare-filter", "/exp_avg_sq$/")
    compare_page.wait_for_function("() => document.querySelectorAll('#changed-table-optimizer tr[data-name]').length === 24")
    assert compare_page.locator("#changed-table").count() == 0


def _in_viewport(page: Any, selector: str) -> bool:
    return page.eval_on_selector(
        selector,
        "e => { const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }",
    )


def test_b_minus_a_panel_is_on_screen(compare_page: Any) -> None:
    compare_page.wait_for_selector("#diff-histogram svg rect.bar")
    first = compare_page.inner_text("#diff-histogram h4")
    assert first.startswith("Differences B − A of model/")  # opens on a model tensor
    assert _in_viewport(compare_page, "#diff-histogram svg")
    # a row far down the lists: the panel is still on screen when its histogram arrives
    row = compare_page.locator('#changed-table-other tr[data-name="rng"]')
    row.scroll_into_view_if_needed()
    row.click()
    compare_page.wait_for_function("() => document.querySelector('#diff-histogram h4').textContent.endsWith(' of rng')")
    assert compare_page.evaluate("() => document.querySelector('#view-compare').scrollTop") > 300  # really scrolled
    assert _in_viewport(compare_page, "#diff-histogram svg")
    ARTIFACTS.mkdir(exist_ok=True)
    compare_page.screenshot(path=str(ARTIFACTS / "viewer-conv-compare-scrolled.png"))  # as the user sees it


# -- tree, runs, heat-map -------------------------------------------------------------------------


def test_tree_has_column_headers_and_shapes_are_never_cut(misc_page: Any) -> None:
    heads = misc_page.locator(".tree-head span").all_inner_texts()
    assert [h.lower() for h in heads] == ["name", "dtype", "shape", "params", "bytes"]
    cut = misc_page.eval_on_selector_all(
        ".tree-head span:not(.label), .tensor-row .shape, .tensor-row .dtype, .tensor-row .params, .tensor-row .bytes",
        "xs => xs.filter(x => x.scrollWidth > x.clientWidth + 0.5).map(x => x.textContent)",
    )
    assert cut == []
    # and every column is inside the visible tree, not scrolled off to the right
    hidden = misc_page.eval_on_selector_all(
        ".tree-head span, .tensor-row .shape, .tensor-row .bytes",
        "xs => { const box = document.querySelector('#tree').getBoundingClientRect();"
        " return xs.filter(x => x.getBoundingClientRect().right > box.right + 0.5).map(x => x.textContent); }",
    )
    assert hidden == []
    shape = misc_page.locator(f'.tensor-row[data-name="{LONG_SHAPE}"] .shape').inner_text()
    assert shape == "[12 × 4 × 3 × 3 × 7 × 5 × 1000]"
    # the columns line up with their header at every depth
    lefts = misc_page.eval_on_selector_all(
        ".tree-head .shape, .tensor-row .shape", "xs => xs.map(x => Math.round(x.getBoundingClientRect().left))"
    )
    assert len(set(lefts)) == 1, lefts
    # depth is shown by indenting the name (not the row): a tensor sits right of its group's name
    padding = "x => parseFloat(getComputedStyle(x).paddingLeft)"
    group = misc_page.eval_on_selector("#tree summary .label", padding)  # "embedding"
    assert misc_page.eval_on_selector(f'.tensor-row[data-name="{TALL}"] .label', padding) > group + 10
    screenshot(misc_page, "conv-tree")


def test_a_run_is_selectable_as_a_whole(misc_page: Any, misc_server: ViewerServer) -> None:
    run_index = next(e.index for e in misc_server.data.entries if e.kind == "run")
    option = misc_page.locator(f'#file-select option[value="{run_index}"]')
    assert "whole run" in option.inner_text()
    misc_page.select_option("#file-select", str(run_index))
    misc_page.wait_for_selector('.tensor-row[data-name="w"]')
    assert misc_page.is_visible("#run-note") and "latest checkpoint (step 400)" in misc_page.inner_text("#run-note")
    misc_page.click('.tensor-row[data-name="w"]')
    misc_page.wait_for_selector("#stats")
    stats = dict(zip(misc_page.locator("#stats dt").all_inner_texts(), misc_page.locator("#stats dd").all_inner_texts()))
    assert stats["min"] == "400" and stats["max"] == "400"  # the latest step's tensor
    # the run is also a choice of Compare (its latest checkpoint)
    assert misc_page.locator(f'#compare-a option[value="{run_index}"]').count() == 1


def test_runs_mark_best_latest_and_why_kept(misc_page: Any) -> None:
    misc_page.click('#tabs button[data-view="runs"]')
    misc_page.wait_for_selector(".runs-table tr[data-step]")
    steps = misc_page.eval_on_selector_all(".runs-table tr[data-step]", "rs => rs.map(r => r.dataset.step)")
    assert steps == ["200", "300", "400"]  # max_to_keep=2 plus the best; 100 was deleted

    def row(step: int) -> Any:
        return misc_page.locator(f'.runs-table tr[data-step="{step}"]')

    assert row(200).locator(".mark.best").count() == 1 and row(200).locator(".mark.latest").count() == 0
    assert row(400).locator(".mark.latest").count() == 1 and row(400).locator(".mark.best").count() == 0
    assert row(300).locator(".mark").count() == 0
    assert "best #1 by loss (min)" in row(200).locator("td.kept").inner_text()
    assert "latest 2" in row(300).locator("td.kept").inner_text()
    assert "best: step 200 by loss (min" in misc_page.inner_text("#runs-panel")
    screenshot(misc_page, "conv-runs")


def test_very_tall_tensor_gets_a_readable_heatmap(misc_page: Any) -> None:
    misc_page.click(f'.tensor-row[data-name="{TALL}"]')
    misc_page.wait_for_selector("#heatmap canvas")
    canvas = misc_page.eval_on_selector(
        "#heatmap canvas", "c => ({w: c.width, h: c.height, cssW: c.getBoundingClientRect().width, cssH: c.getBoundingClientRect().height})"
    )
    assert (canvas["w"], canvas["h"]) == (8, 96)  # every column kept, rows in 96 blocks
    assert canvas["cssW"] >= 100 and canvas["cssH"] >= 400  # a picture, not a stripe
    label = misc_page.inner_text("#heatmap-label")
    assert "rows downsampled" in label and "50,000 × 8 → 96 × 8" in label and "mean of each block" in label
    assert "up to 521 × 1 elements" in label
    legend_high = float(misc_page.locator("#heatmap .legend span").last.inner_text())
    assert legend_high < 1  # block means average the outlier away
    misc_page.select_option("#heatmap-mode", "max_abs")
    misc_page.wait_for_function("() => document.querySelector('#heatmap-label').textContent.includes('largest |x|')")
    assert float(misc_page.locator("#heatmap .legend span").last.inner_text()) == OUTLIER
    screenshot(misc_page, "conv-tall-heatmap", height=1300)
