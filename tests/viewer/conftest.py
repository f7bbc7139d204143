"""Fixtures of the viewer tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _chromium import launched_browser
from _viewer_files import ViewerFiles, make_viewer_files


@pytest.fixture(scope="session")
def viewer_files(tmp_path_factory: pytest.TempPathFactory) -> ViewerFiles:
    return make_viewer_files(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the browser tests of one module (see _chromium.py)."""
    with launched_browser() as browser:
        yield browser
