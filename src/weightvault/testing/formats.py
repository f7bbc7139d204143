"""``FormatTests``: the conformance suite every writable format runs; ``ReadFormatTests``: the
read-side suite of a read-only format (a file the real framework wrote is opened, and keys, info,
get and byte spans must agree).

Subclass it in ``tests/formats/test_<name>.py``, set ``format_name`` and ``suffix`` (and the
capability attributes where the format is narrower), and pytest collects the whole suite::

    class TestNumpyConformance(FormatTests):
        format_name = "numpy"
        suffix = ".npz"

Every check goes through the public surface (registry, ``weightvault.open``, ``convert``, the CLI),
so a format that passes works everywhere weightvault does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import pytest

import weightvault
from weightvault.core.dtypes import DTYPES
from weightvault.errors import TensorNotFoundError, UnsupportedOperationError, WeightVaultError
from weightvault.registry import get_format

__all__ = ["FormatTests", "ReadFormatTests", "sample_tensors"]


def sample_tensors(dtypes: tuple[str, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """One small tensor of each dtype with awkward values (negatives, extremes, non-square)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, name in enumerate(dtypes):
        dt = DTYPES[name]
        shape = (2 + i % 3, 3)
        if name == "bool":
            arr = rng.integers(0, 2, shape).astype(bool)
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            arr = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
            arr.flat[0] = info.min
            arr.flat[1] = info.max
        elif dt.kind == "c":
            arr = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
        else:
            arr = (rng.standard_normal(shape) * 3).astype(np.float32).astype(dt)
        out[f"t_{name}"] = arr
    return out


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (so NaN payloads and -0.0 count)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))


class _Exploding(Mapping[str, np.ndarray]):
    """A mapping whose second tensor raises while being written (a failed save)."""

    def __init__(self, tensors: dict[str, np.ndarray]) -> None:
        self.tensors = tensors

    def __getitem__(self, key: str) -> np.ndarray:
        if key == list(self.tensors)[1]:
            raise RuntimeError("source tensor went away mid-save")
        return self.tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)


