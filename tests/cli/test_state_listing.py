"""Non-tensor state in `ls`/`show`, name suggestions, and what start-up imports (issue 14, 5 and 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Never imported by `import weightvault` or `weightvault --help`: frameworks, and the libraries a
# command needs only once it reads, hashes or prints (see bench/startup.py for the times).
HEAVY = (
    "torch",
    "tensorflow",
    "keras",
    "jax",
    "onnx",
    "onnxruntime",
    "h5py",
    "gguf",
    "safetensors",
    "ml_dtypes",
    "xxhash",
    "isal",
    "google_crc32c",
    "rich.console",
    "rich.table",
    "importlib.metadata",
    "webbrowser",
)


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import weightvault",
        "from weightvault.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "help"],
)
def test_startup_imports_nothing_heavy(code: str) -> None:
    loaded = _modules_after(code)
    assert "weightvault" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_import_weightvault_imports_no_numpy() -> None:
    assert "numpy" not in _modules_after("import weightvault")


def test_lazy_names_still_resolve() -> None:
    code = (
        "import weightvault\n"
        "from weightvault import *\n"
        "assert callable(save) and callable(load) and callable(convert) and callable(verify)\n"
        "assert weightvault.CheckpointReader.__name__ == 'FormatReader'\n"
        "import ml_dtypes, numpy as np\n"
        "from weightvault.core.dtypes import DTYPES, dtype_name\n"
        "assert dtype_name(np.zeros(1, ml_dtypes.bfloat16).dtype) == 'bfloat16'\n"
    )
    _modules_after(code)


def test_dtypes_table_loads_ml_dtypes_on_demand() -> None:
    code = (
        "from weightvault.core.dtypes import DTYPES, dtype_name\n"
        "import sys\n"
        "assert 'bfloat16' in DTYPES and len(DTYPES) == len(list(DTYPES))\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "assert DTYPES['float8_e5m2'].itemsize == 1\n"
        "assert dtype_name(DTYPES['bfloat16']) == 'bfloat16'\n"
    )
    loaded = _modules_after(code)
    assert "ml_dtypes" in loaded
