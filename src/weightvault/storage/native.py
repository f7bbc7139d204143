"""Native checkpoints on an object store: save, load, and the commit protocol without rename.

A single ``.safetensors`` object is one upload, which S3 makes visible atomically on completion
(a failure aborts it: nothing appears).

A checkpoint directory is a prefix, and an object store has no atomic rename, so the order of
writes is the commit protocol:

1. the shards (``model-0000i-of-0000N.safetensors``), each a streamed multipart upload;
2. ``manifest.json`` and ``model.safetensors.index.json``;
3. ``COMMITTED``, last.

Readers (:class:`~weightvault.storage.reader.RemoteNativeReader`), ``watch``, ``runs`` and the
manager treat a prefix without ``COMMITTED`` as absent. Deleting goes the other way round
(:func:`delete_checkpoint`): ``COMMITTED`` first, then the rest, so a crash mid-delete leaves an
uncommitted prefix, never something that looks committed and is partial. Saving over an existing
checkpoint deletes it first in the same order (on a local disk the old one stays until the new
one is complete; an object store cannot offer that without rename).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from weightvault.core.dtypes import STRING, dtype_from_name
from weightvault.core.progress import progress_bar
from weightvault.core.safetensors_io import check_tensor_names, write_safetensors
from weightvault.core.shards import plan_shards
from weightvault.core.tree import unflatten
from weightvault.errors import ChecksumMismatchError, UnsupportedOperationError
from weightvault.formats.native import (
    COMMIT_MARKER,
    DEFAULT_SHARD_SIZE,
    INDEX_FILE,
    MANIFEST_FILE,
    _checksum_hook,
    _new_manifest,
    _refuse_foreign_extension,
    plan_state,
    single_file_metadata,
)
from weightvault.storage.location import Location
from weightvault.storage.reader import RemoteNativeReader, open_remote, run_parallel
from weightvault.storage.upload import UploadBudget, open_writer

__all__ = ["delete_checkpoint", "load_url", "save_url"]


def save_url(
    loc: Location,
    obj: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    single_file: bool | None = None,
    progress: bool | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    fsync: bool = True,  # noqa: ARG001 - an upload is durable once the store acknowledges it
    exclusive: bool = False,
    before_commit: Callable[[int], None] | None = None,
    incremental: bool = False,
    base: Location | None = None,
    stats: dict[str, Any] | None = None,
) -> str:
    """:func:`weightvault.save` to an object store (same arguments); returns the URL.

    ``before_commit(nbytes)`` (directory form) runs after every data object is up and before
    ``COMMITTED`` is written, with the checkpoint's bytes: the manager writes its record there
    and renews its lease; if it raises, nothing is committed and what was written is removed.

    ``incremental`` (directory form): shards whose tensors are unchanged since the committed
    checkpoint prefix ``base`` are copied from it server-side instead of uploaded
    (:mod:`weightvault.storage.incremental`). ``stats``, a dict, receives ``written_bytes``
    (uploaded) and ``reused_bytes`` (copied) before ``before_commit`` runs.
    """
    from pathlib import PurePosixPath

    _refuse_foreign_extension(PurePosixPath(loc.name))  # type: ignore[arg-type]
    if single_file is None:
        single_file = loc.name.endswith(".safetensors")
    spec, sources, rows, aliases = plan_state(obj, include, exclude)
    check_tensor_names(sources, path=loc.url)
    manifest = _new_manifest(rows, aliases, spec, metadata, extra_manifest)
    total = sum(s.nbytes for s in sources)
    with progress_bar(f"uploading {loc.name}", total, enabled=progress) as advance:
        hook = _checksum_hook(rows, advance)
        if single_file:
            final_meta = single_file_metadata(manifest, rows, loc.name)

            with open_writer(loc, exclusive=exclusive, rewritable_head=True) as f:
                write_safetensors(f, sources, final_meta(), on_tensor=hook, finalize=final_meta)
        else:
            _save_prefix(
                loc, sources, manifest, shard_size, hook, before_commit,
                incremental=incremental, base=base, stats=stats,
            )  # fmt: skip
    return loc.url


def _save_prefix(
    loc: Location,
    sources: list[Any],
    manifest: dict[str, Any],
    shard_size: int,
    hook: Any,
    before_commit: Callable[[int], None] | None = None,
    *,
    incremental: bool = False,
    base: Location | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    if loc.is_file():
        raise UnsupportedOperationError(
            "an object (not a checkpoint prefix) is in the way", path=loc.url
        )
    if loc.listdir():
        delete_checkpoint(loc)  # COMMITTED first: never a committed mix of old and new
    rows = manifest["tensors"]
    job = None
    if incremental:
        from weightvault.storage.incremental import plan_against

        job = plan_against(sources, rows, shard_size, base)
        plan = job.plan
    else:
        plan = plan_shards(sources, shard_size)  # the same plan as a local native directory
    by_name = {src.name: src for src in sources}
    weight_map: dict[str, str] = {}
    nbytes = uploaded = 0
    pending: list[Any] = []  # shards whose last parts are still in flight
    budget = UploadBudget(loc.transfer) if loc.is_s3 else None
    try:
        copied: dict[str, int] = {}
        if job is not None:
            from weightvault.storage.incremental import copy_unchanged

            copied = copy_unchanged(loc, job, rows)  # first: what fails to copy is uploaded
            nbytes += sum(copied.values())
        for shard, names in plan.shards:
            if shard in copied:
                continue
            group = [by_name[name] for name in names]
            # an incremental shard may be copied on under another name: its header names none
            meta = {"format": "pt"} if job else {"format": "pt", "weightvault.shard": shard}
            f = open_writer(loc.child(shard), budget=budget)
            try:
                write_safetensors(f, group, meta, on_tensor=hook)
                size = f.tell()
                f.send_rest()  # the next shard starts while this one's last parts upload
            except BaseException:
                f.abort()
                raise
            pending.append(f)
            nbytes += size
            uploaded += size
            if job is not None:
                job.written(shard, size)
            for src in group:
                rows[src.name]["file"] = shard
                weight_map[src.name] = shard
        for f in pending:
            f.complete()
        if job is not None:
            weight_map = job.finish_manifest(manifest)
        total = sum(s.nbytes for s in sources)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        for name, obj in ((MANIFEST_FILE, manifest), (INDEX_FILE, index)):
            data = _json_bytes(obj)
            loc.child(name).write_bytes(data)
            nbytes += len(data)
            uploaded += len(data)
        if stats is not None:
            stats["written_bytes"] = uploaded
            stats["reused_bytes"] = nbytes - uploaded
        if before_commit is not None:
            before_commit(nbytes)
    except BaseException:
        for f in pending:
            f.abort()
        # nothing was committed; remove what we can (what a crash leaves, the next writer of a
        # run removes, see weightvault.storage.manager)
        try:
            delete_checkpoint(loc)  # the prefix was empty when we began: all of it is ours
        except Exception:  # noqa: BLE001, S110 - the save's own error is the one to report
            pass
        raise
    finally:
        if budget is not None:
            budget.close()
    # The marker goes last: a prefix without it is never read as a checkpoint.
    files = sorted({*weight_map.values(), MANIFEST_FILE})
    loc.child(COMMIT_MARKER).write_bytes(_json_bytes({"files": files}))


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")


def delete_checkpoint(loc: Location) -> None:
    """Remove a checkpoint prefix: ``COMMITTED`` first, then everything else under it."""
    loc.child(COMMIT_MARKER).delete()
    rest: list[Location] = []
    for entry in loc.listdir():
        child = loc.child(entry["base"])
        if entry.get("type") == "directory":
            delete_checkpoint(child)
        else:
            rest.append(child)
    loc.delete_many(rest)


def load_url(
    loc: Location,
    framework: str = "numpy",
    device: Any = None,
    *,
    verify: bool = False,
    format: str | None = None,  # noqa: A002
) -> Any:
    """:func:`weightvault.load` from an object store: every tensor preallocated, then filled by
    ranged reads, ``concurrency`` at a time."""
    import weightvault.api as api

    with open_remote(loc, format=format) as reader:
        if verify:
            result = reader.verify()
            if result.failures:
                raise ChecksumMismatchError("; ".join(result.failures[:3]), path=loc.url)
        if not isinstance(reader, RemoteNativeReader):
            tree = reader.structure()
            if tree is None:
                tree = {name: reader.get(name) for name in reader.keys()}
            return api._materialise(tree, framework, device)
        made: dict[str, Any] = {}
        jobs: list[Any] = []
        for name in reader.keys():
            target = reader.aliases.get(name, name)
            if target in made:
                continue
            info = reader.checked_info(target)  # the shard holds these bytes: safe to allocate
            if info.dtype == STRING:
                made[target] = reader.get(target)
                continue
            made[target] = np.empty(info.shape, dtype=dtype_from_name(info.dtype))
            jobs.extend(reader.read_jobs(target, made[target]))
        run_parallel(jobs, loc.transfer.concurrency)
        if framework == "torch":
            from weightvault.frameworks.torch import from_numpy

            made = {k: (v if v.dtype.kind == "O" else from_numpy(v, device)) for k, v in made.items()}
        return unflatten(reader.manifest["tree"], lambda name: made[reader.aliases.get(name, name)])
