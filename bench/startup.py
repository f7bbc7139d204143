"""Start-up time of the CLI: `weightvault --help` and `weightvault ls small.safetensors`.

Each command runs N times in a fresh interpreter; best and median wall time are printed next to
`python -c pass` and `python -c "import numpy"` measured in the same run, so a loaded machine shows
up in the baselines too. Not a timed test: run it by hand and record the numbers in
bench/RESULTS-startup.md.

    PYTHONPATH=src python bench/startup.py [-n 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
_PATH = os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")]))
# An install compiles its .pyc files once; PYTHONDONTWRITEBYTECODE (set in some CI shells) would
# time the compiler on every run instead.
_ENV = {k: v for k, v in {**os.environ, "PYTHONPATH": _PATH}.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _small_safetensors(directory: str) -> str:
    import numpy as np

    from weightvault.formats.safetensors import SafetensorsFormat

    path = os.path.join(directory, "small.safetensors")
    SafetensorsFormat.write(path, {"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)})
    return path


def _time(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, env=_ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="runs per command")
    args = parser.parse_args()
    py = sys.executable
    cli = [py, "-m", "weightvault"]
    with tempfile.TemporaryDirectory() as tmp:
        small = _small_safetensors(tmp)
        cases = {
            "python -c pass": [py, "-c", "pass"],
            'python -c "import numpy"': [py, "-c", "import numpy"],
            "python -c \"import weightvault\"": [py, "-c", "import weightvault"],
            "weightvault --help": [*cli, "--help"],
            "weightvault ls small.safetensors": [*cli, "ls", small],
        }
        for argv in cases.values():  # warm the file cache and write .pyc files (as any install has)
            _time(argv, 1)
        print(f"{'command':<36} {'best s':>8} {'median s':>9}   ({args.runs} runs, {py})")
        for label, argv in cases.items():
            times = _time(argv, args.runs)
            print(f"{label:<36} {min(times):8.3f} {statistics.median(times):9.3f}")


if __name__ == "__main__":
    sys.path.insert(0, _SRC)
    main()
