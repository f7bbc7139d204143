"""A torch.distributed.checkpoint (DCP) storage backend that writes and reads weightvault files.

``dcp.save(state, storage_writer=WeightVaultWriter(dir))`` (or ``dcp.async_save``) has every rank
write the chunks it owns to its own safetensors file, ``rank-NNNNN.safetensors``, with no pickle
anywhere: tensors are stored as safetensors records, and a non-tensor entry (an optimizer's
``lr``) as the ``uint8`` record of the bytes DCP's planner hands over. Rank 0 then writes
``manifest.json`` (every entry: dtype, global shape, and for each chunk its offsets, sizes, file,
record and xxh3 checksum; format_version 2 with ``"layout": "torch_dcp"``) and, last, the
``COMMITTED`` marker, so a reader never sees a half-written checkpoint as complete.

``dcp.load(state, storage_reader=WeightVaultReader(dir))`` loads it back at any world size: DCP's
planner asks for the pieces of the chunks each rank needs, and the reader cuts them out of the
mmapped shard files. The reader also reads what torch's own ``FileSystemWriter`` wrote (through
the restricted unpickler; see :mod:`weightvault.formats.torch_dcp`), and ``weightvault.open(dir)``
reads this layout with the tensors assembled whole (``weightvault convert`` consolidates it).

Non-tensor entries are ``torch.save`` bytes made by DCP's planner, and on ``dcp.load`` DCP's
planner (not weightvault) turns them back into objects with ``torch.load(weights_only=False)``:
load only checkpoints you trust with ``dcp.load``; ``weightvault.open`` never unpickles them.

:func:`save` and :func:`load` wrap the usual recipe for a model and its optimizer
(``get_state_dict`` / ``set_state_dict``, which work for FSDP2, DDP and plain modules alike).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from weightvault.core.checksum import StreamingChecksum
from weightvault.core.io import atomic_write
from weightvault.core.safetensors_io import TensorSource, write_safetensors
from weightvault.errors import (
    CheckpointNotFoundError,
    InvalidHeaderError,
    UnsupportedOperationError,
)
from weightvault.formats.torch_dcp import (
    COMMIT_MARKER,
    MANIFEST_FILE,
    MANIFEST_LAYOUT,
    MANIFEST_VERSION,
    METADATA_FILE,
    RANK_FILE,
    TorchDCPReader,
)
from weightvault.frameworks.torch import from_numpy as _from_numpy
from weightvault.frameworks.torch import tensor_to_numpy, torch_dtype

__all__ = ["WeightVaultReader", "WeightVaultWriter", "load", "save"]

_RANK_FILE_RE = re.compile(r"^rank-\d{5,}\.safetensors$")


def _key(index: MetadataIndex) -> str:
    """The safetensors record name of one chunk (unique per (fqn, offsets) within a save)."""
    if index.offset is None:
        return f"{index.fqn}@bytes"
    return f"{index.fqn}@{','.join(str(o) for o in index.offset)}"


class _Digest:
    def __init__(self, out: dict[str, str], key: str) -> None:
        self._sum, self._out, self._key = StreamingChecksum(), out, key

    def update(self, chunk: memoryview) -> None:
        self._sum.update(chunk)

    def finish(self) -> None:
        self._out[self._key] = self._sum.value()


class WeightVaultWriter(StorageWriter):
    """``dcp.save(..., storage_writer=WeightVaultWriter(path))``: each rank writes its chunks to
    ``rank-NNNNN.safetensors``, rank 0 writes ``manifest.json`` and then ``COMMITTED``.

    Args:
        path: the checkpoint directory (or pass ``checkpoint_id=`` to ``dcp.save``).
        fsync: make every file durable before the marker (default True).
        metadata: JSON-able user metadata stored in the manifest.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        fsync: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self.user_metadata = dict(metadata or {})
        json.dumps(self.user_metadata, allow_nan=False)  # refuse what cannot be stored, now
        self.is_coordinator = True
        self.save_id = uuid.uuid4().hex

    def _root(self) -> Path:
        if self.path is None:
            raise ValueError(
                "WeightVaultWriter needs a path (or dcp.save(..., checkpoint_id=path))"
            )
        return self.path

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        root = self._root()
        if is_coordinator:
            root.mkdir(parents=True, exist_ok=True)
            # Saving over a checkpoint: it stops being complete before any of its files change.
            # Every rank writes only after the plan collective, which follows this on rank 0.
            (root / COMMIT_MARKER).unlink(missing_ok=True)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # plans[i] is rank i's: each rank learns the name of its own file
        return [
            dataclasses.replace(p, storage_data=RANK_FILE.format(rank=i))
            for i, p in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        root = self._root()
        root.mkdir(parents=True, exist_ok=True)
        rel = plan.storage_data
        if not isinstance(rel, str) or not _RANK_FILE_RE.match(rel):
            raise UnsupportedOperationError(
                f"the save plan names file {rel!r}, not a rank file", path=root
            )
        sources: list[TensorSource] = []
        results: list[WriteResult] = []
        for item in plan.items:
            key = _key(item.index)
            if item.type == WriteItemType.BYTE_IO:
                data = planner.resolve_data(item)
                raw = np.frombuffer(data.getbuffer(), np.uint8).copy()  # type: ignore[union-attr]
                sources.append(TensorSource(key, "uint8", (raw.size,), _constant(raw)))
                size = raw.size
            else:
                # resolved (and copied off the GPU) only when the writer reaches it: one chunk at
                # a time in memory, not the whole plan
                td = item.tensor_data
                assert td is not None
                dtype = _dtype_name_torch(td.properties.dtype)
                src = TensorSource(key, dtype, tuple(td.chunk.sizes), _resolver(planner, item))
                sources.append(src)
                size = src.nbytes
            results.append(
                WriteResult(
                    index=item.index, size_in_bytes=size, storage_data={"file": rel, "key": key}
                )
            )
        sums: dict[str, str] = {}
        with atomic_write(root / rel, fsync=self.fsync) as f:
            write_safetensors(
                f,
                sources,
                {"weightvault.dcp": "chunks of one rank"},
                on_tensor=lambda src: _Digest(sums, src.name),
            )
        for result in results:
            result.storage_data["checksum"] = sums[result.storage_data["key"]]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        root = self._root()
        where = {r.index: r.storage_data for rank in results for r in rank}
        entries: dict[str, Any] = {}
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, BytesStorageMetadata):
                entries[fqn] = {"type": "bytes", **where[MetadataIndex(fqn)]}
                continue
            chunks = []
            for chunk in md.chunks:
                stored = where[MetadataIndex(fqn, chunk.offsets)]
                chunks.append(
                    {"offsets": list(chunk.offsets), "sizes": list(chunk.sizes), **stored}
                )
            entries[fqn] = {
                "type": "tensor",
                "dtype": _dtype_name_torch(md.properties.dtype),
                "shape": list(md.size),
                "chunks": chunks,
            }
        from weightvault import __version__

        manifest = {
            "format": "weightvault",
            "format_version": MANIFEST_VERSION,
            "layout": MANIFEST_LAYOUT,
            "library_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "world_size": len(results),
            "save_id": self.save_id,
            "metadata": self.user_metadata,
            "planner_data": _jsonable_planner_data(metadata.planner_data),
            "entries": entries,
        }
        with atomic_write(root / MANIFEST_FILE, fsync=self.fsync) as f:
            f.write(json.dumps(manifest, ensure_ascii=False, allow_nan=False, indent=1).encode())
        files = {f"{RANK_FILE.format(rank=i)}" for i in range(len(results))}
        for name in os.listdir(root):  # rank files of an earlier save by more ranks
            if _RANK_FILE_RE.match(name) and name not in files:
                (root / name).unlink()
        with atomic_write(root / COMMIT_MARKER, fsync=self.fsync) as f:
            f.write(self.save_id.encode())

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))


