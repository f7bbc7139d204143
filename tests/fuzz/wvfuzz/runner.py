"""Run mutants through every reader stage in a child process with a memory and time limit.

The parent builds each mutant on disk (a copy of its seed with mutations applied), and hands its
path to a long-lived worker over a pipe. The worker caps its address space (``RLIMIT_AS``) once, then
runs the staged checks users run: open, keys, info, get every tensor and touch its bytes, metadata,
structure, verify. Each outcome is one of:

* ``ok``: every stage passed; ``clean``: a weightvault error with its own message;
* ``wrapped``: a weightvault error made by the reader guard (:mod:`weightvault.abc.guard`) from an
  exception the format did not anticipate -- caught, but a check is missing;
* ``foreign``: any other exception; ``memory``: a ``MemoryError`` (the reader tried to allocate far
  beyond what the file holds); ``hang``: over the time limit; ``crash``: the worker died.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wvfuzz.mutators import applicable, mutate
from wvfuzz.seeds import Seed

OUTCOMES = ("ok", "clean", "wrapped", "foreign", "memory", "hang", "crash")
BAD = ("wrapped", "foreign", "memory", "hang", "crash")
#: address space above the worker's own after imports: far more than any mutant (< 2 MB) can justify
MEMORY_HEADROOM = 2 << 30
WORKER = Path(__file__).with_name("worker.py")


@dataclass
class Mutant:
    seed: Seed
    #: (relative file inside a directory seed or "", mutator name, rng seed)
    ops: list[tuple[str, str, int]]

    def describe(self) -> str:
        return f"{self.seed.format}/{self.seed.name} " + " ".join(
            f"{rel or '.'}:{m}:{s}" for rel, m, s in self.ops
        )

    def to_json(self) -> dict[str, Any]:
        return {"format": self.seed.format, "seed": self.seed.name, "ops": self.ops}


@dataclass
class Result:
    outcome: str
    stage: str = ""
    error: str = ""
    message: str = ""
    where: str = ""


@dataclass
class Summary:
    counts: dict[str, Counter] = field(default_factory=dict)
    failures: list[tuple[Mutant, Result]] = field(default_factory=list)

    def add(self, mutant: Mutant, result: Result) -> None:
        self.counts.setdefault(mutant.seed.format, Counter())[result.outcome] += 1
        if result.outcome in BAD:
            self.failures.append((mutant, result))

    def table(self) -> str:
        head = "| format | mutants | " + " | ".join(OUTCOMES) + " |"
        lines = [head, "|" + "---|" * (len(OUTCOMES) + 2)]
        total: Counter = Counter()
        for fmt in sorted(self.counts):
            c = self.counts[fmt]
            total.update(c)
            lines.append(f"| {fmt} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
        lines.append(f"| **all** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
        return "\n".join(lines)


# -- building mutants on disk ------------------------------------------------------------------------
def _files_of(seed: Seed) -> list[str]:
    if not seed.is_dir:
        return [""]
    return sorted(str(p.relative_to(seed.path)) for p in seed.path.rglob("*") if p.is_file())


def random_mutant(seed: Seed, rng: random.Random) -> Mutant:
    files = _files_of(seed)
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        rel = rng.choice(files)
        target = seed.path / rel if rel else seed.path
        head = target.read_bytes()[:16]
        ops.append((rel, rng.choice(applicable(target.name, head)), rng.randrange(1 << 30)))
    return Mutant(seed, ops)


def materialise(mutant: Mutant, workdir: Path) -> Path:
    """Write the mutant under ``workdir`` (emptied first) and return the path to open."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    seed = mutant.seed
    dst = workdir / seed.path.name
    if seed.is_dir:
        shutil.copytree(seed.path, dst, symlinks=True)
    else:
        shutil.copy(seed.path, dst)
    for rel, mutator, rng_seed in mutant.ops:
        target = dst / rel if rel else dst
        target.write_bytes(mutate(target.name, target.read_bytes(), mutator, rng_seed))
    return dst


# -- the worker --------------------------------------------------------------------------------------
class Worker:
    """One child process that reads mutants until it hangs or dies."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, WVFUZZ_HEADROOM=str(MEMORY_HEADROOM), PYTHONUNBUFFERED="1")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        proc = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ready" once imports are done and the limit is set
        if line.strip() != b"ready":
            raise RuntimeError(f"fuzz worker did not start: {line!r}")
        return proc

    def run(self, path: Path) -> Result:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"path": str(path)}).encode() + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            self.kill()
            return Result("hang", message=f"no answer in {self.timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.kill()
            return Result("crash", message=f"worker exited with {code}")
        return Result(**json.loads(line))

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None


def run_one(worker: Worker, mutant: Mutant, workdir: Path) -> Result:
    return worker.run(materialise(mutant, workdir))


def minimise(worker: Worker, mutant: Mutant, result: Result, workdir: Path) -> Mutant:
    """Drop mutations one at a time while the same outcome and error type remain."""
    ops = list(mutant.ops)
    i = 0
    while len(ops) > 1 and i < len(ops):
        trial = Mutant(mutant.seed, ops[:i] + ops[i + 1:])
        again = run_one(worker, trial, workdir)
        if again.outcome == result.outcome and again.error == result.error:
            ops = trial.ops
        else:
            i += 1
    return Mutant(mutant.seed, ops)


def save_reproducer(mutant: Mutant, result: Result, workdir: Path, out_dir: Path) -> Path:
    """Store the minimised mutant's files and what it did, as a regression case."""
    path = materialise(mutant, workdir)
    digest = hashlib.sha1(json.dumps(mutant.to_json()).encode()).hexdigest()[:12]
    case = out_dir / mutant.seed.format / f"{result.outcome}-{digest}"
    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    if path.is_dir():
        shutil.copytree(path, case / path.name, symlinks=True)
    else:
        shutil.copy(path, case / path.name)
    (case / "case.json").write_text(json.dumps(
        {"open": path.name, "mutant": mutant.to_json(), "found": result.__dict__}, indent=1) + "\n")
    return case


def fuzz(
    seeds: dict[str, list[Seed]],
    *,
    per_format: int,
    seed: int,
    workdir: Path,
    timeout: float = 10.0,
    reproducers: Path | None = None,
    progress: bool = False,
) -> Summary:
    """Run ``per_format`` mutants for each format; minimise and save every bad one."""
    summary = Summary()
    worker = Worker(timeout)
    try:
        for fmt, fmt_seeds in seeds.items():
            rng = random.Random(f"{seed}:{fmt}")
            started = time.monotonic()
            for _ in range(per_format):
                mutant = random_mutant(rng.choice(fmt_seeds), rng)
                result = run_one(worker, mutant, workdir / "mutant")
                if result.outcome in BAD:
                    mutant = minimise(worker, mutant, result, workdir / "mutant")
                    if reproducers is not None:
                        save_reproducer(mutant, result, workdir / "mutant", reproducers)
                summary.add(mutant, result)
            if progress:
                c = summary.counts.get(fmt, Counter())
                print(f"{fmt}: {dict(c)} in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    finally:
        worker.kill()
    return summary


def check_case(case_dir: Path, timeout: float = 20.0) -> Result:
    """Replay a saved reproducer in a fresh worker."""
    spec = json.loads((case_dir / "case.json").read_text())
    worker = Worker(timeout)
    try:
        return worker.run(case_dir / spec["open"])
    finally:
        worker.kill()
