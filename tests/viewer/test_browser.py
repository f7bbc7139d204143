"""The viewer page in a real headless Chromium (Debian's ``chromium``) driven by Playwright.

No browser is downloaded: Playwright drives /usr/bin/chromium. If it is missing the tests FAIL
with the install line (CI installs it); they never skip silently. Screenshots are written to
``test-artifacts/viewer-*.png`` in the repository root (gitignored) for a person to look at.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _chromium import ARTIFACTS, viewer_page
from _viewer_files import ADDED, CHANGED, REMOVED, ViewerFiles

from weightvault.viewer import ViewerServer

BROKEN_INDEX, RUN_INDEX = 2, 4


@pytest.fixture
def page(browser: Any, server: ViewerServer) -> Iterator[Any]:
    with viewer_page(browser, server.url, 15_000) as page:
        yield page


@pytest.fixture(scope="module")
def server(viewer_files: ViewerFiles) -> Iterator[ViewerServer]:
    f = viewer_files
    with ViewerServer([f.a, f.b, f.broken, f.converted, f.run]).start() as srv:
        yield srv


def screenshot(page: Any, name: str, height: int = 900) -> Path:
    """Save the page; the page is one screen high with scrolling panels, so grow the screen."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": height})
    page.evaluate("() => document.querySelectorAll('#tensor-panel, #tree').forEach(e => e.scrollTo(0, 0))")
    path = ARTIFACTS / f"viewer-{name}.png"
    page.screenshot(path=os.fspath(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real rendering, not a blank page
    return path


def test_tree_shows_the_tensor_names_and_totals(page: Any, viewer_files: ViewerFiles) -> None:
    names = page.eval_on_selector_all(".tensor-row", "rows => rows.map(r => r.dataset.name)")
    assert sorted(names) == sorted(viewer_files.tensors_a)
    groups = page.eval_on_selector_all("#tree summary .label", "xs => xs.map(x => x.textContent)")
    assert groups == ["encoder", "layer0", "attn/qkv", "head"]  # grouped by "." and "/" alike
    total = sum(a.size for a in viewer_files.tensors_a.values())
    assert f"{total:,} model params" in page.inner_text("#totals")
    row = page.locator(f'.tensor-row[data-name="{CHANGED}"]')
    assert row.locator(".dtype").inner_text() == "float32"
    assert row.locator(".shape").inner_text() == "[48]"


def test_filter_box_narrows_the_tree(page: Any) -> None:
    page.fill("#filter", "attn")
    page.wait_for_function("() => document.querySelectorAll('.tensor-row').length === 1")
    assert page.eval_on_selector(".tensor-row", "r => r.dataset.name") == "encoder/attn/qkv.weight"
    assert "showing 1 of 5" in page.inner_text("#totals")
    page.fill("#filter", "/^enc.*weight$/")
    page.wait_for_function("() => document.querySelectorAll('.tensor-row').length === 2")


def test_click_shows_statistics_histogram_heatmap_values(page: Any, viewer_files: ViewerFiles) -> None:
    name = "encoder.layer0.weight"
    page.click(f'.tensor-row[data-name="{name}"]')
    page.wait_for_selector("#histogram svg rect.bar")
    bars = page.locator("#histogram svg rect.bar")
    assert bars.count() == 64
    heights = [float(h) for h in page.eval_on_selector_all("#histogram rect.bar", "rs => rs.map(r => r.getAttribute('height'))")]
    assert max(heights) > 50 and sum(1 for h in heights if h > 0) > 20
    stats = dict(zip(page.locator("#stats dt").all_inner_texts(), page.locator("#stats dd").all_inner_texts()))
    arr = viewer_files.tensors_a[name].astype(np.float64)
    assert float(stats["min"]) == pytest.approx(arr.min(), rel=1e-5)
    assert float(stats["max"]) == pytest.approx(arr.max(), rel=1e-5)
    assert float(stats["std"]) == pytest.approx(arr.std(), rel=1e-5)
    assert stats["numel"] == "60,000" and stats["NaN"] == "0"
    assert page.locator("#heatmap canvas").count() == 1
    assert "300 × 200 → 96 × 64" in page.inner_text("#tensor-panel")
    page.wait_for_function("() => document.querySelector('#values').textContent.includes('precision 4')")
    page.fill("#precision", "2")
    page.dispatch_event("#precision", "change")
    page.wait_for_function("() => document.querySelector('#values').textContent.includes('precision 2')")
    printed = re.findall(r"-?\d+\.(\d+)(?:e[-+]\d+)?", page.inner_text("#values").split("\n", 1)[1])
    assert len(printed) == 100 and all(len(digits) == 2 for digits in printed)  # two digits each
    first = float(re.search(r"-?\d+\.\d+(?:e[-+]\d+)?", page.inner_text("#values").split("\n", 1)[1]).group(0))
    assert first == pytest.approx(float(viewer_files.tensors_a[name].reshape(-1)[0]), rel=0.01)
    screenshot(page, "tensor", height=1500)


def test_compare_view_lists_the_changed_tensor(page: Any) -> None:
    page.click('#tabs button[data-view="compare"]')
    assert page.input_value("#compare-a") == "0" and page.input_value("#compare-b") == "1"
    page.click("#compare-form button[type=submit]")
    page.wait_for_selector("#changed-table")
    changed = page.eval_on_selector_all("#changed-table tr[data-name]", "rs => rs.map(r => r.dataset.name)")
    assert changed == [CHANGED]
    assert ADDED in page.inner_text("#compare-result")
    assert REMOVED in page.inner_text("#compare-result")
    assert "1 changed · 1 added · 1 removed" in page.inner_text("#compare-summary")
    page.wait_for_selector("#diff-histogram svg rect.bar")
    assert f"Differences B − A of {CHANGED}" in page.inner_text("#diff-histogram")
    screenshot(page, "compare")


def test_unreadable_file_shows_the_error_panel(page: Any, viewer_files: ViewerFiles) -> None:
    assert page.is_hidden("#error-panel")
    page.select_option("#file-select", str(BROKEN_INDEX))
    page.wait_for_selector("#error-panel", state="visible")
    message = page.inner_text("#error-message")
    assert viewer_files.broken.name in message and "header claims" in message
    assert "Traceback" not in page.content()
    assert page.locator(".tensor-row").count() == 0
    assert "could not be read" in page.inner_text("#tree")
    screenshot(page, "error")
    page.select_option("#file-select", "0")  # another file works again and clears the panel
    page.wait_for_selector(".tensor-row")
    assert page.is_hidden("#error-panel")


def test_metadata_panel_shows_training_and_transforms(page: Any) -> None:
    page.click('#tabs button[data-view="meta"]')
    page.wait_for_selector("#meta-panel table.kv")
    text = page.inner_text("#meta-panel")
    assert "epoch" in text and "loss" in text and "0.125" in text and "native" in text
    page.select_option("#file-select", "3")
    page.wait_for_selector("#transforms")
    assert "fc.kernel" in page.inner_text("#transforms") and "dense.kernel" in page.inner_text("#transforms")
    assert "plain.npz" in page.inner_text("#meta-panel")
    screenshot(page, "metadata")


def test_runs_chart_and_open_a_checkpoint(page: Any) -> None:
    page.click('#tabs button[data-view="runs"]')
    page.wait_for_selector("#runs-panel svg circle.point")
    assert page.locator("#runs-panel svg circle.point").count() == 3
    assert page.locator(".runs-table tr").count() == 4  # header + 3 steps
    screenshot(page, "runs")
    page.locator("#runs-panel svg circle.point").nth(0).click()
    page.wait_for_selector('.tensor-row[data-name="w"]')
    assert page.input_value("#file-select") == str(RUN_INDEX + 1)  # the step-100 checkpoint


def test_error_from_a_forged_request_is_shown_not_thrown(page: Any) -> None:
    """The page's API helper turns an error JSON into the panel (no unhandled rejection)."""
    result = page.evaluate(
        "async () => { try { await api('tree', {file: '/etc/passwd'}); return 'no error'; }"
        " catch (e) { showError(e); return e.message; } }"
    )
    assert "not one of the" in result
    assert "not one of the" in page.inner_text("#error-message")
