"""``python -m wvfuzz`` (what ``make fuzz`` runs): a long seeded pass with a summary table.

New failures are minimised and saved under ``tests/fuzz/regressions/<format>/`` (each becomes a
regression test) and the table is written to ``--summary``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wvfuzz.runner import BAD, Summary, fuzz
from wvfuzz.seeds import FORMATS, make_seeds

HERE = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wvfuzz", description=__doc__)
    parser.add_argument("--mutants", type=int, default=4500, help="mutants per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", action="append", choices=sorted(FORMATS), help="only these formats")
    parser.add_argument("--jobs", type=int, default=2, help="formats fuzzed at once (one worker each)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a mutant is a hang")
    parser.add_argument("--summary", type=Path, default=Path("test-artifacts/fuzz/summary.md"))
    parser.add_argument("--save", type=Path, default=HERE / "regressions", help="where reproducers go")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wvfuzz-") as tmp:
        seeds = make_seeds(Path(tmp) / "seeds", args.format)

        def one(fmt: str) -> Summary:
            return fuzz({fmt: seeds[fmt]}, per_format=args.mutants, seed=args.seed,
                        workdir=Path(tmp) / fmt, timeout=args.timeout, reproducers=args.save,
                        progress=True)

        summary = Summary()
        with ThreadPoolExecutor(args.jobs) as pool:  # the work is in each format's worker process
            for part in pool.map(one, seeds):
                summary.counts.update(part.counts)
                summary.failures += part.failures
    table = summary.table()
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(
        f"# Fuzz run: {args.mutants} mutants per format, seed {args.seed}, "
        f"{time.monotonic() - started:.0f} s\n\n{table}\n"
    )
    print(table)
    for mutant, result in summary.failures:
        print(f"{result.outcome}: {mutant.describe()} -> {result.stage}: {result.error} {result.where}: "
              f"{result.message[:160]}")
    bad = sum(1 for _ in summary.failures)
    print(f"\n{bad} failures; summary in {args.summary}" + (f", reproducers in {args.save}" if bad else ""))
    return 1 if any(r.outcome in BAD for _, r in summary.failures) else 0


if __name__ == "__main__":
    sys.exit(main())
