"""Plain safetensors files (any producer), read and written without the safetensors package."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.core.io import atomic_write
from weightvault.core.safetensors_io import ST_CODES, SafetensorsFile, TensorSource, write_safetensors
from weightvault.errors import UnsupportedOperationError

__all__ = ["SafetensorsFormat", "SafetensorsReader"]


class SafetensorsReader(FormatReader):
    format_name = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file = SafetensorsFile(path)
        # Keep the file's own order (by offset), which is how the producer laid it out.
        self._names = sorted(self._file.entries, key=lambda n: self._file.entries[n].start)

    def keys(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        e = self._file.entries[name]
        return TensorInfo(name, e.dtype, e.shape, {"offsets": [e.start, e.end]})

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        return self._file.view(name)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._file.metadata)

    def close(self) -> None:
        self._file.close()


def _string_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    import json

    out = {}
    for k, v in (metadata or {}).items():
        out[str(k)] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return out


class SafetensorsFormat(Format):
    name = "safetensors"
    description = "safetensors file (Hugging Face)"
    extensions = (".safetensors",)
    can_write = True

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if path.is_dir() or len(head) < 10:
            return False
        n = int.from_bytes(head[:8], "little")
        return 2 <= n <= 100_000_000 and head[8:9] == b"{"

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> SafetensorsReader:
        return SafetensorsReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        sources = []
        for name in tensors:
            info = tensors.info(name) if hasattr(tensors, "info") else None
            if info is not None:
                dtype, shape = info.dtype, info.shape
            else:
                arr = np.asarray(tensors[name])
                from weightvault.core.dtypes import dtype_name

                dtype, shape = dtype_name(arr.dtype, tensor=name), tuple(arr.shape)
            if dtype not in ST_CODES:
                raise UnsupportedOperationError(
                    f"safetensors has no dtype for {dtype}", path=path, tensor=name,
                    hint="write the native format instead (it stores complex128 as a float64 view)",
                )
            sources.append(TensorSource(name, dtype, shape, (lambda n: lambda: np.asarray(tensors[n]))(name)))
        with atomic_write(path) as f:
            write_safetensors(f, sources, _string_metadata(metadata))
