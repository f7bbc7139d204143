from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()

# Property tests draw the same examples on every run in CI (a red CI must be reproducible, and a
# green one must not depend on luck); set WEIGHTVAULT_HYPOTHESIS=explore locally to search anew.
try:
    from hypothesis import settings

    settings.register_profile("pinned", derandomize=True, deadline=None, print_blob=True)
    settings.register_profile("explore", deadline=None, print_blob=True)
    settings.load_profile(os.environ.get("WEIGHTVAULT_HYPOTHESIS", "pinned"))
except ImportError:  # hypothesis is a test requirement; a partial install still runs the rest
    pass

# TensorFlow logs a banner on import; tests don't need it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture
def cli_run():
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from weightvault.cli import cli

    def run(*args: str) -> tuple[int, str, str]:
        runner = CliRunner()
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run
