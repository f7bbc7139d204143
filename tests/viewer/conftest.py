"""Fixtures of the viewer tests."""

from __future__ import annotations

import pytest
from _viewer_files import ViewerFiles, make_viewer_files


@pytest.fixture(scope="session")
def viewer_files(tmp_path_factory: pytest.TempPathFactory) -> ViewerFiles:
    return make_viewer_files(tmp_path_factory.mktemp("viewer"))
