"""Bounds on what a file may make weightvault allocate or recurse into.

Most formats store every byte of a tensor, so a reader checks ``shape x itemsize`` against the bytes
present in the file before allocating. Some data expands instead: a compressed zip member, a
TensorFlow Const that fills a shape from one value, a partitioned variable assembled from slices, an
HDF5 dataset whose unwritten chunks read as the fill value. For those the file size says nothing, so
one limit applies everywhere: an expansion is refused when it is both far larger than the bytes that
produced it (``MAX_EXPANSION_RATIO``) and larger than ``max_expanded_bytes`` (1 GiB unless raised).
The caller raises the limit with :func:`expansion_limit` (a context manager), :func:`set_limits`, or
the ``WEIGHTVAULT_MAX_EXPANSION`` environment variable (bytes, or with a K/M/G/T suffix).

Nesting (JSON, protobuf, pickles, gob types) is bounded by ``MAX_NESTING`` so that no file can make a
reader recurse into a ``RecursionError``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from weightvault.errors import ResourceLimitError

__all__ = [
    "MAX_EXPANSION_RATIO",
    "MAX_NESTING",
    "check_depth",
    "check_expansion",
    "expansion_limit",
    "max_expanded_bytes",
    "set_limits",
]

#: deflate cannot beat about 1032:1; anything that expands more than this relative to its stored
#: bytes is a fill, a broadcast or a lie, and only then does the absolute limit apply
MAX_EXPANSION_RATIO = 64
#: deepest nesting any reader follows (JSON, protobuf messages, pickle containers, gob types)
MAX_NESTING = 200

_DEFAULT_MAX_EXPANDED = 1 << 30
_ENV = "WEIGHTVAULT_MAX_EXPANSION"
_local = threading.local()
_global_limit: int | None = None
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = text[-1:] if text[-1:] in _SUFFIX and not text[-1:].isdigit() else ""
    number = text[: len(text) - len(suffix)] if suffix else text
    try:
        return int(float(number) * _SUFFIX[suffix])
    except ValueError:
        raise ResourceLimitError(
            f"{_ENV}={text!r} is not a size (bytes, or a number with K, M, G or T)"
        ) from None


def max_expanded_bytes() -> int:
    """The limit in force: the innermost :func:`expansion_limit`, else :func:`set_limits`, else
    ``WEIGHTVAULT_MAX_EXPANSION``, else 1 GiB."""
    local = getattr(_local, "limit", None)
    if local is not None:
        return int(local)
    if _global_limit is not None:
        return _global_limit
    env = os.environ.get(_ENV)
    return _parse_size(env) if env else _DEFAULT_MAX_EXPANDED


def set_limits(*, max_expanded: int | None = None) -> None:
    """Set the process-wide expansion limit in bytes (``None`` restores the default)."""
    global _global_limit
    _global_limit = max_expanded


@contextlib.contextmanager
def expansion_limit(nbytes: int) -> Iterator[None]:
    """Within the block (this thread), allow expansions up to ``nbytes``.

    >>> with weightvault.expansion_limit(1 << 20):
    ...     max_expanded_bytes()
    1048576
    """
    previous = getattr(_local, "limit", None)
    _local.limit = nbytes
    try:
        yield
    finally:
        _local.limit = previous


def check_expansion(
    out_nbytes: int,
    stored_nbytes: int,
    *,
    path: str | os.PathLike[str] | None,
    tensor: str | None = None,
    what: str = "data",
) -> None:
    """Refuse to produce ``out_nbytes`` from ``stored_nbytes`` stored bytes when that is both a large
    ratio and over the limit. Call it before allocating."""
    if out_nbytes < 0:
        raise ResourceLimitError(f"{what} claims a negative size ({out_nbytes})", path=path, tensor=tensor)
    if out_nbytes <= max(stored_nbytes, 0) * MAX_EXPANSION_RATIO:
        return
    limit = max_expanded_bytes()
    if out_nbytes > limit:
        raise ResourceLimitError(
            f"{what} would expand {stored_nbytes} stored bytes to {out_nbytes} bytes, over the "
            f"limit of {limit} bytes",
            path=path,
            tensor=tensor,
            hint=f"if the file is trusted, raise the limit: {_ENV}={out_nbytes} "
            "(or weightvault.expansion_limit(n) in Python)",
        )


def check_depth(depth: int, *, path: str | os.PathLike[str] | None, what: str = "nesting") -> None:
    """Raise once ``depth`` passes :data:`MAX_NESTING`."""
    if depth > MAX_NESTING:
        raise ResourceLimitError(
            f"{what} is nested more than {MAX_NESTING} levels deep", path=path
        )
