"""Incremental distributed saves: each rank writes only the chunks that changed since the base.

A :class:`~weightvault.checkpoint.manager.CheckpointManager` with ``incremental=True`` in a
torch.distributed job (``frameworks/torch_distributed.save_distributed``) hands every rank a
:class:`RankIncremental` made from the newest committed step. Torch-free: the ranks' records are
:class:`~weightvault.core.safetensors_io.TensorSource` objects named ``tensor@offsets`` (a DTensor's
local chunk) or ``tensor`` (a plain tensor, rank 0).

Per rank, as the single-process incremental save (formats/native_incremental.py) does per process:

1. the base's manifest is read; it is a base for this rank only when it was saved by the same
   number of ranks (``world_size``); its records of this rank are the chunks whose ``rank`` is
   this one (and, on rank 0, the plain tensors), its shards the files holding them;
2. a record is *unchanged* when the base has the same record (same tensor name, same global dtype
   and shape, same chunk offsets and sizes) with the same xxh3 checksum: records with the same
   layout are hashed first, the others have changed anyway (a new mesh or world size changes
   every chunk: nothing is reused, everything is written);
3. :func:`~weightvault.core.shards.plan_incremental` plans the rank's files with the rank's file
   name pattern: a base file whose records are all unchanged is kept, the rest is packed into
   *stable* files (unchanged records of broken-up files) and *volatile* ones (records that changed
   at some step), so a frozen backbone's chunks end up in files of their own after one step;
4. kept files are checked and taken over by the rank's directory object
   (``d.reuse_shards``): on a local disk :class:`LinkingDirectory` hard-links (reflinks,
   copies) them with :func:`~weightvault.formats.native_incremental.reuse_shard`; in an
   object-store prefix :class:`~weightvault.storage.distributed.PrefixDirectory` has the store
   copy them server-side (:func:`~weightvault.storage.incremental.copy_shards`: the header
   checked with a ranged GET, an ETag-conditional ``CopyObject``); the rest is written
   (uploaded);
5. the rank reports per file ``reused_from``/``how``/``nbytes``/``written_bytes``/``volatile``
   with its chunk list; rank 0 merges them into the manifest's ``"incremental"`` section
   (:func:`merge_sections`), the same section a single-process incremental save writes.

Every step stays a complete, standalone directory (or prefix): links are inodes, not paths,
and a server-side copy is an object of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault.core.checksum import checksum
from weightvault.core.safetensors_io import TensorDigest, TensorSource, _checked_bytes
from weightvault.core.shards import BaseShard, ShardDirectory, ShardPlan, plan_incremental
from weightvault.errors import WeightVaultError
from weightvault.formats.native_incremental import IncrementalBase, reuse_shard

__all__ = [
    "LinkingDirectory",
    "RankIncremental",
    "Record",
    "merge_sections",
    "rank_incremental",
    "write_rank_incremental",
]


@dataclass(frozen=True)
class Record:
    """What makes a rank's record the same record as in the base: the tensor's global dtype and
    shape, and (for a chunk) its global offsets; the local shape is the source's."""

    dtype: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...] | None  # None: a plain tensor, stored whole


@dataclass
class RankIncremental:
    """One rank's incremental save: its base (None: nothing to compare with, write everything)."""

    base: IncrementalBase | None
    layout: dict[str, Record] = field(default_factory=dict)  # base record -> its layout

    @property
    def base_name(self) -> str | None:
        return None if self.base is None else self.base.root.name


def rank_incremental(base_dir: Any, rank: int, world: int) -> RankIncremental:
    """Read the base's manifest for ``rank`` of ``world``; an unusable base (missing,
    uncommitted, unreadable, or saved by another number of ranks) gives a base of None.
    ``base_dir``: a local directory, or an object-store prefix (a
    :class:`~weightvault.storage.Location` or URL: its manifest is read with one GET)."""
    if base_dir is None:
        return RankIncremental(None)
    found = _read_manifest(base_dir)
    if found is None:
        return RankIncremental(None)  # gone, uncommitted or corrupt: this save writes everything
    root, manifest = found
    if manifest.get("world_size") != world or not isinstance(manifest.get("tensors"), dict):
        return RankIncremental(None)  # another world size: every chunk differs
    try:
        return _rank_base(root, manifest, rank)
    except (TypeError, ValueError, KeyError, AttributeError):
        return RankIncremental(None)  # a manifest this save cannot compare with: write all


def _read_manifest(base_dir: Any) -> tuple[Any, dict[str, Any]] | None:
    """The committed base's root (a Path or a Location) and manifest, or None."""
    from weightvault.storage.location import is_url

    if is_url(base_dir):
        from weightvault.storage import location
        from weightvault.storage.reader import RemoteNativeReader

        try:
            loc = location(base_dir)
            return loc, RemoteNativeReader(loc, single=False).manifest
        except (WeightVaultError, OSError):
            return None
    from weightvault.formats.native import NativeReader

    root = Path(base_dir)
    try:
        reader = NativeReader(root)
    except (WeightVaultError, OSError):
        return None
    try:
        return root, reader.manifest
    finally:
        reader.close()


