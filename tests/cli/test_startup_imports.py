"""`weightvault ls` of a small file reads headers only, so it must not pay numpy's start-up
(issue #14 item 9; the timings live in bench/startup.py, this guards the import graph)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def _ls_imports(path: Path, *extra: str) -> tuple[set[str], str]:
    code = (
        "import sys, io, contextlib\nfrom weightvault.cli import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    try:\n        main(['ls', {str(path)!r}, *{list(extra)!r}])\n"
        "    except SystemExit:\n        pass\n"
        "print(out.getvalue())\nprint(sorted(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    lines = out.strip().splitlines()
    return set(eval(lines[-1])), "\n".join(lines[:-1])  # noqa: S307 - our own print


@pytest.mark.parametrize("kind", ["safetensors", "native-file", "native-dir"])
def test_ls_reads_headers_without_numpy(tmp_path: Path, kind: str) -> None:
    import weightvault

    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.array(7, np.int64)}
    if kind == "safetensors":
        from safetensors.numpy import save_file

        path = tmp_path / "m.safetensors"
        save_file(state, str(path))
    else:
        path = weightvault.save(state, tmp_path / ("m.safetensors" if kind == "native-file" else "run"))
    mods, out = _ls_imports(Path(path), "--json")
    assert "numpy" not in mods, sorted(m for m in mods if m.startswith("numpy"))[:3]
    listed = {t["name"]: (t["dtype"], t["shape"]) for t in json.loads(out)["tensors"]}
    assert listed == {"w": ("float32", [2, 3]), "step": ("int64", [])}
