"""Every failure the fuzzer ever found, replayed: each must now end "ok" or in a clean error."""

from __future__ import annotations

from pathlib import Path

import pytest
from wvfuzz.runner import check_case

CASES = sorted(p.parent for p in (Path(__file__).parent / "regressions").glob("*/*/case.json"))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_reproducer_reads_cleanly(case: Path) -> None:
    result = check_case(case)
    assert result.outcome in ("ok", "clean"), f"{result.outcome} at {result.stage}: {result.error} {result.where}: {result.message}"
