"""Incremental native checkpoint directories: write only the shards that changed since a base.

``save_native(path, state, incremental=True, base=previous_checkpoint_dir)`` (the checkpoint
manager passes its latest committed step) saves a complete, standalone checkpoint directory, but
a shard whose tensors all have the same dtype, shape and checksum as in ``base`` is hard-linked
from ``base`` instead of written (a reflink or a copy where links are refused; see
:meth:`~weightvault.core.shards.ShardDirectory.link_shard`). Every step stays a plain native
directory: stock safetensors readers read each shard, and deleting ``base`` only drops a link
count. See docs/incremental.md for the design and the measurements behind it.

Order of work:

1. the base's manifest is read (a base that is missing, uncommitted or unreadable is no base:
   everything is written);
2. every tensor that exists in the base with the same dtype and shape is hashed (xxh3, the
   manifest's checksum); the others are changed anyway and are not read here;
3. :func:`~weightvault.core.shards.plan_incremental` keeps each base shard whose tensors are all
   unchanged, and packs the rest, tensors that ever changed apart from those that did not;
4. kept shards are checked (the base file lies inside the base, is a regular file and its
   safetensors header lists exactly the planned tensors with the planned dtypes and shapes) and
   linked; a shard that fails the check, or vanished meanwhile, is written instead;
5. the other shards are written as by a full save (checksums from the bytes written), then the
   manifest with an ``"incremental"`` section, the index, ``before_commit``'s files and the
   ``COMMITTED`` marker.

The manifest's ``"incremental"`` section: ``base`` (the directory name linked from, or None),
``nbytes`` and ``written_bytes`` (shard bytes in the checkpoint and really written), and per shard
file ``{"reused_from": name of the checkpoint directory whose save wrote these bytes, or None,
"how": "write" | "link" | "reflink" | "copy", "nbytes", "written_bytes", "volatile"}``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault.core.checksum import checksum
from weightvault.core.safetensors_io import (
    SafetensorsFile,
    TensorDigest,
    TensorSource,
    _checked_bytes,
)
from weightvault.core.shards import (
    BaseShard,
    IncrementalPlan,
    ShardDirectory,
    ShardPlan,
    plan_incremental,
    resolve_shard,
    shard_directory,
)
from weightvault.errors import WeightVaultError

__all__ = [
    "IncrementalBase",
    "IncrementalSave",
    "base_from_manifest",
    "header_matches",
    "plan_save",
    "read_base",
    "reuse_shard",
    "reused_entry",
    "save_directory_incremental",
]

#: how a shard came to be in the new directory, when no byte of it was written
_SHARED = ("link", "reflink")


@dataclass(frozen=True)
class IncrementalBase:
    """The committed checkpoint a save compares against."""

    root: Any  # a Path, or a weightvault.storage.Location (object stores: #17)
    rows: dict[str, dict[str, Any]]
    shards: list[BaseShard]
    origin: dict[str, str]  # base file -> the directory whose save wrote its bytes


def read_base(base: str | os.PathLike[str] | None) -> IncrementalBase | None:
    """The base checkpoint's tensors and shards, or None when there is no usable base."""
    if base is None:
        return None
    from weightvault.formats.native import NativeReader

    root = Path(base)
    try:
        reader = NativeReader(root)
    except (WeightVaultError, OSError):
        return None  # gone, uncommitted or corrupt: this save writes everything
    try:
        return base_from_manifest(root, reader.manifest)
    finally:
        reader.close()


def base_from_manifest(root: Any, manifest: dict[str, Any]) -> IncrementalBase:
    """The base as a save plans against it, from its (parsed, validated) manifest. ``root`` is
    the base's directory or prefix; only its ``name`` is used here."""
    rows = manifest["tensors"]
    section = manifest.get("incremental")
    info = section.get("shards") if isinstance(section, dict) else None
    info = info if isinstance(info, dict) else {}
    by_file: dict[str, list[str]] = {}
    for name, row in rows.items():
        by_file.setdefault(row.get("file", ""), []).append(name)
    shards, origin = [], {}
    for file, names in by_file.items():
        meta = info.get(file) if isinstance(info.get(file), dict) else {}
        shards.append(BaseShard(file, tuple(names), meta.get("volatile") is True))
        came_from = meta.get("reused_from")
        origin[file] = came_from if isinstance(came_from, str) and came_from else root.name
    return IncrementalBase(root, rows, shards, origin)