class FormatTests:
    #: registry name of the format under test
    format_name: ClassVar[str] = ""
    #: file name ending for written files ("" for directory formats)
    suffix: ClassVar[str] = ""
    #: dtypes the format stores exactly
    dtypes: ClassVar[tuple[str, ...]] = (
        "float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "bool",
    )  # fmt: skip
    supports_scalar: ClassVar[bool] = True
    supports_empty: ClassVar[bool] = True
    supports_unicode_names: ClassVar[bool] = True
    #: names the format can hold (some formats only allow identifiers)
    name_style: ClassVar[str] = "dotted"  # "dotted" | "slashed" | "plain"
    writer_options: ClassVar[dict[str, Any]] = {}
    reader_options: ClassVar[dict[str, Any]] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def path(self, tmp_path: Path, stem: str = "weights") -> Path:
        return tmp_path / f"{stem}{self.suffix}"

    def write(self, path: Path, tensors: Mapping[str, np.ndarray], metadata: dict[str, Any] | None = None) -> None:
        get_format(self.format_name).write(path, tensors, metadata=metadata, **self.writer_options)

    def open(self, path: Path) -> Any:
        return weightvault.open(path, **self.reader_options)

    def name(self, base: str) -> str:
        return {"dotted": base, "slashed": base.replace(".", "/"), "plain": base.replace(".", "_")}[self.name_style]

    # -- the suite -------------------------------------------------------------------------------
    def test_roundtrip_every_dtype(self, tmp_path: Path) -> None:
        tensors = sample_tensors(self.dtypes)
        p = self.path(tmp_path)
        self.write(p, tensors)
        with self.open(p) as reader:
            assert sorted(reader.keys()) == sorted(tensors)
            for name, arr in tensors.items():
                info = reader.info(name)
                assert info.dtype == arr.dtype.name or DTYPES[info.dtype] == arr.dtype, name
                assert info.shape == arr.shape, name
                assert _equal(reader.get(name), arr), name

    def test_detected_without_format_hint(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        self.write(p, {self.name("layer.weight"): np.ones((2, 2), np.float32)})
        with weightvault.open(p, **self.reader_options) as reader:
            assert reader.format == self.format_name

    def test_scalar_and_empty(self, tmp_path: Path) -> None:
        tensors = {}
        if self.supports_scalar:
            tensors[self.name("scalar")] = np.array(3.5, np.float32)
        if self.supports_empty:
            tensors[self.name("empty")] = np.zeros((0, 4), np.float32)
        if not tensors:
            pytest.skip("format stores neither scalars nor empty tensors")
        tensors[self.name("normal")] = np.arange(6, dtype=np.float32).reshape(2, 3)
        p = self.path(tmp_path)
        self.write(p, tensors)
        with self.open(p) as reader:
            for name, arr in tensors.items():
                assert reader.info(name).shape == arr.shape
                assert _equal(reader.get(name), arr)

    def test_unicode_names(self, tmp_path: Path) -> None:
        if not self.supports_unicode_names:
            pytest.skip("format restricts names")
        tensors = {self.name("couche.poids_é"): np.ones(3, np.float32), self.name("層.重み"): np.zeros(2, np.float32)}
        p = self.path(tmp_path)
        self.write(p, tensors)
        with self.open(p) as reader:
            assert sorted(reader.keys()) == sorted(tensors)

    def test_missing_tensor_is_a_clear_error(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        self.write(p, {self.name("a"): np.ones(2, np.float32)})
        with self.open(p) as reader, pytest.raises(TensorNotFoundError) as exc:
            reader.get("no_such_tensor")
        assert "no_such_tensor" in str(exc.value)

    def test_truncated_file_is_rejected(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        self.write(p, {self.name("big"): np.arange(4096, dtype=np.float32), self.name("b"): np.ones(3, np.float32)})
        victim = p if p.is_file() else max((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
        with pytest.raises(WeightVaultError) as exc:
            with self.open(p) as reader:
                for name in reader.keys():
                    np.asarray(reader.get(name)).sum()
        assert str(victim.name) in str(exc.value) or str(p) in str(exc.value)

    def test_garbage_is_rejected(self, tmp_path: Path) -> None:
        p = self.path(tmp_path, "garbage")
        if not self.suffix:
            p.mkdir()
            (p / "junk").write_bytes(os.urandom(256))
        else:
            p.write_bytes(b"\x00\x01garbage" + os.urandom(512))
        with pytest.raises(WeightVaultError):
            with weightvault.open(p, format=self.format_name, **self.reader_options) as reader:
                for name in reader.keys():
                    reader.get(name)

    def test_failed_write_keeps_previous_file(self, tmp_path: Path) -> None:
        p = self.path(tmp_path)
        good = {self.name("a"): np.ones(3, np.float32), self.name("b"): np.zeros(2, np.float32)}
        self.write(p, good)
        before = _snapshot(p)
        with pytest.raises(RuntimeError, match="went away"):
            self.write(p, _Exploding({self.name("a"): np.full(3, 7, np.float32), self.name("b"): np.ones(2, np.float32)}))
        assert _snapshot(p) == before
        leftovers = [f.name for f in p.parent.iterdir() if ".wvtmp-" in f.name]
        assert leftovers == []

    def test_convert_through_native_is_lossless(self, tmp_path: Path) -> None:
        tensors = sample_tensors(self.dtypes, seed=1)
        src = self.path(tmp_path, "src")
        self.write(src, tensors)
        native = tmp_path / "mid.safetensors"
        weightvault.convert(src, native, read_options=self.reader_options)
        back = self.path(tmp_path, "back")
        weightvault.convert(native, back, to=self.format_name, write_options=self.writer_options)
        with self.open(back) as reader:
            for name, arr in tensors.items():
                assert _equal(reader.get(name), arr), name

    def test_cli_ls_json(self, tmp_path: Path, cli_run: Any) -> None:
        p = self.path(tmp_path)
        tensors = {self.name("w"): np.ones((3, 2), np.float32)}
        self.write(p, tensors)
        args = ["ls", str(p), "--json"]
        for key, value in self.reader_options.items():
            args += ["-o", f"{key}={json.dumps(value)}"]
        code, out, err = cli_run(*args)
        assert code == 0, err
        doc = json.loads(out)
        assert doc["format"] == self.format_name
        assert [t["shape"] for t in doc["tensors"]] == [[3, 2]]
        assert doc["total_parameters"] == 6


class ReadFormatTests:
    """The read-side conformance suite of a read-only format.

    Subclass it, set ``format_name`` and implement :meth:`make_file`: write a file with the real
    framework (or tool) that produces the format and return its path with the values it holds::

        class TestGGUFReadConformance(ReadFormatTests):
            format_name = "gguf"

            def make_file(self, tmp_path):
                ...  # gguf.GGUFWriter
                return path, {"f32": values}
    """

    #: registry name of the format under test
    format_name: ClassVar[str] = ""
    reader_options: ClassVar[dict[str, Any]] = {}

    def make_file(self, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
        raise NotImplementedError

    def test_detected_and_values_read_back(self, tmp_path: Path) -> None:
        p, expected = self.make_file(tmp_path)
        with weightvault.open(p, **self.reader_options) as reader:
            assert reader.format == self.format_name
            assert set(expected) <= set(reader.keys())
            for name, arr in expected.items():
                got = reader.get(name)
                assert got.shape == np.shape(arr), name
                assert np.array_equal(got, arr), name

    def test_keys_info_and_get_agree(self, tmp_path: Path) -> None:
        p, _ = self.make_file(tmp_path)
        with weightvault.open(p, **self.reader_options) as reader:
            assert reader.keys() and len(set(reader.keys())) == len(reader.keys())
            for name in reader.keys():
                info = reader.info(name)
                arr = reader.get(name)
                assert info.name == name and info.shape == arr.shape, name
                if info.is_string:
                    assert arr.dtype.kind == "O", name
                else:
                    assert DTYPES[info.dtype] == arr.dtype, name
                    assert info.nbytes == arr.nbytes, name

    def test_byte_spans_hold_what_get_returns(self, tmp_path: Path) -> None:
        p, _ = self.make_file(tmp_path)
        with weightvault.open(p, **self.reader_options) as reader:
            for name in reader.keys():
                span = reader.byte_span(name)
                if span is None:
                    continue
                arr = np.ascontiguousarray(reader.get(name))
                assert span.nbytes == arr.nbytes, name
                stored = os.pread(span.fileno, span.nbytes, span.offset)
                assert stored == arr.astype(arr.dtype.newbyteorder("<")).tobytes(), name

    def test_unknown_option_is_refused(self, tmp_path: Path) -> None:
        p, _ = self.make_file(tmp_path)
        refused = f"unknown {self.format_name} read option"
        with pytest.raises(UnsupportedOperationError, match=refused):
            weightvault.open(p, bogus=1)

    def test_missing_tensor_is_a_clear_error(self, tmp_path: Path) -> None:
        p, _ = self.make_file(tmp_path)
        with weightvault.open(p, **self.reader_options) as reader:
            with pytest.raises(TensorNotFoundError):
                reader.get("no_such_tensor")

    def test_writing_is_refused(self, tmp_path: Path) -> None:
        fmt = get_format(self.format_name)
        assert not fmt.can_write
        with pytest.raises(UnsupportedOperationError):
            fmt.write(tmp_path / "out", {"w": np.ones(2, np.float32)})


def _snapshot(p: Path) -> dict[str, bytes]:
    if p.is_file():
        return {p.name: p.read_bytes()}
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


# Keep ml_dtypes imported so DTYPES' extension types are registered for subclasses' dtype tuples.
_ = ml_dtypes.bfloat16
