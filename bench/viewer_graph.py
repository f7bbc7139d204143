"""How long the viewer's Graph tab takes to lay out and draw a ~2,000-node ONNX graph.

A stack of residual MLP blocks (Gemm, LayerNorm, Gelu, Gemm, Mul, Add, Constant: 7 ONNX nodes
each) is exported by ``torch.onnx.export``; each run opens a fresh page in headless Chromium
(Debian's ``chromium``, as the tests), opens the Graph tab and reads the page's own timings
(``window.__graphTimings``: elkjs layout, then SVG drawing until the next frame is painted):

* collapsed: the default for graphs over 300 nodes, one box per top-level name scope;
* expanded: after "expand all", every node laid out (the issue's 3 s target applies here);
* expanded again: collapse all, expand all once more in the same page (elkjs already compiled).

    PYTHONPATH=src python bench/viewer_graph.py [--blocks 286] [--runs 5]

Results go to bench/RESULTS-viewer.md by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path


def export(path: Path, blocks: int) -> None:
    import torch

    class Block(torch.nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.a, self.n, self.b = torch.nn.Linear(d, d), torch.nn.LayerNorm(d), torch.nn.Linear(d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.b(torch.nn.functional.gelu(self.n(self.a(x)))) * 0.5

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(8) for _ in range(blocks)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # distinct values: the exporter would merge identical initializers
        for p in net.parameters():
            p.normal_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 8),), os.fspath(path), dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=286)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, help="an existing .onnx instead of exporting one")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from weightvault.viewer import ViewerServer

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "mlp.onnx"
        if args.model is None:
            export(model, args.blocks)
        collapsed: list[dict] = []
        expanded: list[dict] = []
        again: list[dict] = []
        with ViewerServer([model]).start() as srv, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            for _ in range(args.runs):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(300_000)
                page.goto(srv.url)
                page.wait_for_selector(".tensor-row", state="attached")
                start = time.perf_counter()
                page.click('#tabs button[data-view="graph"]')
                page.wait_for_function("() => window.__graphTimings.length > 0")
                first = page.evaluate("() => window.__graphTimings[0]")
                first["wall_ms"] = round((time.perf_counter() - start) * 1000)
                collapsed.append(first)
                page.click("#graph-expand")
                page.wait_for_function("() => window.__graphTimings.length > 1")
                expanded.append(page.evaluate("() => window.__graphTimings[1]"))
                # the same again in the same page: elkjs' code is now compiled by V8
                page.click("#graph-collapse")
                page.wait_for_function("() => window.__graphTimings.length > 2")
                page.click("#graph-expand")
                page.wait_for_function("() => window.__graphTimings.length > 3")
                again.append(page.evaluate("() => window.__graphTimings[3]"))
                page.close()
            browser.close()
    for label, rows in (("collapsed (default)", collapsed), ("fully expanded", expanded),
                        ("fully expanded, second time in the page", again)):
        totals = [r["total_ms"] for r in rows]
        print(f"{label}: {rows[0]['nodes']} nodes, {rows[0]['boxes']} boxes; layout+draw ms: "
              f"best {min(totals)}, median {statistics.median(totals)}; runs {rows}")


if __name__ == "__main__":
    main()