def _rank_base(root: Any, manifest: dict[str, Any], rank: int) -> RankIncremental:
    rows: dict[str, dict[str, Any]] = {}  # record -> {"dtype", "shape", "checksum", "file"}
    layout: dict[str, Record] = {}
    for name, row in manifest["tensors"].items():
        dtype, shape = str(row["dtype"]), tuple(int(n) for n in row["shape"])
        if "chunks" in row:
            for chunk in row["chunks"]:
                if chunk.get("rank") != rank:
                    continue
                key = str(chunk["key"])
                rows[key] = {
                    "dtype": dtype, "shape": [int(n) for n in chunk["sizes"]],
                    "checksum": chunk.get("checksum"), "file": str(chunk["file"]),
                }  # fmt: skip
                layout[key] = Record(dtype, shape, tuple(int(n) for n in chunk["offsets"]))
        elif rank == 0 and "file" in row:  # plain tensors: rank 0 writes them
            rows[name] = {
                "dtype": dtype, "shape": list(shape), "checksum": row.get("checksum"),
                "file": str(row["file"]),
            }  # fmt: skip
            layout[name] = Record(dtype, shape, None)
    section = manifest.get("incremental")
    info = section.get("shards") if isinstance(section, dict) else None
    info = info if isinstance(info, dict) else {}
    by_file: dict[str, list[str]] = {}
    for key, row in rows.items():
        by_file.setdefault(row["file"], []).append(key)
    shards, origin = [], {}
    for file, keys in by_file.items():
        meta = info.get(file) if isinstance(info.get(file), dict) else {}
        shards.append(BaseShard(file, tuple(keys), meta.get("volatile") is True))
        came_from = meta.get("reused_from")
        origin[file] = came_from if isinstance(came_from, str) and came_from else root.name
    return RankIncremental(IncrementalBase(root, rows, shards, origin), layout)


def _same_record(src: TensorSource, record: Record, inc: RankIncremental) -> bool:
    """The base holds the same record: same global dtype/shape, same offsets, same local shape."""
    assert inc.base is not None
    base_row = inc.base.rows.get(src.name)
    return (
        base_row is not None
        and inc.layout.get(src.name) == record
        and base_row["dtype"] == src.dtype
        and tuple(base_row["shape"]) == tuple(src.shape)
    )


class LinkingDirectory(ShardDirectory):
    """A rank's local (temporary) checkpoint directory as :func:`write_rank_incremental` uses
    it: a file taken over from the base is hard-linked (reflinked, copied). Its object-store
    counterpart, :class:`~weightvault.storage.distributed.PrefixDirectory`, copies server-side;
    both answer ``reuse_shards`` and ``file_size``."""

    def reuse_shards(
        self,
        base: IncrementalBase,
        reused: Mapping[str, str],
        names_of: Callable[[str], tuple[str, ...]],
        by_name: dict[str, TensorSource],
    ) -> dict[str, dict[str, Any]]:
        """Link each ``reused`` base file (new file -> base file) whose own header holds
        ``names_of(file)`` as planned; the ``"incremental"`` entries of those taken over (the
        others are left out: the caller writes them)."""
        entries = {}
        for file, base_file in reused.items():
            entry = reuse_shard(self, base, base_file, file, names_of(file), by_name)
            if entry is not None:
                entries[file] = entry
        return entries

    def file_size(self, file: str) -> int:
        return os.stat(self.root / file).st_size


def write_rank_incremental(
    d: Any,
    inc: RankIncremental,
    sources: Sequence[TensorSource],
    records: Mapping[str, Record],
    shard_size: int,
    pattern: str,
    metadata: Callable[[str], dict[str, str]],
    on_tensor: Callable[[TensorSource], TensorDigest],
    sums: dict[str, str],
) -> tuple[ShardPlan, dict[str, dict[str, Any]]]:
    """Plan, take over (link or copy) and write one rank's files into ``d`` (a
    :class:`LinkingDirectory`, or an object-store prefix's
    :class:`~weightvault.storage.distributed.PrefixDirectory`); returns the plan and the
    per-file ``"incremental"`` entries. ``sums`` gets the checksums of the records in files
    taken over (the written ones get theirs from ``on_tensor``, from the bytes written)."""
    base = inc.base
    hashed: dict[str, str] = {}
    if base is not None:  # read once; a record found unchanged is never read again
        hashed = {
            src.name: checksum(_checked_bytes(src))
            for src in sources
            if _same_record(src, records[src.name], inc)
        }

    def unchanged(name: str) -> bool:
        return (
            base is not None and name in hashed and base.rows[name].get("checksum") == hashed[name]
        )

    planned = plan_incremental(
        sources, shard_size, base=None if base is None else base.shards, unchanged=unchanged,
        pattern=pattern,
    )  # fmt: skip
    plan, by_name = planned.plan, {src.name: src for src in sources}
    names_of = dict(plan.shards)
    info: dict[str, dict[str, Any]] = {}
    if planned.reused:
        assert base is not None  # reuse needs a base
        info = d.reuse_shards(base, planned.reused, names_of.__getitem__, by_name)
    for file in info:
        sums.update({name: hashed[name] for name in names_of[file]})
    written = {f for f in plan.files if f not in info}  # planned so, or failed to be taken over
    d.write_shards(sources, plan, metadata=metadata, on_tensor=on_tensor, only=written)
    for file in written:
        size = d.file_size(file)
        info[file] = {"reused_from": None, "how": "write", "nbytes": size, "written_bytes": size}
    for file in plan.files:
        info[file]["volatile"] = file in planned.volatile
    return plan, {file: info[file] for file in plan.files}


def merge_sections(reports: Sequence[Mapping[str, Any]], base_name: str | None) -> dict[str, Any]:
    """The manifest's ``"incremental"`` section from every rank's report (rank order)."""
    shards: dict[str, dict[str, Any]] = {}
    for report in reports:
        shards.update(report.get("incremental") or {})
    return {
        "base": base_name,
        "nbytes": sum(i["nbytes"] for i in shards.values()),
        "written_bytes": sum(i["written_bytes"] for i in shards.values()),
        "shards": shards,
    }
