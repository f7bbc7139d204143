"""The API conventions of docs/api.md, one test per convention (issue 14, item 10).

Names that say what they do (``load`` returns a state, ``restore`` fills a model, ``open`` gives a
lazy reader; ``format`` is the input format, ``file_format`` the files written), real signatures,
a star-import that shadows nothing, ``get(name, framework="torch")`` with real torch, and
deprecated spellings that keep working with a ``DeprecationWarning``.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import os
import pydoc
import subprocess
import sys
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.checkpoint import CheckpointManager

torch = pytest.importorskip("torch")

SRC = str(Path(weightvault.__file__).resolve().parents[1])


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (import order matters for these checks)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- star-import ------------------------------------------------------------------------------


def test_star_import_does_not_shadow_builtin_open() -> None:
    namespace: dict[str, object] = {}
    exec("import torch\nfrom weightvault import *", namespace)
    assert "open" not in namespace
    assert "open" not in weightvault.__all__
    assert namespace["torch"] is torch  # the user's torch, not the module weightvault.torch
    exec("x = open", namespace)  # the builtin is what a star-importing module sees
    assert namespace["x"] is builtins.open
    # ... and every name __all__ promises is there.
    assert all(name in namespace for name in weightvault.__all__)


def test_weightvault_open_still_works_and_keeps_format(tmp_path: Path) -> None:
    path = weightvault.save({"w": np.arange(4, dtype=np.float32)}, tmp_path / "m.safetensors")
    # format= is the INPUT format here and is not deprecated: pytest errors on any warning.
    with weightvault.open(path, format="safetensors") as reader:
        np.testing.assert_array_equal(reader.get("w"), np.arange(4, dtype=np.float32))
    assert "format" in inspect.signature(weightvault.open).parameters


# -- weightvault.restore is the function --------------------------------------------------------


def test_restore_shows_its_real_signature() -> None:
    assert inspect.isfunction(weightvault.restore)
    params = list(inspect.signature(weightvault.restore).parameters)
    assert params[:3] == ["model", "path", "strict"]
    assert "use_ema" in params and "allow_shape_mismatch" in params
    text = pydoc.render_doc(weightvault.restore, renderer=pydoc.plaintext)
    assert "function restore" in text and "restore(model: " in text
    assert "allow_shape_mismatch: " in text
    assert "PACKAGE CONTENTS" not in text and "FILE\n" not in text  # not a module's help


@pytest.mark.parametrize(
    "first_import",
    [
        "import weightvault.checkpoint.restore",  # what the CLI's restore-report does
        "from weightvault.checkpoint.restore import compare",
        "import weightvault.cli.restore",
        "import weightvault",
    ],
)
def test_restore_is_the_function_whatever_was_imported_first(first_import: str) -> None:
    out = _python(
        f"{first_import}\n"
        "import inspect, weightvault\n"
        "from weightvault import restore\n"
        "from weightvault.checkpoint.restore import restore as defined\n"
        "print(inspect.isfunction(weightvault.restore), restore is weightvault.restore,"
        " defined is restore, weightvault.restore.select.__name__)"
    )
    assert out == "True True True select"


def test_restore_helpers_keep_their_old_spellings() -> None:
    from weightvault.checkpoint.restore import compare, match_names, select, strip_wrappers

    # code written when weightvault.restore was a module reads these as attributes
    assert weightvault.restore.select is select
    assert weightvault.restore.compare is compare
    assert weightvault.restore.match_names is match_names
    assert weightvault.restore.strip_wrappers("module.fc.weight") == "fc.weight"


def test_restore_has_no_module_of_its_name() -> None:
    # The module moved to weightvault.checkpoint.restore, so nothing can rebind the package's
    # `restore` to a module (no module-class swap is needed to keep the function).
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("weightvault.restore")
    assert type(weightvault) is types.ModuleType
    assert inspect.isfunction(weightvault.restore)


# -- load vs restore ----------------------------------------------------------------------------


def test_manager_load_returns_the_state_and_restore_is_a_deprecated_alias(
    tmp_path: Path,
) -> None:
    with CheckpointManager(tmp_path / "run", fsync=False) as mgr:
        mgr.save(3, {"w": np.full(2, 3.0, np.float32), "step": 3})
        state = mgr.load("latest")
        assert state["step"] == 3
        with pytest.warns(DeprecationWarning, match=r"CheckpointManager\.load"):
            old = mgr.restore("latest", framework="torch")
    assert old["step"] == 3 and isinstance(old["w"], torch.Tensor)
    np.testing.assert_array_equal(old["w"].numpy(), state["w"])
    load_params = inspect.signature(CheckpointManager.load).parameters
    assert list(load_params)[:4] == ["self", "step", "framework", "device"]


# -- format vs file_format ----------------------------------------------------------------------


def _export_tree(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(out.iterdir())
        if p.is_file() and not p.name.endswith(".json")  # the sidecar carries a timestamp
    }


def test_export_hw_file_format_and_deprecated_format(tmp_path: Path) -> None:
    tensors = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}
    new = weightvault.export_hw(tensors, tmp_path / "new", file_format="mif", number="Q1.7")
    with pytest.warns(DeprecationWarning, match="file_format"):
        old = weightvault.export_hw(tensors, tmp_path / "old", format="mif", number="Q1.7")
    assert new.format == old.format == "mif"
    assert _export_tree(tmp_path / "new") == _export_tree(tmp_path / "old")
    assert any(name.endswith(".mif") for name in _export_tree(tmp_path / "new"))
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="file_format only"):
        weightvault.export_hw(tensors, tmp_path / "both", file_format="mem", format="mif")
    assert "file_format" in inspect.signature(weightvault.export_hw).parameters


# -- reader.get(name, framework=...) -------------------------------------------------------


def test_get_framework_torch_with_real_torch(tmp_path: Path) -> None:
    state = {
        "fc.weight": torch.randn(4, 3),
        "fc.bias": torch.randn(4, dtype=torch.bfloat16),
        "steps": torch.arange(5, dtype=torch.int64),
    }
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with weightvault.open(path) as reader:
        assert reader.format == "pytorch"
        numpy_default = reader.get("fc.weight")
        as_torch = {name: reader.get(name, framework="torch") for name in state}
    assert isinstance(numpy_default, np.ndarray)
    for name, tensor in state.items():  # exact dtype (bfloat16 too) and values, after close
        assert isinstance(as_torch[name], torch.Tensor)
        assert as_torch[name].dtype == tensor.dtype
        assert torch.equal(as_torch[name], tensor)


def test_get_framework_on_every_reader_kind(tmp_path: Path) -> None:
    bf16 = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    strings = np.array([b"ab", b"c"], dtype=object)
    path = weightvault.save({"w": bf16, "names": strings}, tmp_path / "ckpt")
    with weightvault.open(path) as reader:
        assert list(inspect.signature(reader.get).parameters) == ["name", "framework"]
        tensor = reader.get("w", framework="torch")
        same = reader.get("w", framework="numpy")
        # torch has no strings: they stay numpy object arrays, as in weightvault.load
        names = reader.get("names", framework="torch")
        with pytest.raises(ValueError, match="framework must be one of numpy, torch"):
            reader.get("w", framework="jax")
        with pytest.raises(weightvault.errors.TensorNotFoundError):
            reader.get("missing", framework="torch")
    assert tensor.dtype == torch.bfloat16
    np.testing.assert_array_equal(tensor.float().numpy(), same.astype(np.float32))
    assert isinstance(names, np.ndarray) and list(names) == [b"ab", b"c"]


def test_get_imports_the_torch_adapter_only_when_asked(tmp_path: Path) -> None:
    path = weightvault.save({"w": np.ones(3, np.float32)}, tmp_path / "m.safetensors")
    out = _python(
        "import sys, weightvault\n"
        f"r = weightvault.open({str(path)!r})\n"
        "r.get('w')\n"
        "before = 'weightvault.frameworks.torch' in sys.modules or 'torch' in sys.modules\n"
        "t = r.get('w', framework='torch')\n"
        "print(before, type(t).__module__, 'weightvault.frameworks.torch' in sys.modules)"
    )
    assert out == "False torch True"
