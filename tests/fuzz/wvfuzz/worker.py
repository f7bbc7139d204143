"""Fuzz worker: reads mutant paths (JSON lines) on stdin, answers one JSON line each.

Runs as a script in a child process (see :mod:`wvfuzz.runner`), with its address space capped so
that a reader's oversized allocation fails with ``MemoryError`` instead of exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from typing import Any

import numpy as np

import weightvault
from weightvault.errors import UnexpectedReadError, WeightVaultError

STAGES = ("open", "keys", "info", "get", "metadata", "structure", "verify")


def _touch(value: Any) -> None:
    arr = np.asarray(value)
    if arr.dtype.hasobject:
        for item in arr.reshape(-1):
            bytes(item) if isinstance(item, (bytes, bytearray, memoryview)) else str(item)
    else:
        arr.tobytes()


def _walk(obj: Any, depth: int = 0) -> None:
    if depth > 1000:
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _walk(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, depth + 1)
    elif hasattr(obj, "shape") or hasattr(obj, "__array__"):
        _touch(obj)


def check(path: str) -> None:
    """Every stage a user can reach; raises whatever a reader raises."""
    global stage
    stage = "open"
    with weightvault.open(path) as reader:
        stage = "keys"
        names = list(reader.keys())
        stage = "info"
        for name in names:
            reader.info(name)
        stage = "get"
        for name in names:
            _touch(reader.get(name))
        stage = "metadata"
        json.dumps(reader.metadata, default=str)
        stage = "structure"
        _walk(reader.structure())
        stage = "verify"
        reader.verify()


stage = ""


def _classify(exc: BaseException) -> dict[str, Any]:
    cause = exc.__cause__
    if isinstance(exc, WeightVaultError) and isinstance(cause, MemoryError):
        outcome, shown = "memory", cause
    elif isinstance(exc, UnexpectedReadError):
        outcome, shown = "wrapped", cause or exc
    elif isinstance(exc, WeightVaultError):
        outcome, shown = "clean", exc
    elif isinstance(exc, MemoryError):
        outcome, shown = "memory", exc
    else:
        outcome, shown = "foreign", exc
    frames = traceback.extract_tb(shown.__traceback__) if shown is not None else []
    ours = [f for f in frames if "weightvault" in f.filename] or frames
    where = f"{ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno} {ours[-1].name}" if ours else ""
    return {"outcome": outcome, "stage": stage, "error": type(shown).__name__,
            "message": str(shown)[:300], "where": where}


def main() -> None:
    headroom = int(os.environ.get("WVFUZZ_HEADROOM", str(2 << 30)))
    # Import every reader now, so the limit is measured above what imports take.
    from weightvault.registry import available_formats

    available_formats()
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            check(request["path"])
            answer: dict[str, Any] = {"outcome": "ok", "stage": "done"}
        except Exception as exc:  # the classification is the point
            answer = _classify(exc)
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
