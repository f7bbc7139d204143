"""Checkpoints on object storage (S3, GCS, MinIO, R2, ``memory://``: every fsspec URL).

The public functions (:func:`weightvault.save`, ``load``, ``open``, ``verify``, ``convert``, the
checkpoint manager, ``watch``, the CLI) call into here when they are given a URL; plain paths and
``file://`` URLs never reach this package. See ``docs/object_store.md``.

Storage options: ``storage_options={...}`` in the API (``--storage-option KEY=VALUE`` on the
CLI) go to the fsspec filesystem (``endpoint_url``, ``key``, ``secret``, ``anon`` ...), except
``part_size``, ``concurrency``, ``max_retries`` and ``retry_delay``, which are ours (see
:class:`~weightvault.storage.location.Transfer`). ``WEIGHTVAULT_STORAGE_OPTIONS`` (JSON) supplies
defaults; the filesystems' own variables (``AWS_*``, ``FSSPEC_S3_*``) apply as usual.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightvault.storage.location import (
    Location,
    Transfer,
    env_storage_options,
    is_url,
    local_path,
    stats,
)

__all__ = [
    "Location",
    "Transfer",
    "is_url",
    "local_path",
    "location",
    "stats",
]


def location(url: str | Location, storage_options: Mapping[str, Any] | None = None) -> Location:
    """The :class:`Location` of a URL, with ``storage_options`` over the environment's defaults."""
    from weightvault.storage.location import resolve

    if isinstance(url, Location):
        return url
    return resolve(url, {**env_storage_options(), **dict(storage_options or {})})


# -- the hooks of weightvault.api ------------------------------------------------------------------


def open_url(
    url: str | Location,
    *,
    format: str | None = None,  # noqa: A002
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    from weightvault.storage.reader import open_remote

    return open_remote(location(url, storage_options), format=format, **options)


def save_url(
    obj: Any, url: str | Location, *, storage_options: Mapping[str, Any] | None = None, **kw: Any
) -> str:
    from weightvault.storage.native import save_url as _save

    return _save(location(url, storage_options), obj, **kw)


def load_url(
    url: str | Location, *, storage_options: Mapping[str, Any] | None = None, **kw: Any
) -> Any:
    from weightvault.storage.native import load_url as _load

    return _load(location(url, storage_options), **kw)


def write_converted(
    fmt: Any,
    url: str | Location,
    source: Mapping[str, Any],
    *,
    metadata: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """A conversion's output to a URL. Native: streamed straight up (tensor by tensor from the
    source reader, no local copy). Other formats' writers need a local file: written to a
    private temporary directory, then uploaded, then removed."""
    import os
    import shutil
    import tempfile

    loc = location(url, storage_options)
    if fmt.name == "native":
        from weightvault.storage.native import save_url as _save

        obj = source if isinstance(source, dict) or _lazy(source) else dict(source.items())
        _save(loc, obj, metadata=metadata, **options)
        return None
    tmp = tempfile.mkdtemp(prefix="weightvault-")
    try:
        local = os.path.join(tmp, loc.name or "out")
        left_out = fmt.write(local, source, metadata=metadata, **options)
        upload_path(local, loc)
        return left_out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lazy(obj: Any) -> bool:
    from weightvault.formats.native import _is_lazy

    return _is_lazy(obj)


def upload_path(local: str, loc: Location) -> None:
    """A local file (streamed in parts) or directory (file by file) to ``loc``."""
    import os

    from weightvault.storage.upload import open_writer

    if os.path.isdir(local):
        for name in sorted(os.listdir(local)):
            upload_path(os.path.join(local, name), loc.child(name))
        return
    with open(local, "rb") as src, open_writer(loc) as out:
        while chunk := src.read(loc.transfer.part_size):
            out.write(chunk)
