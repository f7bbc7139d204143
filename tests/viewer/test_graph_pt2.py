"""The viewer on ``torch.export.save`` archives (``.pt2``): ``/api/graph`` without a browser, the
Graph tab in real headless Chromium (a clicked node's weights with their statistics and histogram),
and the diff colouring between two archives of one model where only ``fc``'s weight changed.
Screenshots: ``test-artifacts/viewer-graph-pt2-*.png``."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _chromium import ARTIFACTS, viewer_page

import weightvault
from weightvault.viewer import ViewerServer

torch = pytest.importorskip("torch")
nn = torch.nn

A, B, TIED = range(3)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: Any) -> Any:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: Any) -> Any:
        return self.b(self.a(x))


@dataclass
class Pt2Files:
    a: Path
    b: Path  # a with fc.weight moved by 0.5 in one element
    tied: Path


def _save(model: nn.Module, args: tuple[Any, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(torch.export.export(model.eval(), args), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Pt2Files:
    root = tmp_path_factory.mktemp("pt2")
    x = torch.randn(1, 2, 6, 6)
    net = Net()
    a = _save(net, (x,), root / "net_a.pt2")
    with torch.no_grad():
        net.fc.weight[1, 2] += 0.5
    b = _save(net, (x,), root / "net_b.pt2")
    tied = _save(Tied(), (torch.randn(2, 4),), root / "tied.pt2")
    return Pt2Files(a, b, tied)


@pytest.fixture(scope="module")
def server(files: Pt2Files) -> Iterator[ViewerServer]:
    with ViewerServer([files.a, files.b, files.tied]).start() as srv:
        yield srv


def _get(srv: ViewerServer, route: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(srv.url + route) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _node(g: dict[str, Any], op: str) -> dict[str, Any]:
    return next(n for n in g["nodes"] if n["op"] == op)


# -- /api/graph without a browser --------------------------------------------------------------------
def test_graph_endpoint_on_a_real_pt2(server: ViewerServer, files: Pt2Files) -> None:
    status, g = _get(server, "api/graph?file=0")
    assert (
        status == 200
        and g["available"]
        and g["format"] == "torch_export"
        and g["source"] == "torch_export"
    )
    conv, bn, fc = _node(g, "aten.conv2d"), _node(g, "aten.batch_norm"), _node(g, "aten.linear")
    assert (conv["scope"], bn["scope"], fc["scope"]) == ("conv", "bn", "fc")
    assert conv["weights"] == ["conv.weight", "conv.bias"]
    assert fc["weights"] == ["fc.weight", "fc.bias"]
    # running stats are inputs of batch_norm; num_batches_tracked (unused in eval) joins its module
    assert bn["weights"] == [
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ]
    with weightvault.open(files.a) as reader:
        assert g["unattached"] == [] and set(g["weights"]) == set(reader.keys())
    names = [n["name"] for n in g["nodes"]]
    edges = {(names[e["source"]], names[e["target"]]) for e in g["edges"]}
    assert ("x", conv["name"]) in edges and (conv["name"], bn["name"]) in edges
    assert next(e for e in g["edges"] if e["tensor"] == "x")["shape"] == [1, 2, 6, 6]
    # a node's tensor is served by the usual tensor endpoint (what the panel shows)
    status, t = _get(server, "api/tensor?file=0&name=fc.weight")
    assert (
        status == 200 and t["info"]["shape"] == [4, 3] and t["info"]["extra"]["kind"] == "parameter"
    )
    assert t["histogram"] and t["stats"]["numel"] == 12


def test_tied_weights_sit_on_both_nodes(server: ViewerServer) -> None:
    status, g = _get(server, f"api/graph?file={TIED}")
    assert status == 200 and g["unattached"] == []
    linears = [n for n in g["nodes"] if n["op"] == "aten.linear"]
    assert [sorted(n["weights"]) for n in linears] == [
        ["a.bias", "a.weight", "b.weight"],
        ["a.weight", "b.bias", "b.weight"],
    ]


def test_diff_between_two_pt2_archives_names_only_fc(server: ViewerServer) -> None:
    status, d = _get(server, "api/diff?a=0&b=1")
    assert status == 200
    assert [row["name"] for row in d["value_changed"]] == ["fc.weight"]
    status, t = _get(server, "api/diff_tensor?a=0&b=1&name=fc.weight")
    assert status == 200 and abs(t["stats"]["max"] - 0.5) < 1e-6


def test_a_hostile_pt2_is_an_error_not_a_crash(tmp_path: Path, files: Pt2Files) -> None:
    import zipfile

    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(files.a) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                data = b"[" * 100_000
            zout.writestr(info.filename, data)
    with ViewerServer([bad]).start() as srv:
        status, body = _get(srv, "api/graph?file=0")
    assert status == 422 and "nested too deeply" in body["error"]["message"]


# -- the Graph tab in headless Chromium --------------------------------------------------------------
@pytest.fixture
def page(browser: Any, server: ViewerServer) -> Iterator[Any]:
    with viewer_page(browser, server.url, 60_000) as page:
        yield page


def _layouts(page: Any) -> int:
    return int(page.evaluate("() => window.__graphTimings.length"))


def _open_graph(page: Any, file: int) -> None:
    before = _layouts(page)
    page.select_option("#file-select", str(file))
    page.click('#tabs button[data-view="graph"]')
    page.wait_for_function(f"() => window.__graphTimings.length > {before}")


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"viewer-graph-pt2-{name}.png"
    page.screenshot(path=os.fspath(path))
    assert path.stat().st_size > 10_000


def _gnode(page: Any, op: str) -> Any:
    return page.locator(".gnode", has=page.locator(".gop", has_text=op)).first


def test_pt2_graph_and_a_nodes_weights_in_chromium(page: Any) -> None:
    _open_graph(page, A)
    ops = page.eval_on_selector_all(".gnode .gop", "gs => gs.map(g => g.textContent)")
    assert {"aten.conv2d", "aten.batch_norm", "aten.linear"} <= set(ops)
    _gnode(page, "aten.linear").click()
    panel = page.locator("#graph-panel")
    assert panel.locator(".gweights-list li").evaluate_all("ls => ls.map(l => l.dataset.name)") == [
        "fc.weight",
        "fc.bias",
    ]
    page.wait_for_selector("#graph-weight .graph-stats")
    assert panel.locator("#graph-weight h4").first.text_content() == "fc.weight"
    assert panel.locator("#graph-weight .chip").first.text_content() == "float32"
    assert panel.locator("#graph-weight svg.hist rect.bar").count() > 0
    _shot(page, "linear")


def test_pt2_diff_colouring_in_chromium(page: Any) -> None:
    _open_graph(page, A)
    page.select_option("#graph-diff-file", str(B))
    page.wait_for_selector(".gnode.changed")
    changed = page.eval_on_selector_all(".gnode.changed .gop", "gs => gs.map(g => g.textContent)")
    unchanged = set(
        page.eval_on_selector_all(".gnode.unchanged .gop", "gs => gs.map(g => g.textContent)")
    )
    assert changed == ["aten.linear"] and {"aten.conv2d", "aten.batch_norm"} <= unchanged
    _gnode(page, "aten.linear").click()
    page.wait_for_selector("#graph-weight .graph-diff-hist svg.hist")
    assert "max |Δ| 0.5" in page.text_content("#graph-panel .diff-line")
    _shot(page, "diff")
