"""Registry rows as data (issue 15, item 4): what a format is lives in its row, and choosing or
detecting a format imports only the formats that the choice needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.registry import (
    ALIASES,
    DETECTION_ORDER,
    ROWS,
    format_for_destination,
    format_title,
    get_format,
    known_formats,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "formats"


def _format_modules(code: str, cwd: Path) -> list[str]:
    """The weightvault format modules ``code`` imported, in import order, helpers (``_x``) left out."""
    script = (
        "import sys, weightvault\n"
        f"{code}\n"
        "print([m.rsplit('.', 1)[1] for m in list(sys.modules)"
        " if m.startswith(('weightvault.formats.', 'weightvault.export.reader'))])"
    )
    # the weightvault under test, wherever the subprocess runs (PYTHONPATH may be relative)
    src = str(Path(weightvault.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]
    return [m for m in eval(out) if not m.startswith("_")]  # noqa: S307 - our own list of str


@pytest.mark.parametrize("r", ROWS, ids=lambda r: r.name)
def test_row_agrees_with_its_class(r) -> None:
    fmt = get_format(r.name)
    assert fmt.name == r.name
    assert tuple(fmt.extensions) == r.extensions
    assert bool(fmt.can_write) == r.writable
    assert f"{fmt.__module__}:{fmt.__qualname__}" == r.target
    assert format_title(r.name) == r.title


def test_tables_are_derived_from_the_rows() -> None:
    assert list(known_formats) == [r.name for r in ROWS]
    assert ALIASES == {a: r.name for r in ROWS for a in r.aliases}
    assert list(ALIASES) == sorted(ALIASES)
    assert DETECTION_ORDER[:4] == ("torch_dcp", "native", "safetensors", "pytorch")
    assert DETECTION_ORDER.index("tf_v1") < DETECTION_ORDER.index("tf_bundle")
    assert len({r.priority for r in ROWS}) == len(ROWS), "priorities must not tie"


def test_destination_is_chosen_from_the_rows(tmp_path: Path) -> None:
    assert format_for_destination(tmp_path / "m.weights.h5").name == "keras"
    assert format_for_destination(tmp_path / "m.SAFETENSORS").name == "native"
    assert format_for_destination(tmp_path / "m.npz").name == "numpy"
    assert format_for_destination(tmp_path / "run").name == "native"
    assert format_for_destination(tmp_path / "o.bin", "st").name == "safetensors"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    from safetensors.numpy import save_file

    np.save(tmp_path / "a.npy", np.arange(3, dtype=np.float32))
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "b.safetensors"))
    (tmp_path / "misnamed.gguf").write_bytes((tmp_path / "a.npy").read_bytes())
    return tmp_path


def test_converting_to_npz_imports_only_the_numpy_format(files: Path) -> None:
    mods = _format_modules("weightvault.convert('a.npy', 'x.npz')", files)
    assert set(mods) == {"numpy_npz"}, mods
    assert np.array_equal(weightvault.load(files / "x.npz")["a"], np.arange(3, dtype=np.float32))
    mods = _format_modules("weightvault.convert('b.safetensors', 'y.npz')", files)
    assert set(mods) == {"native", "safetensors", "numpy_npz"}, mods


def test_naming_the_target_imports_only_it(files: Path) -> None:
    mods = _format_modules("weightvault.convert('a.npy', 'out', to='torch')", files)
    assert set(mods) == {"numpy_npz", "pytorch"}, mods


def test_opening_by_extension_imports_only_that_family(files: Path) -> None:
    mods = _format_modules("r = weightvault.open('b.safetensors'); assert r.format == 'safetensors'", files)
    assert set(mods) == {"native", "safetensors"}, mods  # a native file is a safetensors file


def test_content_sniffing_falls_back_in_priority_order(files: Path) -> None:
    # the name says GGUF, the bytes say .npy: GGUF sniffs first, then the others by priority
    # until one claims it; formats after it are never imported
    mods = _format_modules("r = weightvault.open('misnamed.gguf'); assert r.format == 'numpy'", files)
    assert mods == ["gguf", "torch_dcp", "native", "safetensors", "pytorch", "numpy_npz"], mods


def test_listing_writable_names_imports_no_format(files: Path) -> None:
    mods = _format_modules(
        "from weightvault.registry import format_choices\n"
        "assert 'npz' in format_choices(writable=True) and 'gguf' not in format_choices(writable=True)",
        files,
    )
    assert mods == [], mods


@pytest.mark.parametrize("r", ROWS, ids=lambda r: r.name)
def test_every_format_has_a_docs_page(r) -> None:
    page = DOCS / f"{r.name}.md"
    assert page.is_file(), f"write docs/formats/{r.name}.md"
    assert len(page.read_text(encoding="utf-8").strip().splitlines()) >= 5


@pytest.mark.parametrize("r", ROWS, ids=lambda r: r.name)
def test_endings_and_writability_are_written_once(r) -> None:
    # the row is the one place: the class inherits them (one edit per new format)
    fmt = get_format(r.name)
    assert "extensions" not in vars(fmt) and "can_write" not in vars(fmt)


def test_a_subclass_keeps_its_row_and_a_plugin_its_own_values() -> None:
    from weightvault.abc.format import Format
    from weightvault.formats.numpy_npz import NumpyFormat

    class Tweaked(NumpyFormat):
        pass

    class Plugin(Format):
        name = "numpy"  # same name, but not the registered class: no row values
        extensions = (".plug",)

        @classmethod
        def sniff(cls, path, head):  # type: ignore[no-untyped-def]
            return False

        @classmethod
        def open(cls, path, **options):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    assert Tweaked.extensions == (".npy", ".npz") and Tweaked.can_write
    assert Plugin.extensions == (".plug",) and Plugin.can_write is False


@pytest.mark.parametrize("r", ROWS, ids=lambda r: r.name)
def test_calling_a_format_directly_still_checks_options(r, files: Path) -> None:
    from weightvault.errors import UnsupportedOperationError

    fmt = get_format(r.name)
    with pytest.raises(UnsupportedOperationError, match=f"unknown {r.name} read option"):
        fmt.open(files / "b.safetensors", bogus=1)
    if r.writable:
        with pytest.raises(UnsupportedOperationError, match=f"unknown {r.name} write option"):
            fmt.write(files / "out" / "x", {"w": np.ones(2, np.float32)}, bogus=1)
        assert not (files / "out").exists()
