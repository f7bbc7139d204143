"""Incremental checkpoints on an object store: unchanged shards are copied server-side.

``CheckpointManager("s3://...", incremental=True)`` saves each step as a complete, standalone
checkpoint prefix, like a full save, but a shard whose tensors are all unchanged since the
previous committed step (the *base*) is not uploaded again: the store copies the base's object
into the new prefix itself (:func:`~weightvault.storage.copy.server_copy`: S3 ``CopyObject``, or
``UploadPartCopy`` parts above 5 GiB). The decision is the local one
(:mod:`weightvault.formats.native_incremental`, shared code):

1. the base's ``manifest.json`` is read (one GET; a base that is gone, uncommitted or unreadable
   is no base: everything is uploaded);
2. every tensor with the same dtype and shape as in the base is hashed and compared with the
   base manifest's checksum; :func:`~weightvault.core.shards.plan_incremental` keeps each base
   shard whose tensors are all unchanged;
3. each kept shard's header is read from the base object (one ranged GET) and must list exactly
   the planned tensors, dtypes and shapes; then it is copied, on condition that the object is
   still the one checked (``CopySourceIfMatch`` with the ETag of that read). A shard that fails
   the check, or whose copy fails (the base was deleted or replaced meanwhile, the store keeps
   answering 503 after every retry), is uploaded instead;
4. the other shards are uploaded as by a full save, then ``manifest.json`` (with the
   ``"incremental"`` section: ``"how": "copy"``, ``written_bytes`` 0 for copied shards), the
   index, the manager's record and ``COMMITTED`` last: the commit protocol is unchanged.

A distributed save (every rank of a torch.distributed job) does the same per rank with
:func:`copy_shards`, called by :class:`~weightvault.storage.distributed.PrefixDirectory`.

A copy is a new object: deleting the base (retention) never touches it. It saves the upload
(bandwidth and time), not storage: the store bills each step's objects in full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from weightvault.errors import WeightVaultError
from weightvault.formats.native_incremental import (
    IncrementalBase,
    IncrementalSave,
    base_from_manifest,
    header_matches,
    plan_save,
    reused_entry,
)
from weightvault.storage.copy import server_copy
from weightvault.storage.location import Location
from weightvault.storage.reader import (
    HEADER_PROBE,
    RemoteNativeReader,
    RemoteSafetensorsFile,
    run_parallel,
)

__all__ = ["copy_shards", "copy_unchanged", "plan_against", "read_remote_base"]


def read_remote_base(base: Location | None) -> IncrementalBase | None:
    """The committed base prefix's tensors and shards, or None when there is no usable base."""
    if base is None:
        return None
    try:
        reader = RemoteNativeReader(base, single=False)
    except (WeightVaultError, OSError):
        return None  # gone, uncommitted or corrupt: this save uploads everything
    return base_from_manifest(base, reader.manifest)


def plan_against(
    sources: list[Any], rows: dict[str, dict[str, Any]], shard_size: int, base: Location | None
) -> IncrementalSave:
    return plan_save(sources, rows, shard_size, read_remote_base(base))


def _copyable(
    base: IncrementalBase, file: str, names: tuple[str, ...], by_name: Mapping[str, Any]
) -> tuple[Location, int, str | None] | None:
    """The base object, its size and ETag, if its own header holds exactly ``names`` as planned."""
    if "/" in file or "\\" in file or file in ("", ".", ".."):
        return None  # a manifest naming something outside the base prefix: never copied
    src = base.root.child(file)
    try:
        info = src.info()
        if info is None or info.get("type") == "directory":
            return None
        size = int(info.get("size") or 0)
        st = RemoteSafetensorsFile(src, src.read_range(0, min(size, HEADER_PROBE)), size)
    except (WeightVaultError, OSError):
        return None
    if not header_matches(st, names, by_name):
        return None
    etag = info.get("ETag") or info.get("etag")
    return src, size, etag if isinstance(etag, str) and etag else None


def copy_unchanged(loc: Location, job: IncrementalSave, rows: dict[str, Any]) -> dict[str, int]:
    """Copy every kept shard from the base into ``loc`` server-side, ``concurrency`` at a time;
    returns ``{file: size}`` of those copied. A shard that cannot be copied is left out (the
    caller uploads it): nothing raised here but an interruption."""
    if job.base is None or not job.inc.reused:
        return {}
    entries = copy_shards(loc, job.base, job.inc.reused, job.tensors_of, job.by_name)
    for file, entry in entries.items():  # in this thread: the manifest section is not locked
        job.reused(file, entry, rows)
    return {file: entry["nbytes"] for file, entry in entries.items()}


def copy_shards(
    loc: Location,
    base: IncrementalBase,
    reused: Mapping[str, str],
    names_of: Callable[[str], tuple[str, ...]],
    by_name: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Copy each ``reused`` base file (new file -> base file) into ``loc`` server-side, after
    checking its header holds exactly ``names_of(file)`` as planned, ``concurrency`` at a time;
    returns the ``"incremental"`` entries (:func:`reused_entry`, ``how`` "copy") of the files
    copied. A file that cannot be copied is left out (the caller uploads it). Shared by the
    single-process save and each rank of a distributed one (storage/distributed.py)."""
    copied: dict[str, int] = {}
    lock = threading.Lock()

    def copy_one(file: str, base_file: str) -> None:
        found = _copyable(base, base_file, names_of(file), by_name)
        if found is None:
            return
        src, size, etag = found
        try:
            server_copy(src, loc.child(file), size=size, if_match=etag)
        except WeightVaultError:
            # gone or replaced since the check (a 412 on the ETag condition), or the store
            # refused after every retry: upload it instead. The failed copy left nothing: a
            # CopyObject is atomic and a multipart copy is aborted.
            return
        with lock:
            copied[file] = size

    jobs = [(lambda f=file, b=base_file: copy_one(f, b)) for file, base_file in reused.items()]
    run_parallel(jobs, loc.transfer.concurrency)
    return {
        file: reused_entry(base, reused[file], "copy", copied[file], server_side=True)
        for file in reused
        if file in copied
    }
