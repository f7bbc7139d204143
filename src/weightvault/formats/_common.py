"""Small helpers shared by the framework formats (numpy, keras, onnx, gguf, sharded safetensors)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from weightvault.abc.format import ByteSpan, DescribedTensors
from weightvault.core.dtypes import dtype_name
from weightvault.core.jsonable import jsonable
from weightvault.errors import InvalidHeaderError

if TYPE_CHECKING:  # numpy is imported where data is touched: header-only commands never need it
    import numpy as np

__all__ = ["describe_entry", "fetch_array", "safe_relative", "span_of"]


def describe_entry(tensors: Mapping[str, np.ndarray], name: str) -> tuple[str, tuple[int, ...]]:
    """(canonical dtype, shape) of one entry, without reading it when the mapping is lazy."""
    import numpy as np

    if isinstance(tensors, DescribedTensors):
        ti = tensors.info(name)
        return ti.dtype, tuple(ti.shape)
    arr = np.asarray(tensors[name])
    return dtype_name(arr.dtype, tensor=name), tuple(arr.shape)


def fetch_array(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """The entry as a C-contiguous little-endian numpy array (a view when it already is one)."""
    import numpy as np

    from weightvault.core.tensors import to_numpy

    value = tensors[name]
    return to_numpy(np.asarray(value) if isinstance(value, (np.generic, int, float, bool)) else value)


def span_of(tensors: Mapping[str, Any], name: str) -> ByteSpan | None:
    """Where the entry's bytes lie verbatim in a source file, when the mapping is a reader's view."""
    return tensors.byte_span(name) if isinstance(tensors, DescribedTensors) else None


def safe_relative(
    root: str | os.PathLike[str],
    relative: str,
    *,
    path: str | os.PathLike[str],
    tensor: str | None = None,
    directory: bool = False,
    link_homes: tuple[str, ...] = (),
) -> str:
    """Join ``relative`` under ``root``, refusing absolute paths, ``..``, NUL bytes, links that
    leave it, and a directory where a file is expected (or, with ``directory=True``, a file where
    a directory is expected). Every format that follows a name written inside a file comes here.
    ``link_homes`` are further real directories a link may land in (a model file that is itself a
    link, as in the Hugging Face cache, has its data linked the same way)."""
    if "\x00" in relative:
        raise InvalidHeaderError(
            f"file reference {relative!r} contains a NUL byte", path=path, tensor=tensor
        )
    rel = relative.replace("\\", "/")
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or ".." in parts:
        raise InvalidHeaderError(
            f"file reference {relative!r} leaves the model's directory", path=path, tensor=tensor
        )
    full = os.path.join(os.fspath(root), *parts)
    real = os.path.realpath(full)
    homes = [os.path.realpath(root), *(os.path.realpath(h) for h in link_homes)]
    if not any(os.path.commonpath([home, real]) == home for home in homes):
        raise InvalidHeaderError(
            f"file reference {relative!r} resolves outside the model's directory",
            path=path,
            tensor=tensor,
        )
    if os.path.exists(real) and os.path.isdir(real) != directory:
        want, got = ("directory", "file") if directory else ("file", "directory")
        raise InvalidHeaderError(
            f"file reference {relative!r} is a {got}, not a {want}", path=path, tensor=tensor
        )
    return full
