"""The short, seeded fuzz pass ``make test`` runs: a few hundred mutants per format.

Mutants of files the real libraries write (see ``wvfuzz/seeds.py``) go through every reader stage
in a child with an address-space limit and a timeout. Any outcome but "ok" or a weightvault error
of the reader's own fails the test, and the minimised mutant is saved under
``test-artifacts/fuzz/regressions`` (copy it to ``tests/fuzz/regressions`` to keep it as a
regression case). ``make fuzz`` runs the long pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wvfuzz.runner import fuzz
from wvfuzz.seeds import FORMATS, make_seeds

REPO = Path(__file__).resolve().parents[2]
MUTANTS = int(os.environ.get("WVFUZZ_SHORT_MUTANTS", "150"))


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-seeds")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_short_fuzz_pass(fmt: str, seeds_dir: Path, tmp_path: Path) -> None:
    seeds = make_seeds(seeds_dir, [fmt])
    out = REPO / "test-artifacts" / "fuzz" / "regressions"
    summary = fuzz(seeds, per_format=MUTANTS, seed=2026, workdir=tmp_path, timeout=20.0, reproducers=out)
    counts = summary.counts[fmt]
    assert sum(counts.values()) == MUTANTS
    # Most mutants must reach past the framing, or the pass tests nothing but the first check.
    assert counts["ok"] + counts["clean"] == MUTANTS, "\n".join(
        f"{r.outcome}: {m.describe()} -> {r.stage}: {r.error} at {r.where}: {r.message}"
        for m, r in summary.failures
    ) + f"\nreproducers saved under {out}"
