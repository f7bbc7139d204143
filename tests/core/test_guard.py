"""The reader guard: whatever a format lets through reaches callers as a weightvault error."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.errors import (
    InvalidHeaderError,
    ResourceLimitError,
    UnexpectedReadError,
    WeightVaultError,
)


class _Reader(FormatReader):
    format_name = "broken"

    def __init__(self, path: str, fail: BaseException) -> None:
        super().__init__(path)
        self.fail = fail

    def keys(self) -> list[str]:
        return ["w"]

    def info(self, name: str) -> TensorInfo:
        raise self.fail

    def get(self, name: str) -> np.ndarray:
        raise self.fail

    @property
    def metadata(self) -> dict[str, Any]:
        raise self.fail


class _Format(Format):
    name = "broken"

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if head == b"boom":
            raise ValueError("a detector that cannot parse the file")
        return head == b"mine"

    @classmethod
    def open(cls, path: Any, **options: Any) -> FormatReader:
        fail = options["fail"]
        if options.get("at_open"):
            raise fail
        return _Reader(str(path), fail)


@pytest.mark.parametrize("fail", [KeyError("dtype"), zlib.error("bad"), OverflowError("big"),
                                  RecursionError("deep"), TypeError("x")])
def test_foreign_exceptions_become_unexpected_read_errors_naming_file_and_tensor(fail: Exception) -> None:
    reader = _Format.open("m.bin", fail=fail)
    for call in (lambda: reader.get("w"), lambda: reader.info("w")):
        with pytest.raises(UnexpectedReadError) as err:
            call()
        assert err.value.path == "m.bin" and err.value.tensor == "w"
        assert err.value.__cause__ is fail
        assert type(fail).__name__ in str(err.value) or "nested too deeply" in str(err.value)
    with pytest.raises(UnexpectedReadError):
        reader.metadata  # noqa: B018 - properties are guarded too


def test_memory_errors_become_resource_limit_errors() -> None:
    reader = _Format.open("m.bin", fail=MemoryError())
    with pytest.raises(ResourceLimitError, match="more memory"):
        reader.get("w")


def test_our_own_errors_pass_unchanged() -> None:
    own = InvalidHeaderError("bad header", path="m.bin")
    reader = _Format.open("m.bin", fail=own)
    with pytest.raises(InvalidHeaderError) as err:
        reader.get("w")
    assert err.value is own


def test_open_is_guarded_but_path_errors_pass() -> None:
    with pytest.raises(UnexpectedReadError) as err:
        _Format.open("m.bin", fail=ValueError("no"), at_open=True)
    assert err.value.path == "m.bin" and isinstance(err.value, WeightVaultError)
    with pytest.raises(FileNotFoundError):
        _Format.open("m.bin", fail=FileNotFoundError("gone"), at_open=True)


def test_interrupts_are_not_swallowed() -> None:
    reader = _Format.open("m.bin", fail=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        reader.get("w")


def test_a_sniff_that_cannot_parse_a_file_says_no() -> None:
    assert _Format.sniff(Path("x"), b"mine") is True
    assert _Format.sniff(Path("x"), b"boom") is False  # detection goes on to the next format