def _constant(arr: np.ndarray) -> Callable[[], np.ndarray]:
    """A ``TensorSource.fetch`` that returns ``arr`` (bound now, not at call time)."""
    return lambda: arr


def _resolver(planner: SavePlanner, item: Any) -> Callable[[], np.ndarray]:
    """A ``TensorSource.fetch`` that asks the planner for the chunk when it is written."""
    return lambda: tensor_to_numpy(torch.as_tensor(planner.resolve_data(item)).detach())


def _dtype_name(arr: np.ndarray) -> str:
    from weightvault.core.dtypes import dtype_name

    return dtype_name(arr.dtype)


def _dtype_name_torch(dt: torch.dtype) -> str:
    from weightvault.frameworks.torch import numpy_dtype

    return _dtype_name(np.empty(0, numpy_dtype(dt)))


def _jsonable_planner_data(data: Any) -> Any:
    """DCP's planner data (fqn -> path of keys) as JSON, when it is that; else dropped."""
    if not isinstance(data, dict):
        return None
    out = {}
    for fqn, path in data.items():
        if (
            not isinstance(fqn, str)
            or not isinstance(path, (tuple, list))
            or not all(isinstance(p, (str, int)) for p in path)
        ):
            return None
        out[fqn] = list(path)
    return out


class WeightVaultReader(StorageReader):
    """``dcp.load(state, storage_reader=WeightVaultReader(path))``: loads a checkpoint written by
    :class:`WeightVaultWriter` (or torch's FileSystemWriter) at any world size.

    Args:
        path: the checkpoint directory (or pass ``checkpoint_id=`` to ``dcp.load``).
        verify: check each chunk's xxh3 checksum as it is read (weightvault layout; default True).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.verify = verify
        self._reader: TorchDCPReader | None = None
        self._storage: dict[MetadataIndex, tuple[str, int | None]] = {}

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _open(self) -> TorchDCPReader:
        if self._reader is None:
            if self.path is None:
                raise ValueError(
                    "WeightVaultReader needs a path (or dcp.load(..., checkpoint_id=path))"
                )
            if not self.path.is_dir():
                raise CheckpointNotFoundError("no such checkpoint directory", path=self.path)
            self._reader = TorchDCPReader(self.path)
        return self._reader

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        reader = self._open()
        entries: dict[str, Any] = {}
        storage: dict[MetadataIndex, tuple[str, int | None]] = {}
        for name, t in reader._tensors.items():
            chunks = []
            for i, piece in enumerate(t.pieces):
                chunks.append(
                    ChunkStorageMetadata(
                        offsets=torch.Size(piece.offsets), sizes=torch.Size(piece.sizes)
                    )
                )
                storage[MetadataIndex(name, piece.offsets)] = (name, i)
            entries[name] = TensorStorageMetadata(
                properties=TensorProperties(dtype=torch_dtype(t.dtype)),
                size=torch.Size(t.shape),
                chunks=chunks,
            )
        for name in reader._blobs:
            entries[name] = BytesStorageMetadata()
            storage[MetadataIndex(name)] = (name, None)
        self._storage = storage
        planner_data = self._planner_data()
        return Metadata(
            state_dict_metadata=entries,
            planner_data=planner_data,
            storage_data=storage,
            storage_meta=StorageMeta(checkpoint_id=self.path),
        )

    def _manifest(self) -> dict[str, Any] | None:
        assert self.path is not None
        if (self.path / METADATA_FILE).is_file() or not (self.path / MANIFEST_FILE).is_file():
            return None
        from weightvault.core.safetensors_io import load_json

        with open(self.path / MANIFEST_FILE, "rb") as f:
            manifest = load_json(f.read(), path=self.path / MANIFEST_FILE, what="manifest")
        return manifest if isinstance(manifest, dict) else None

    def _planner_data(self) -> dict[str, tuple[Any, ...]] | None:
        manifest = self._manifest()
        data = manifest.get("planner_data") if manifest else None
        if not isinstance(data, dict):
            return None
        return {k: tuple(v) for k, v in data.items() if isinstance(v, list)}

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self._open()
        if not self._storage:
            self._storage = dict(metadata.storage_data)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        reader = self._open()
        try:
            self._read_items(reader, plan, planner)
        finally:
            # the last step of a load: DCP has no close hook, and every piece is copied out by now
            reader.close()
            self._reader = None
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _read_items(self, reader: TorchDCPReader, plan: LoadPlan, planner: LoadPlanner) -> None:
        checked: set[tuple[str, int]] = set()
        for req in plan.items:
            name, i = self._storage[req.storage_index]
            if req.type == LoadItemType.BYTE_IO:
                blob = reader._blobs[name]
                raw = reader._data(blob.file, name).bytes_at(blob.start, blob.length).tobytes()
                planner.load_bytes(req, io.BytesIO(raw))
                continue
            assert i is not None
            t = reader._tensors[name]
            chunk = reader._piece(t, t.pieces[i])
            if self.verify and (name, i) not in checked:
                reader.check_chunk(name, i, chunk)
                checked.add((name, i))
            cut = tuple(
                slice(o, o + n) for o, n in zip(req.storage_offsets, req.lengths, strict=True)
            )
            src = _from_numpy(np.array(chunk[cut]))  # a C-order copy; 0-d stays 0-d
            target = planner.resolve_tensor(req).detach()
            if target.size() != src.size():
                raise InvalidHeaderError(
                    f"DCP asks for a piece of size {list(target.size())} but the chunk gives {list(src.size())}",
                    path=self.path,
                    tensor=name,
                )
            target.copy_(src)
            planner.commit_tensor(req, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        p = Path(checkpoint_id)
        return (p / MANIFEST_FILE).is_file() or (p / METADATA_FILE).is_file()


def save(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    extra: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    fsync: bool = True,
) -> None:
    """Save a (possibly FSDP2-sharded) model and optimizer with ``dcp.save``: collective, call it
    on every rank. ``extra`` entries (tensors or small plain values) are saved beside them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    state.update(extra or {})
    dcp.save(state, storage_writer=WeightVaultWriter(path, fsync=fsync, metadata=metadata))


def load(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Load what :func:`save` wrote into ``model`` (and ``optimizer``), at any world size:
    collective, call it on every rank after sharding the model the way it will train."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        state: dict[str, Any] = {"model": get_model_state_dict(model)}
        dcp.load(state, storage_reader=WeightVaultReader(path))
        set_model_state_dict(model, state["model"])
        return
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=WeightVaultReader(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
