"""Distributed checkpoints on torch.distributed: every rank writes its own chunks, any world size
reads them back.

:func:`save_distributed` is what ``weightvault.save`` and ``CheckpointManager.save`` run when they
are called on every rank of a process group (``process_group=`` given, or torch.distributed
initialised and the state holding DTensors):

1. rank 0 opens the checkpoint directory under its temporary name
   (:func:`weightvault.core.io.atomic_dir`) and broadcasts that name;
2. every rank writes the chunks it owns into its own shard files,
   ``rank-RRRRR-of-WWWWW-KKKKK-of-NNNNN.safetensors`` (fsynced): for a DTensor its local shard,
   unless another rank holds the same chunk (on a ``Replicate`` mesh dimension only coordinate 0
   writes); plain tensors (replicated by definition) and the non-tensor state only on rank 0. No
   tensor data goes to rank 0;
3. a ``monitored_barrier`` confirms every rank's files are durable, then the ranks' small chunk
   lists (global offsets, sizes, file, record, byte range, xxh3) go to rank 0 with
   ``gather_object``;
4. rank 0 writes ``manifest.json``, the index, then ``COMMITTED``, last, and renames the directory
   into place; a final broadcast tells every rank whether the commit happened.

The collectives run on a gloo group made with the save's ``timeout`` (cached per group), so a rank
that died or hangs mid-save makes the others fail with :class:`CheckpointSaveError` after that
timeout instead of hanging, and the checkpoint under construction is never committed (the
previous one stays as it was).

To a URL (S3, any fsspec filesystem) the same steps run with the object-store target of
:mod:`weightvault.storage.distributed`: no temporary name (no rename there), rank 0 clears the
prefix before the go-ahead, the ranks upload straight into it, and ``COMMITTED``, written last,
is the commit. An incremental save there copies each rank's unchanged files from the base prefix
server-side instead of linking them (:class:`weightvault.storage.distributed.PrefixDirectory`).

:func:`load_distributed` restores into a state of DTensors on any mesh and placement (or plain
tensors): each rank reads, for each tensor, only the byte runs of the stored chunks that overlap
its local shard (:meth:`weightvault.formats.native.NativeReader.read_region`).
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from weightvault.core.chunks import Box
from weightvault.core.io import atomic_dir
from weightvault.core.safetensors_io import TensorSource, _alignment_key, check_tensor_names
from weightvault.core.shards import FlatState, ShardDirectory, plan_shards
from weightvault.core.tensors import to_numpy
from weightvault.core.tree import flatten, name_filter, unflatten
from weightvault.errors import (
    CheckpointSaveError,
    ShapeMismatchError,
    TensorNotFoundError,
    UnsupportedObjectError,
    UnsupportedOperationError,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RANK_SHARD_NAME",
    "Staged",
    "holds_dtensor",
    "job_rank",
    "load_distributed",
    "prepare_group",
    "save_distributed",
    "stage",
    "wants_distributed",
]

#: seconds a rank waits for the others at each step of a save before it gives up
DEFAULT_TIMEOUT = 600.0
#: one rank's shard files (``shard_size`` splits a rank's chunks over several)
RANK_SHARD_NAME = "rank-{rank:05d}-of-{world:05d}-{{index:05d}}-of-{{count:05d}}.safetensors"


# -- when to take this path ------------------------------------------------------------------------


def _is_dtensor(obj: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(obj, DTensor)


def holds_dtensor(obj: Any, depth: int = 0) -> bool:
    """True when nested state ``obj`` holds a DTensor anywhere."""
    if depth > 200:
        return False
    if isinstance(obj, torch.Tensor):
        return _is_dtensor(obj)
    if isinstance(obj, Mapping):
        return any(holds_dtensor(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(holds_dtensor(v, depth + 1) for v in obj)
    return False


def wants_distributed(obj: Any, process_group: Any = None) -> bool:
    """``save`` takes the distributed path: a process group is given, or torch.distributed is
    initialised and the state holds DTensors. Cheap when torch was never imported."""
    if process_group is not None:
        return True
    if "torch.distributed" not in sys.modules:
        return False
    return dist.is_available() and dist.is_initialized() and holds_dtensor(obj)


def job_rank(process_group: Any = None) -> int | None:
    """This process's rank when it runs in a torch.distributed job (``process_group`` given, or
    the default group initialised), else None: a :class:`CheckpointManager` then saves as a
    collective."""
    if process_group is not None:
        return int(dist.get_rank(process_group))
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return None


def prepare_group(process_group: Any = None, timeout: float | None = None) -> None:
    """Make the save's coordination group now, on the calling (main) thread: ``new_group`` is a
    collective of the default group and must not run on a writer thread while training runs
    collectives on the main one (the manager's async saves)."""
    _coord_group(process_group, DEFAULT_TIMEOUT if timeout is None else float(timeout))


# -- the coordination group ------------------------------------------------------------------------

_COORD_GROUPS: dict[tuple[Any, float], Any] = {}


def _coord_group(group: Any, timeout: float) -> Any:
    """A gloo group over ``group``'s ranks whose collectives give up after ``timeout`` seconds.

    Object collectives and ``monitored_barrier`` need gloo (NCCL has neither a monitored barrier
    nor CPU objects); a group of its own also gives the save its own timeout. Made once per
    (group, timeout): ``new_group`` is itself a collective every rank runs in the same order.
    """
    key = (group, timeout)
    if key not in _COORD_GROUPS:
        ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
        _COORD_GROUPS[key] = dist.new_group(
            ranks, timeout=_dt.timedelta(seconds=timeout), backend="gloo"
        )
    return _COORD_GROUPS[key]


def _collective(what: str, rank: int, path: Path, call: Callable[[], Any]) -> Any:
    """Run one collective; a peer that died or timed out becomes a clear CheckpointSaveError."""
    try:
        return call()
    except RuntimeError as exc:  # DistBackendError and gloo's timeouts are RuntimeErrors
        raise CheckpointSaveError(
            f"distributed save: rank {rank} gave up at {what}: {str(exc).strip().splitlines()[0]}; "
            "the checkpoint was not committed (the previous one is intact)",
            path=path,
            hint="a rank died or hangs; see its log. timeout= sets how long ranks wait",
        ) from exc


# -- what this rank writes -------------------------------------------------------------------------


def _local_box(dt: Any) -> Box:
    """The box of the global tensor held by this rank's local shard of DTensor ``dt``."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
    return Box(tuple(int(o) for o in offset), tuple(int(s) for s in shape))


def _writes_chunk(dt: Any, name: str) -> bool:
    """Whether this rank writes its chunk of ``dt``: the ranks that hold the same chunk (those
    differing only on ``Replicate`` mesh dimensions) leave it to the one at coordinate 0."""
    from torch.distributed.tensor import Replicate, Shard

    coord = dt.device_mesh.get_coordinate()
    if coord is None:  # this rank is not on the tensor's mesh
        return False
    for dim, placement in enumerate(dt.placements):
        if isinstance(placement, Replicate):
            if coord[dim] != 0:
                return False
        elif not isinstance(placement, Shard):
            raise UnsupportedObjectError(
                f"DTensor {name} has a {placement} placement; only Shard and Replicate are saved",
                hint="redistribute it (e.g. .redistribute(placements=[Replicate()])) or call "
                ".full_tensor() before saving",
            )
    return True


@dataclass(frozen=True)
class Staged:
    """A DTensor staged in host memory for an async save: its global dtype and shape, and the
    local chunk this rank writes (``box``/``data`` None when another rank writes it)."""

    dtype: str
    shape: tuple[int, ...]
    box: Box | None
    data: np.ndarray | None


def stage(state: Any, rank: int) -> FlatState:
    """Copy what this rank will write to host memory now (the async save's stall): the local
    chunks it owns, and on rank 0 the plain tensors; the write then runs on a writer thread."""
    spec, found = flatten(state)
    tensors, aliases = _ties(found)
    out: dict[str, Any] = {}
    for name, obj in tensors.items():
        if isinstance(obj, torch.Tensor) and _is_dtensor(obj):
            row = _global_row(name, obj)
            box = _local_box(obj)
            writes = _writes_chunk(obj, name) and box.numel > 0
            data = np.array(to_numpy(obj.to_local()), copy=True) if writes else None
            out[name] = Staged(row["dtype"], tuple(row["shape"]), box if writes else None, data)
        elif rank == 0:
            host = obj if isinstance(obj, np.ndarray) else to_numpy(obj)
            out[name] = np.array(host, copy=True)
    return FlatState(spec, out, aliases)


class _Digest:
    def __init__(self, out: dict[str, str], key: str) -> None:
        from weightvault.core.checksum import StreamingChecksum

        self._sum, self._out, self._key = StreamingChecksum(), out, key

    def update(self, chunk: memoryview) -> None:
        self._sum.update(chunk)

    def finish(self) -> None:
        self._out[self._key] = self._sum.value()


def _lazy_source(key: str, tensor: Any) -> TensorSource:
    """A record whose bytes are fetched (a GPU tensor copied to the host) only when its turn to
    be written comes: peak extra host memory is one chunk, not the rank's whole state."""
    from weightvault.core.tensors import describe

    desc = describe(tensor, name=key)
    return TensorSource(key, desc.dtype, tuple(desc.shape), lambda: to_numpy(tensor))


def _data_offsets(sources: list[TensorSource]) -> dict[str, list[int]]:
    """Where each record lands in its file's data section (write_safetensors' order)."""
    pos, out = 0, {}
    for src in sorted(sources, key=_alignment_key):
        out[src.name] = [pos, pos + src.nbytes]
        pos += src.nbytes
    return out


def _write_rank(
    tmp: Path,
    tensors: Mapping[str, Any],
    rank: int,
    world: int,
    shard_size: int,
    fsync: bool,
    incremental: Any = None,
) -> dict[str, Any]:
    """Write this rank's records; return what the manifest needs to know about them.
    ``incremental``: a :class:`~weightvault.formats.distributed_incremental.RankIncremental`
    (link the files whose records are unchanged since its base) or None (write everything)."""
    from weightvault.core.dtypes import is_string_array

    sources: list[TensorSource] = []
    chunked: dict[str, dict[str, Any]] = {}  # name -> {"box": Box, "key": record}
    plain: dict[str, dict[str, Any]] = {}
    for name, obj in tensors.items():
        if isinstance(obj, Staged) or (isinstance(obj, torch.Tensor) and _is_dtensor(obj)):
            if isinstance(obj, Staged):
                if obj.box is None or obj.data is None:
                    continue
                box, local = obj.box, obj.data
            else:
                box = _local_box(obj)
                if not _writes_chunk(obj, name) or box.numel == 0:
                    continue
                local = obj.to_local()
            key = f"{name}@{','.join(map(str, box.offsets))}"
            src = _lazy_source(key, local)
            if src.shape != box.sizes:
                raise ShapeMismatchError(
                    f"local shard is {list(src.shape)}, the placement says {list(box.sizes)}",
                    tensor=name,
                )
            chunked[name] = {"box": box, "key": key, "shape": list(obj.shape)}
            sources.append(src)
        elif rank == 0:  # replicated: written once
            if is_string_array(obj):
                raise UnsupportedObjectError(
                    f"string tensor {name} in a distributed save", hint="save it separately"
                )
            src = _lazy_source(name, obj)
            if src.dtype == "complex128":
                raise UnsupportedObjectError(f"complex128 tensor {name} in a distributed save")
            plain[name] = {"dtype": src.dtype, "shape": list(src.shape)}
            sources.append(src)
    if not sources:  # e.g. a rank whose local shards are all empty: no file at all
        return {"rank": rank, "chunks": {}, "plain": {}, "files": []}
    check_tensor_names(sources, path=tmp)
    pattern = RANK_SHARD_NAME.format(rank=rank, world=world)
    sums: dict[str, str] = {}
    if incremental is None:
        plan = plan_shards(sources, shard_size, pattern=pattern)
        _directory(tmp, fsync).write_shards(
            sources, plan, metadata=lambda f: {"format": "pt", "weightvault.shard": f},
            on_tensor=lambda src: _Digest(sums, src.name),
        )  # fmt: skip
        shard_info = None
    else:  # incremental (formats/distributed_incremental.py): unchanged files are linked
        # (a local directory) or copied server-side (an object-store prefix)
        plan, shard_info = _write_incremental(
            tmp, fsync, incremental, sources, chunked, plain, shard_size, pattern, sums
        )
    files = plan.files
    where = plan.tensor_to_filename
    by_name = {s.name: s for s in sources}
    offsets: dict[str, list[int]] = {}
    for _, names in plan.shards:
        offsets.update(_data_offsets([by_name[n] for n in names]))
    report_chunks = {
        name: {
            "offsets": list(c["box"].offsets), "sizes": list(c["box"].sizes),
            "file": where[c["key"]], "key": c["key"], "data_offsets": offsets[c["key"]],
            "checksum": sums[c["key"]], "rank": rank,
        }
        for name, c in chunked.items()
    }  # fmt: skip
    for name, row in plain.items():
        row.update(file=where[name], checksum=sums[name])
    report = {"rank": rank, "chunks": report_chunks, "plain": plain, "files": files}
    if shard_info is not None:
        report["incremental"] = shard_info
    return report


def _write_incremental(
    tmp: Path, fsync: bool, incremental: Any, sources: list[TensorSource],
    chunked: dict[str, dict[str, Any]], plain: dict[str, dict[str, Any]], shard_size: int,
    pattern: str, sums: dict[str, str],
) -> tuple[Any, dict[str, dict[str, Any]]]:  # fmt: skip
    from weightvault.formats.distributed_incremental import Record, write_rank_incremental

    dtypes = {src.name: src.dtype for src in sources}
    records = {
        c["key"]: Record(dtypes[c["key"]], tuple(c["shape"]), tuple(c["box"].offsets))
        for c in chunked.values()
    }
    records.update({n: Record(r["dtype"], tuple(r["shape"]), None) for n, r in plain.items()})
    d = _directory(tmp, fsync, incremental=True)  # links (local) or server-side copies (URL)
    return write_rank_incremental(
        d, incremental, sources, records, shard_size, pattern,
        metadata=lambda f: {"format": "pt", "weightvault.shard": f},
        on_tensor=lambda src: _Digest(sums, src.name), sums=sums,
    )  # fmt: skip


def _global_row(name: str, obj: Any) -> dict[str, Any]:
    from weightvault.core.dtypes import dtype_name
    from weightvault.frameworks.torch import numpy_dtype

    if isinstance(obj, Staged):
        return {"dtype": obj.dtype, "shape": list(obj.shape)}
    dtype = dtype_name(np.dtype(numpy_dtype(obj.dtype)), tensor=name)
    if dtype == "complex128":
        raise UnsupportedObjectError(f"complex128 DTensor {name} in a distributed save")
    return {"dtype": dtype, "shape": list(obj.shape)}


def _global_rows(tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Global dtype and shape of every DTensor (every rank knows them: no collective needed)."""
    return {
        name: _global_row(name, obj)
        for name, obj in tensors.items()
        if isinstance(obj, Staged) or (isinstance(obj, torch.Tensor) and _is_dtensor(obj))
    }


def _ties(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Tied names: the same DTensor object, or plain tensors sharing storage."""
    from weightvault.core.shards import split_ties

    unique: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    plain = {}
    for name, obj in tensors.items():
        if isinstance(obj, torch.Tensor) and _is_dtensor(obj):
            if id(obj) in first:
                aliases[name] = first[id(obj)]
                continue
            first[id(obj)] = name
            unique[name] = obj
        else:
            plain[name] = obj
    kept, plain_aliases = split_ties(plain)
    unique.update(kept)
    aliases.update(plain_aliases)
    return unique, aliases


def save_distributed(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    shard_size: int | None = None,
    fsync: bool = True,
    process_group: Any = None,
    timeout: float | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    before_commit: Callable[[int], Mapping[str, bytes]] | None = None,
    incremental: bool = False,
    base: str | os.PathLike[str] | None = None,
    stats: dict[str, Any] | None = None,
) -> Path:
    """Save ``obj`` from every rank of ``process_group`` (default: the whole job) as one native
    checkpoint directory; a collective (call it on every rank). Returns ``path``.

    ``timeout`` (seconds, default :data:`DEFAULT_TIMEOUT`) is how long a rank waits for the others
    at each step; then it raises :class:`CheckpointSaveError` and nothing is committed.
    ``before_commit``: as for :func:`weightvault.formats.native.save_native` (rank 0 only).
    ``incremental``/``base``: every rank links its files whose records are unchanged since the
    committed checkpoint ``base`` instead of writing them (formats/distributed_incremental.py);
    to a URL (``base`` a prefix of the same store) the store copies them server-side instead.
    ``stats`` (rank 0) then gets ``written_bytes``, the bytes this save really wrote (uploaded).
    """
    from weightvault.formats.native import (
        CHUNKED_FORMAT_VERSION,
        COMMIT_MARKER,
        DEFAULT_SHARD_SIZE,
        INDEX_FILE,
        MANIFEST_FILE,
        _json_bytes,
        _new_manifest,
        _refuse_foreign_extension,
    )

    target = _target(path, fsync)  # a local directory, or an object-store prefix
    path = target.path
    _refuse_foreign_extension(path)
    if path.name.endswith(".safetensors"):
        raise UnsupportedOperationError(
            "a distributed save writes a directory (one shard file per rank), not one .safetensors",
            path=path,
            hint="save to a directory name, then `weightvault convert DIR model.safetensors`",
        )
    if not (dist.is_available() and dist.is_initialized()):
        raise UnsupportedOperationError("torch.distributed is not initialised", path=path)
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    group = process_group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    coord = _coord_group(group, timeout)
    src0 = dist.get_global_rank(coord, 0)

    if isinstance(obj, FlatState):  # staged by :func:`stage` (an async save)
        spec, tensors, aliases = obj.spec, obj.tensors, dict(obj.aliases)
    else:
        spec, found = flatten(obj, keep=name_filter(include, exclude))
        tensors, aliases = _ties(found)
    globals_ = _global_rows(tensors)
    job = _Job(path, rank, world, coord, src0, timeout)
    inc = _rank_incremental(incremental, base, rank, world)

    if rank != 0:
        tmp = target.at(job.receive_tmp())
        failure, report = _write_reported(tmp, tensors, rank, world, shard_size, fsync, inc)
        job.gather(report)
        status = job.result()
        if failure is not None:
            raise failure
        if status is not None:
            raise CheckpointSaveError(f"rank 0 did not commit the checkpoint: {status}", path=path)
        return path

    def commit(tmp: Path, reports: list[dict[str, Any]]) -> None:
        errors = [r for r in reports if "error" in r]
        if errors:
            raise CheckpointSaveError(
                "; ".join(f"rank {r['rank']} failed: {r['error']}" for r in errors)
                + "; the checkpoint was not committed (the previous one is intact)",
                path=path,
            )
        rows, files, weight_map = _merge(reports, globals_)
        manifest = _new_manifest(rows, aliases, spec, metadata, {"world_size": world})
        if globals_:  # chunked rows: readers of version 1 must refuse, not misread
            manifest["format_version"] = CHUNKED_FORMAT_VERSION
        if inc is not None:
            from weightvault.formats.distributed_incremental import merge_sections

            manifest["incremental"] = merge_sections(reports, inc.base_name)
        d = _directory(tmp, fsync)
        d.nbytes = target.size(tmp, files)
        d.write_file(MANIFEST_FILE, _json_bytes(manifest))
        index = {"metadata": {"total_size": d.nbytes}, "weight_map": weight_map}
        d.write_file(INDEX_FILE, _json_bytes(index))
        marker = _json_bytes({"files": sorted({*files, MANIFEST_FILE})})
        if inc is not None and stats is not None:  # linked files wrote nothing
            stats["written_bytes"] = (
                manifest["incremental"]["written_bytes"] + d.new_nbytes + len(marker)
            )
        for name, data in (before_commit(d.nbytes + len(marker)) if before_commit else {}).items():
            d.write_file(name, data)
        d.commit(COMMIT_MARKER, marker)

    try:
        try:
            with target.begin() as tmp:  # removed on error, committed (renamed) on success
                job.send_tmp(os.fspath(tmp))
                _, report = _write_reported(tmp, tensors, rank, world, shard_size, fsync, inc)
                commit(tmp, job.gather(report))
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
            if not job.broken:  # tell the other ranks, at the step they wait in
                job.result(why) if job.started else job.send_tmp(None, why)
            raise
    except OSError as exc:
        if isinstance(exc, CheckpointSaveError):
            raise
        raise CheckpointSaveError(f"distributed save failed: {exc}", path=path) from exc
    job.result(None)
    return path


# -- where the files go -----------------------------------------------------------------------------


class _LocalTarget:
    """A local directory: rank 0 makes it under a temporary name that every rank writes into, and
    renames it into place after ``COMMITTED`` (:func:`weightvault.core.io.atomic_dir`). An
    object-store prefix is :class:`weightvault.storage.distributed.PrefixTarget`."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path, self.fsync = path, fsync

    def begin(self) -> Any:
        return atomic_dir(self.path, fsync=self.fsync)

    def at(self, where: str) -> Path:
        return Path(where)

    def size(self, where: Path, files: Sequence[str]) -> int:
        return sum((where / f).stat().st_size for f in files)


def _target(path: Any, fsync: bool) -> Any:
    from weightvault.storage.location import is_url, local_path

    if is_url(path):  # object storage: upload straight into the prefix, COMMITTED last
        from weightvault.storage import location
        from weightvault.storage.distributed import PrefixTarget

        return PrefixTarget(location(path))
    return _LocalTarget(Path(local_path(path)), fsync)


def _directory(where: Any, fsync: bool, *, incremental: bool = False) -> Any:
    """What a rank writes its files through: a :class:`ShardDirectory` in the local temporary
    directory (incremental: one that links files from the base), or uploads into the
    object-store prefix (incremental: server-side copies from the base prefix)."""
    if isinstance(where, Path):
        if incremental:
            from weightvault.formats.distributed_incremental import LinkingDirectory

            return LinkingDirectory(where, fsync)
        return ShardDirectory(where, fsync)
    from weightvault.storage.distributed import PrefixDirectory

    return PrefixDirectory(where)


class _Job:
    """The collectives of one save, each turned into CheckpointSaveError on a dead peer."""

    def __init__(self, path: Path, rank: int, world: int, coord: Any, src0: int, timeout: float):
        self.path, self.rank, self.world = path, rank, world
        self.coord, self.src0, self.timeout = coord, src0, timeout
        self.broken = False  # a collective failed: the group cannot be used for this save
        self.started = False  # the temporary directory's name was sent

    def _run(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return _collective(what, self.rank, self.path, call)
        except CheckpointSaveError:
            self.broken = True
            raise

    def _broadcast(self, what: str, box: list[Any]) -> None:
        self._run(what, lambda: dist.broadcast_object_list(box, src=self.src0, group=self.coord))

    def send_tmp(self, tmp: str | None, error: str | None = None) -> None:
        """Rank 0 sends the temporary directory's name, or why it has none."""
        box = [(tmp, error)]
        self._broadcast("the start", box)
        self.started = True

    def receive_tmp(self) -> str:
        box: list[Any] = [None]
        self._broadcast("the start", box)
        tmp, error = box[0]
        if error is not None:
            raise CheckpointSaveError(f"rank 0 could not start the save: {error}", path=self.path)
        return str(tmp)

    def gather(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        # every rank's files are durable (create_file fsyncs them) before anyone goes on; the
        # monitored barrier names the ranks that did not arrive
        timeout = _dt.timedelta(seconds=self.timeout)
        self._run(
            "the barrier after writing",
            lambda: dist.monitored_barrier(self.coord, timeout=timeout, wait_all_ranks=True),
        )
        out: list[Any] = [None] * self.world if self.rank == 0 else []
        dst = self.src0
        self._run(
            "gathering the chunk lists",
            lambda: dist.gather_object(
                report, out if self.rank == 0 else None, dst=dst, group=self.coord
            ),
        )
        return out

    def result(self, status: str | None = None) -> str | None:
        """Rank 0 tells every rank whether it committed (None) or why not."""
        box: list[Any] = [status]
        self._broadcast("the commit", box)
        return box[0]


def _rank_incremental(incremental: bool, base: Any, rank: int, world: int) -> Any:
    if not incremental:
        return None
    from weightvault.formats.distributed_incremental import rank_incremental

    return rank_incremental(base, rank, world)


def _write_reported(
    tmp: Path, tensors: Mapping[str, Any], rank: int, world: int, shard_size: int, fsync: bool,
    incremental: Any = None,
) -> tuple[Exception | None, dict[str, Any]]:  # fmt: skip
    """Write this rank's records; a failure is reported to rank 0 rather than left to hang it."""
    try:
        return None, _write_rank(tmp, tensors, rank, world, shard_size, fsync, incremental)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0; re-raised by the caller
        return exc, {"rank": rank, "error": f"{type(exc).__name__}: {exc}"}


def _merge(
    reports: list[dict[str, Any]], globals_: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], list[str], dict[str, str]]:
    """The manifest's rows from every rank's report: chunk lists sorted by global offset."""
    rows: dict[str, dict[str, Any]] = {n: {**g, "chunks": []} for n, g in globals_.items()}
    files: list[str] = []
    weight_map: dict[str, str] = {}
    for report in reports:
        files += report["files"]
        for name, chunk in report["chunks"].items():
            rows[name]["chunks"].append(chunk)
            weight_map[chunk["key"]] = chunk["file"]
        for name, row in report["plain"].items():
            rows[name] = row
            weight_map[name] = row["file"]
    for row in rows.values():
        if "chunks" in row:
            row["chunks"].sort(key=lambda c: c["offsets"])
    return rows, files, weight_map


# -- load ------------------------------------------------------------------------------------------


def load_distributed(
    path: str | os.PathLike[str],
    target: Any,
    *,
    verify: bool = False,
    stats: dict[str, int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Restore a checkpoint into ``target``, nested state shaped like the saved one whose tensors
    (DTensors on any mesh and placement, or plain tensors) are filled in place; each rank reads
    only the byte ranges of the stored chunks that overlap its local shards. Returns the saved
    structure with ``target``'s tensors in it (non-tensor leaves as saved; a tensor ``target``
    lacks is read whole). Not a collective: every rank reads on its own.

    ``verify``: check every checksum of the checkpoint too. ``stats``: a dict that gets
    ``bytes_read``, the tensor bytes this rank read. ``path`` may be a URL (``storage_options``
    as for :func:`weightvault.load`): ranged reads of just those bytes.
    """
    from weightvault.frameworks.torch import from_numpy

    _, wanted = flatten(target)
    with _open_reader(path, storage_options) as reader:
        filled: dict[str, Any] = {}
        stored = set(reader.keys())
        for name, obj in wanted.items():
            if name not in stored:
                raise TensorNotFoundError(
                    "the checkpoint has no such tensor", path=path, tensor=name
                )
            info = reader.checked_info(name)
            if tuple(obj.shape) != tuple(info.shape):
                raise ShapeMismatchError(
                    f"checkpoint shape {list(info.shape)} != target {list(obj.shape)}",
                    path=path,
                    tensor=name,
                )
            if _is_dtensor(obj):
                local = obj.to_local()
                box = _local_box(obj)
                if box.numel:
                    _fill(reader, name, box, local, info.dtype, path)
            else:
                whole = Box((0,) * len(info.shape), tuple(info.shape))
                _fill(reader, name, whole, obj, info.dtype, path)
            filled[name] = obj
        if stats is not None:
            stats["bytes_read"] = reader.bytes_read
        if verify:
            _verify_read(reader, path)

        def leaf(name: str) -> Any:
            return filled[name] if name in filled else from_numpy(np.array(reader.get(name)))

        return unflatten(
            reader.manifest["tree"],
            lambda n: filled[n] if n in filled else leaf(reader.aliases.get(n, n)),
        )


def _open_reader(path: Any, storage_options: Mapping[str, Any] | None) -> Any:
    from weightvault.formats.native import NativeReader
    from weightvault.storage.location import is_url, local_path

    if is_url(path):  # object storage: ranged reads
        from weightvault.storage.distributed import open_checkpoint

        return open_checkpoint(path, storage_options)
    return NativeReader(local_path(path))


def _fill(reader: Any, name: str, box: Box, dest: torch.Tensor, dtype: str, path: Any) -> None:
    from weightvault.frameworks.torch import from_numpy, numpy_dtype

    if np.dtype(numpy_dtype(dest.dtype)) != np.dtype(_np_dtype(dtype)):
        raise ShapeMismatchError(
            f"checkpoint dtype {dtype} != target {dest.dtype}", path=path, tensor=name
        )
    region = reader.read_region(name, box.offsets, box.sizes)
    with torch.no_grad():
        dest.copy_(from_numpy(region).reshape(dest.shape))


def _np_dtype(name: str) -> np.dtype:
    from weightvault.core.dtypes import dtype_from_name

    return np.dtype(dtype_from_name(name))


def _verify_read(reader: Any, path: Any) -> None:
    result = reader.verify()
    if result.failures:
        from weightvault.errors import ChecksumMismatchError

        raise ChecksumMismatchError("; ".join(result.failures[:3]), path=path)