def _same_layout(row: dict[str, Any], base_row: dict[str, Any] | None) -> bool:
    return base_row is not None and all(
        row.get(key) == base_row.get(key) for key in ("dtype", "shape", "stored_as")
    )


def _prehash(
    sources: list[TensorSource], rows: dict[str, dict[str, Any]], base: IncrementalBase
) -> dict[str, str]:
    """Checksums of the tensors that could be unchanged (same dtype and shape as in the base).

    Read here once; a tensor found unchanged is never read again (its shard is linked)."""
    return {
        src.name: checksum(_checked_bytes(src))
        for src in sources
        if _same_layout(rows[src.name], base.rows.get(src.name))
    }


def header_matches(
    st: SafetensorsFile, names: tuple[str, ...], by_name: Mapping[str, TensorSource]
) -> bool:
    """Does a base shard's own header hold exactly ``names``, with the dtypes and shapes the
    new save has? (The manifest said so; the shard itself is what gets reused.)"""
    if set(st.entries) != set(names):
        return False
    return all(
        st.entries[n].dtype == by_name[n].dtype and st.entries[n].shape == by_name[n].shape
        for n in names
    )


def _linkable(
    base: IncrementalBase, file: str, names: tuple[str, ...], by_name: dict[str, TensorSource]
) -> str | None:
    """The base shard's real path if its own header holds exactly ``names`` as planned."""
    try:
        full = os.path.realpath(resolve_shard(base.root, file, path=base.root, tensor=None))
        st = SafetensorsFile(full)
    except (WeightVaultError, OSError):
        return None
    try:
        return full if header_matches(st, names, by_name) else None
    finally:
        st.close()


def reuse_shard(
    d: ShardDirectory,
    base: IncrementalBase,
    base_file: str,
    file: str,
    names: tuple[str, ...],
    by_name: dict[str, TensorSource],
) -> dict[str, Any] | None:
    """Put ``base_file`` of the base into ``d`` as ``file`` (link, reflink or copy) when its own
    header holds exactly ``names`` as planned; the shard's ``"incremental"`` entry (without
    ``volatile``), or None when it must be written instead (check failed, or the file vanished
    since). Shared by the single-process and the distributed incremental saves."""
    full = _linkable(base, base_file, names, by_name)
    if full is None:
        return None
    try:
        how = d.link_shard(file, full)
    except FileNotFoundError:  # deleted since the check (by hand): write it
        return None
    return reused_entry(base, base_file, how, os.stat(d.root / file).st_size)


def reused_entry(
    base: IncrementalBase, base_file: str, how: str, size: int, *, server_side: bool = False
) -> dict[str, Any]:
    """The ``"incremental"`` entry of a shard taken over from the base's ``base_file``. A local
    ``copy`` writes the bytes again; a ``server_side`` copy (an object store's CopyObject) sends
    none of them from here."""
    return {
        "reused_from": base.origin.get(base_file, base.root.name),
        "how": how,
        "nbytes": size,
        "written_bytes": 0 if how in _SHARED or server_side else size,
    }


@dataclass
class IncrementalSave:
    """What an incremental save of ``sources`` against ``base`` does: the shard plan, which new
    shards are taken over from which base file, and the checksums hashed on the way."""

    base: IncrementalBase | None
    inc: IncrementalPlan
    sums: dict[str, str]
    by_name: dict[str, TensorSource]
    #: file -> the manifest section's entry, filled in as shards are reused or written
    shard_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def plan(self) -> ShardPlan:
        return self.inc.plan

    def tensors_of(self, file: str) -> tuple[str, ...]:
        return dict(self.inc.plan.shards)[file]

    def reused(self, file: str, entry: dict[str, Any], rows: dict[str, Any]) -> None:
        """``file`` was taken over from the base (``entry``: :func:`reused_entry`)."""
        for name in self.tensors_of(file):
            rows[name]["checksum"] = self.sums[name]  # hashed before planning; never read again
        self.shard_info[file] = entry

    def written(self, file: str, size: int) -> None:
        self.shard_info[file] = {
            "reused_from": None, "how": "write", "nbytes": size, "written_bytes": size,
        }  # fmt: skip

    def finish_manifest(self, manifest: dict[str, Any]) -> dict[str, str]:
        """Point the rows at their shards and add the ``"incremental"`` section; returns the
        index's weight map."""
        plan = self.inc.plan
        for file in plan.files:
            self.shard_info[file]["volatile"] = file in self.inc.volatile
        weight_map = plan.tensor_to_filename
        for name, shard in weight_map.items():
            manifest["tensors"][name]["file"] = shard
        ordered = {file: self.shard_info[file] for file in plan.files}
        manifest["incremental"] = {
            "base": None if self.base is None else self.base.root.name,
            "nbytes": sum(i["nbytes"] for i in ordered.values()),
            "written_bytes": sum(i["written_bytes"] for i in ordered.values()),
            "shards": ordered,
        }
        return weight_map


def plan_save(
    sources: list[TensorSource],
    rows: dict[str, dict[str, Any]],
    shard_size: int,
    base: IncrementalBase | None,
) -> IncrementalSave:
    """Hash what could be unchanged, then plan the shards against ``base`` (local directories
    and object stores alike)."""
    sums = _prehash(sources, rows, base) if base is not None else {}

    def unchanged(name: str) -> bool:
        base_row = base.rows.get(name) if base is not None else None
        return (
            name in sums
            and base_row is not None
            and _same_layout(rows[name], base_row)
            and base_row.get("checksum") == sums[name]
        )

    inc = plan_incremental(
        sources, shard_size, base=None if base is None else base.shards, unchanged=unchanged
    )
    return IncrementalSave(base, inc, sums, {src.name: src for src in sources})


def save_directory_incremental(
    path: Path,
    sources: list[TensorSource],
    manifest: dict[str, Any],
    shard_size: int,
    fsync: bool,
    hook: Callable[[TensorSource], TensorDigest],
    before_commit: Callable[[int], Mapping[str, bytes]] | None,
    base_dir: str | os.PathLike[str] | None,
    stats: dict[str, Any] | None,
) -> None:
    from weightvault.formats.native import COMMIT_MARKER, INDEX_FILE, MANIFEST_FILE, _json_bytes

    rows: dict[str, dict[str, Any]] = manifest["tensors"]
    job = plan_save(sources, rows, shard_size, read_base(base_dir))
    base, plan = job.base, job.plan
    with shard_directory(path, fsync=fsync) as d:
        to_write = [f for f in plan.files if f not in job.inc.reused]
        for file, base_file in job.inc.reused.items():
            assert base is not None  # reuse needs a base
            entry = reuse_shard(d, base, base_file, file, job.tensors_of(file), job.by_name)
            if entry is None:
                to_write.append(file)
                continue
            job.reused(file, entry, rows)
        written = set(to_write)
        d.write_shards(
            sources, plan, metadata=lambda shard: {"format": "pt"}, on_tensor=hook, only=written
        )
        for file in written:
            job.written(file, os.stat(d.root / file).st_size)
        weight_map = job.finish_manifest(manifest)
        d.write_file(MANIFEST_FILE, _json_bytes(manifest))
        index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map}
        d.write_file(INDEX_FILE, _json_bytes(index))
        marker = _json_bytes({"files": sorted({*plan.files, MANIFEST_FILE})})
        if stats is not None:
            stats["written_bytes"] = d.new_nbytes + len(marker)
            stats["reused_bytes"] = d.nbytes - d.new_nbytes
        for name, data in (before_commit(d.nbytes + len(marker)) if before_commit else {}).items():
            d.write_file(name, data)
        d.commit(COMMIT_MARKER, marker)
