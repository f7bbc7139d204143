"""torch.distributed.checkpoint (DCP) directories, read without torch and without running pickle.

Three layouts hold the same thing, a state dict whose tensors may be split into chunks (one per
rank for an FSDP/DTensor model):

* **torch's FileSystemWriter** (``dcp.save(sd, checkpoint_id=dir)``): ``.metadata`` is a pickle of
  ``torch.distributed.checkpoint.metadata.Metadata`` (per entry: dtype, global size and the chunks'
  offsets and sizes; per chunk: file, byte offset and length) and ``__<rank>_<n>.distcp`` files
  hold the chunks. Each tensor chunk is a whole ``torch.save`` archive of the chunk; a non-tensor
  entry (``BytesStorageMetadata``: an optimizer's ``lr``, a step count) is the ``torch.save``
  bytes of the Python object.
* **torch's HuggingFaceStorageWriter** with ``save_distributed=True``: one safetensors file per
  rank (``shard-00001-model-00001-of-00001.safetensors``), each chunk's place in the full tensor
  in the header's ``DCP_SHARDING_INFO`` JSON. (The consolidated and rank-0 outputs are plain
  sharded safetensors repositories, read by the ``safetensors`` format.)
* **weightvault's own DCP backend** (:mod:`weightvault.frameworks.torch_dcp`): ``rank-NNNNN.safetensors``
  per rank, ``manifest.json`` (format_version 2, the entries and their chunks as JSON) and
  ``COMMITTED``.

``.metadata`` goes through :func:`weightvault.core.unpickler.safe_unpickle` with stand-ins for the
DCP dataclasses only (:data:`~weightvault.core.unpickler.DCP_METADATA_ALLOWED`); chunk archives
through the PyTorch reader's restricted rebuilders (tensors only, no persistent ids but storages).
Everything the metadata claims is checked before a byte of data is read: every file name through
:func:`~weightvault.formats._common.safe_relative`, every chunk's bytes inside its file, the chunks
of a tensor tiling its global shape exactly (no gap, no overlap, nothing outside), and the
assembled size against :func:`~weightvault.core.limits.check_expansion`. Non-tensor entries are
never unpickled with pickle: each is read with the plain-data allow-list (numbers, strings,
containers) and reported in ``metadata["torch_dcp"]["objects"]``, and listed in ``skipped``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import mmap
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from weightvault.abc.format import Format, FormatReader, TensorInfo, VerifyResult
from weightvault.core.checksum import checksum
from weightvault.core.dtypes import DTYPES
from weightvault.core.limits import MAX_NESTING, check_expansion
from weightvault.core.safetensors_io import SafetensorsFile, load_json
from weightvault.core.unpickler import (
    BASE_ALLOWED,
    DCP_METADATA_ALLOWED,
    DCPBytesStorageMetadata,
    DCPChunkStorageMetadata,
    DCPMetadata,
    DCPMetadataIndex,
    DCPStorageInfo,
    DCPTensorProperties,
    DCPTensorStorageMetadata,
    TorchDtype,
    safe_unpickle,
    short_repr,
)
from weightvault.errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    HeaderTooLargeError,
    InvalidHeaderError,
    InvalidOffsetError,
    ResourceLimitError,
    UnknownDtypeError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.formats._common import jsonable, safe_relative

if TYPE_CHECKING:  # numpy is imported where data is touched: header-only commands never need it
    import numpy as np

__all__ = ["TorchDCPFormat", "TorchDCPReader"]

METADATA_FILE = ".metadata"
#: weightvault's own DCP layout (written by weightvault.frameworks.torch_dcp)
MANIFEST_FILE = "manifest.json"
COMMIT_MARKER = "COMMITTED"
RANK_FILE = "rank-{rank:05d}.safetensors"
MANIFEST_LAYOUT = "torch_dcp"
MANIFEST_VERSION = 2
#: the HuggingFaceStorageWriter's key in each safetensors header
HF_SHARDING_KEY = "DCP_SHARDING_INFO"

#: largest ``.metadata`` pickle / ``manifest.json`` read (a few hundred bytes per chunk)
MAX_METADATA_BYTES = 256 << 20
#: largest non-tensor entry inspected (its torch.save bytes); larger ones are only listed
MAX_OBJECT_BYTES = 16 << 20
#: a tensor's chunks are checked for tiling on the grid their boundaries make; larger grids are
#: refused rather than walked
MAX_GRID_CELLS = 1 << 22
MAX_DIMS = 64
#: most of a shard's safetensors header that detection reads looking for the sharding key
MAX_SNIFF_HEADER = 16 << 20

_HF_SHARD_RE = re.compile(r"^shard-\d+-model-\d+-of-\d+\.safetensors$")


# ------------------------------------------------------------------------------------------------
# What the layouts describe, checked
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Piece:
    """One stored chunk of a tensor: where it sits in the full tensor and where its bytes are.

    ``key`` names the chunk's tensor in a safetensors file; without it the bytes at
    ``start``..``start + length`` of ``file`` are a ``torch.save`` archive of the chunk.
    """

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int = 0
    length: int = 0
    key: str | None = None
    #: xxh3 of the chunk's bytes (weightvault's DCP layout records one per chunk)
    checksum: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[_Piece, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class _Blob:
    """A non-tensor entry: the ``torch.save`` bytes of a Python object."""

    name: str
    file: str
    start: int
    length: int
    key: str | None = None


def _dims(value: Any, what: str, *, path: str, tensor: str) -> tuple[int, ...]:
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise InvalidHeaderError(
            f"{what} {short_repr(value)} is not a list of non-negative integers",
            path=path,
            tensor=tensor,
        )
    if len(value) > MAX_DIMS:
        raise InvalidHeaderError(
            f"{what} has {len(value)} dimensions, more than {MAX_DIMS}", path=path, tensor=tensor
        )
    return value


def _check_tiling(name: str, shape: tuple[int, ...], pieces: list[_Piece], *, path: str) -> None:
    """The chunks must cover ``shape`` exactly once: each inside it, none overlapping, no gap.

    Checked on the grid the chunks' own boundaries cut the tensor into (a handful of cells for
    FSDP's row slabs), so the cost does not depend on the tensor's size.
    """
    import numpy as np

    for p in pieces:
        if len(p.offsets) != len(shape) or len(p.sizes) != len(shape):
            raise InvalidHeaderError(
                f"a chunk at {list(p.offsets)} of size {list(p.sizes)} does not have the tensor's "
                f"{len(shape)} dimensions",
                path=path,
                tensor=name,
            )
        for d, (o, s, n) in enumerate(zip(p.offsets, p.sizes, shape, strict=True)):
            if o + s > n:
                raise InvalidOffsetError(
                    f"the chunk at {list(p.offsets)} of size {list(p.sizes)} reaches past the "
                    f"tensor's shape {list(shape)} in dimension {d}",
                    path=path,
                    tensor=name,
                )
    bounds = [
        sorted(
            {0, n, *(p.offsets[d] for p in pieces), *(p.offsets[d] + p.sizes[d] for p in pieces)}
        )
        for d, n in enumerate(shape)
    ]
    cells = math.prod(len(b) - 1 for b in bounds)
    if cells > MAX_GRID_CELLS:
        raise ResourceLimitError(
            f"{len(pieces)} chunks cut the tensor into {cells} blocks; more than {MAX_GRID_CELLS} are "
            "not checked",
            path=path,
            tensor=name,
        )
    grid = np.zeros([len(b) - 1 for b in bounds], np.int32)
    for p in pieces:
        if p.numel == 0:
            continue
        index = tuple(
            slice(int(np.searchsorted(b, o)), int(np.searchsorted(b, o + s)))
            for b, o, s in zip(bounds, p.offsets, p.sizes, strict=True)
        )
        grid[index] += 1
    if grid.size and grid.max(initial=0) > 1:
        raise InvalidHeaderError("two chunks of the tensor overlap", path=path, tensor=name)
    # a cell of zero volume (an empty dimension) needs no chunk
    widths = np.ix_(*[np.diff(b) for b in bounds]) if bounds else ()
    volume = np.ones(grid.shape, bool)
    for w in widths:
        volume = volume & (w > 0)
    if np.any((grid == 0) & volume):
        raise InvalidHeaderError(
            f"the chunks leave part of the tensor's shape {list(shape)} uncovered",
            path=path,
            tensor=name,
        )


# ------------------------------------------------------------------------------------------------
# Data files
# ------------------------------------------------------------------------------------------------
class _Window(io.RawIOBase):
    """A read-only file view of ``length`` bytes at ``start`` of an open file (for zipfile)."""

    def __init__(self, f: BinaryIO, start: int, length: int) -> None:
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(base + offset, self._length))
        return self._pos

    def read(self, n: int = -1) -> bytes:
        left = self._length - self._pos
        n = left if n is None or n < 0 else min(n, left)
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(memoryview(b).nbytes)
        memoryview(b)[: len(data)] = data
        return len(data)


class _DataFile:
    """One open data file, mapped once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - kept open for the map, see close()
        try:
            self.size = os.fstat(self.file.fileno()).st_size
            self.map = (
                mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
            )
        except BaseException:
            self.file.close()
            raise

    def bytes_at(self, start: int, length: int) -> np.ndarray:
        import numpy as np

        if length == 0 or self.map is None:
            return np.empty(0, np.uint8)
        return np.frombuffer(self.map, np.uint8, count=length, offset=start)

    def close(self) -> None:
        if self.map is not None:
            # arrays handed out may still view the map; it then goes with them
            with contextlib.suppress(BufferError):
                self.map.close()
        self.file.close()


def _archive(
    data: _DataFile, start: int, length: int, *, tensor: str
) -> tuple[Any, str, dict[str, Any]]:
    """The records of the ``torch.save`` archive at ``start`` (offsets relative to it)."""
    from weightvault.formats.pytorch import _read_zip_records

    window = _Window(data.file, start, length)
    buf = memoryview(data.map)[start : start + length] if data.map is not None else memoryview(b"")
    try:
        records = _read_zip_records(window, buf, length, data.path)  # type: ignore[arg-type]
    except WeightVaultError as exc:
        raise type(exc)(
            f"chunk at byte {start}: {exc.message}", path=data.path, tensor=tensor, hint=exc.hint
        ) from None
    first = next(iter(records), "")
    prefix = first.split("/", 1)[0] if "/" in first else ""
    for rec in records.values():
        if rec.compressed:
            raise UnsupportedOperationError(
                f"record {rec.name} of the chunk at byte {start} is compressed; torch stores them "
                "uncompressed",
                path=data.path,
                tensor=tensor,
            )
    if f"{prefix}/data.pkl" not in records:
        raise InvalidHeaderError(
            f"the chunk at byte {start} is not a torch.save archive (no data.pkl)",
            path=data.path,
            tensor=tensor,
        )
    return buf, prefix, records


def _load_chunk(data: _DataFile, piece: _Piece, dtype: str, *, tensor: str) -> np.ndarray:
    """The chunk saved with ``torch.save`` at ``piece``'s bytes, checked against what the metadata
    says (dtype and size) and against its archive's records before any data is read."""
    import numpy as np

    from weightvault.formats.pytorch import (
        _from_big_endian,
        _parse_storage_pid,
        _Rebuilders,
        _refusal,
        _strided,
        _TensorRef,
    )

    buf, prefix, records = _archive(data, piece.start, piece.length, tensor=tensor)
    used: dict[str, Any] = {}

    def persistent_load(pid: Any) -> Any:
        storage = _parse_storage_pid(pid, data.path)
        record = records.get(f"{prefix}/data/{storage.key}")
        if record is None:
            raise InvalidHeaderError(
                f"the chunk's pickle refers to storage data/{storage.key}, which its archive lacks",
                path=data.path,
                tensor=tensor,
            )
        used[storage.key] = record
        return storage

    pkl = records[f"{prefix}/data.pkl"]
    ref = safe_unpickle(
        buf[pkl.data_offset : pkl.data_offset + pkl.size],
        allowed=_Rebuilders(data.path).allowed(),
        persistent_load=persistent_load,
        path=data.path,
        what=f"chunk {tensor!r} data.pkl",
        encoding="utf-8",
        refuse=_refusal(data.path),
    )
    if not isinstance(ref, _TensorRef):
        raise InvalidHeaderError(
            f"the chunk at byte {piece.start} holds a {type(ref).__name__}, not a tensor",
            path=data.path,
            tensor=tensor,
        )
    if ref.dtype != dtype or ref.shape != piece.sizes:
        raise InvalidHeaderError(
            f"the chunk at {list(piece.offsets)} holds {ref.dtype} {list(ref.shape)} but the metadata says "
            f"{dtype} {list(piece.sizes)}",
            path=data.path,
            tensor=tensor,
        )
    record = used[ref.storage.key]
    st_itemsize = DTYPES[ref.storage.dtype].itemsize if ref.storage.dtype else 1
    itemsize = DTYPES[dtype].itemsize
    if ref.storage.numel * st_itemsize != record.size or ref.storage.elem_offset:
        raise InvalidOffsetError(
            f"the chunk's storage holds {record.size} bytes but its pickle says "
            f"{ref.storage.numel} elements",
            path=data.path,
            tensor=tensor,
        )
    if ref.extent() * itemsize > record.size:
        raise InvalidOffsetError(
            f"the chunk of shape {list(ref.shape)} at storage offset {ref.offset} with stride {list(ref.stride)} "
            f"needs more than the {record.size} bytes of its storage",
            path=data.path,
            tensor=tensor,
        )
    dt = DTYPES[dtype]
    if ref.numel == 0:
        return np.empty(ref.shape, dt)
    raw = data.bytes_at(piece.start + record.data_offset, record.size)
    start = ref.offset * itemsize
    arr = (
        raw[start : start + ref.numel * itemsize].view(dt).reshape(ref.shape)
        if ref.is_contiguous()
        else _strided(raw, start, dt, ref)
    )
    byteorder = records.get(f"{prefix}/byteorder")
    if (
        byteorder is not None
        and bytes(buf[byteorder.data_offset : byteorder.data_offset + 3]) == b"big"
        and itemsize > 1
    ):
        arr = _from_big_endian(arr, dt)
    return arr


def _load_object(data: _DataFile, blob: _Blob) -> Any:
    """The Python object a non-tensor entry's ``torch.save`` bytes hold, read with the plain-data
    allow-list only (numbers, strings, containers; a tensor or any class is refused)."""
    buf, prefix, records = _archive(data, blob.start, blob.length, tensor=blob.name)
    pkl = records[f"{prefix}/data.pkl"]
    return safe_unpickle(
        buf[pkl.data_offset : pkl.data_offset + pkl.size],
        allowed=BASE_ALLOWED,
        path=data.path,
        what=f"entry {blob.name!r}",
        encoding="utf-8",
    )


# ------------------------------------------------------------------------------------------------
# The reader
# ------------------------------------------------------------------------------------------------
class TorchDCPReader(FormatReader):
    """A DCP checkpoint directory (any of the three layouts); tensors come back whole."""

    format_name = "torch_dcp"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        p = Path(self.path)
        if p.is_file() and p.name != METADATA_FILE and not p.name.endswith(".distcp"):
            # a DCP checkpoint is its directory: never read the siblings of some other file
            raise InvalidHeaderError(
                "not a torch.distributed checkpoint: open its directory, its .metadata or a .distcp "
                "file",
                path=p,
            )
        self.root = p.parent if p.is_file() else p
        self._files: dict[str, _DataFile] = {}
        self._safetensors: dict[str, SafetensorsFile] = {}
        self._tensors: dict[str, _Tensor] = {}
        self._blobs: dict[str, _Blob] = {}
        self._facts: dict[str, Any] = {}
        self._objects: dict[str, Any] | None = None
        self._skipped: dict[str, str] = {}
        #: DCP's planner data: entry name -> its path of keys in the saved state dict
        self._paths: dict[str, tuple[str | int, ...]] | None = None
        try:
            if (self.root / METADATA_FILE).is_file():
                self._facts["layout"] = "torch.distributed.checkpoint"
                self._read_dcp_metadata()
            elif (self.root / MANIFEST_FILE).is_file():
                self._facts["layout"] = "weightvault"
                self._read_manifest()
            else:
                self._facts["layout"] = "huggingface"
                self._read_hf_shards()
        except BaseException:
            self.close()
            raise

    # -- files --------------------------------------------------------------------------------------
    def _file(self, rel: str, *, where: str, tensor: str | None = None) -> str:
        """The data file ``rel`` names, inside the checkpoint directory and present."""
        full = safe_relative(self.root, rel, path=where, tensor=tensor)
        if not os.path.isfile(full):
            raise CheckpointNotFoundError(
                f"the data file {rel!r} is missing", path=where, tensor=tensor
            )
        return full

    def _data(self, rel: str, tensor: str) -> _DataFile:
        data = self._files.get(rel)
        if data is None:
            data = self._files[rel] = _DataFile(
                self._file(rel, where=os.fspath(self.root), tensor=tensor)
            )
        return data

    def _st(self, rel: str, *, where: str, tensor: str | None = None) -> SafetensorsFile:
        st = self._safetensors.get(rel)
        if st is None:
            st = self._safetensors[rel] = SafetensorsFile(
                self._file(rel, where=where, tensor=tensor)
            )
        return st

    def _bounded_read(self, name: str) -> tuple[str, bytes]:
        full = safe_relative(self.root, name, path=self.root)
        size = os.path.getsize(full)
        if size > MAX_METADATA_BYTES:
            raise HeaderTooLargeError(
                f"{name} is {size} bytes, over the {MAX_METADATA_BYTES} cap", path=full
            )
        with open(full, "rb") as f:
            return full, f.read(MAX_METADATA_BYTES)

    # -- torch's FileSystemWriter: .metadata + .distcp --------------------------------------------
    def _read_dcp_metadata(self) -> None:
        from weightvault.formats.pytorch import TORCH_DTYPES

        where, raw = self._bounded_read(METADATA_FILE)
        allowed = {
            **BASE_ALLOWED,
            **DCP_METADATA_ALLOWED,
            **{("torch", n): TorchDtype(n) for n in TORCH_DTYPES},
        }
        md = safe_unpickle(raw, allowed=allowed, path=where, what=".metadata", encoding="utf-8")
        if not isinstance(md, DCPMetadata):
            raise InvalidHeaderError(
                f".metadata holds a {type(md).__name__}, not DCP Metadata", path=where
            )
        fields = vars(md)
        entries, storage = fields.get("state_dict_metadata"), fields.get("storage_data")
        if not isinstance(entries, dict) or not isinstance(storage, dict):
            raise InvalidHeaderError(
                ".metadata has no state_dict_metadata / storage_data dicts", path=where
            )
        located = self._dcp_storage(storage, where)
        for name, entry in entries.items():
            if not isinstance(name, str):
                raise InvalidHeaderError(f".metadata names an entry {short_repr(name)}", path=where)
            if isinstance(entry, DCPBytesStorageMetadata):
                info = located.pop((name, None), None) or located.pop((name, ()), None)
                if info is None:
                    raise InvalidHeaderError(
                        "the entry has no storage record", path=where, tensor=name
                    )
                self._blobs[name] = _Blob(name, *info)
            elif isinstance(entry, DCPTensorStorageMetadata):
                self._tensors[name] = self._dcp_tensor(name, entry, located, where)
            else:
                raise InvalidHeaderError(
                    f"the entry is a {type(entry).__name__}", path=where, tensor=name
                )
        self._paths = _planner_paths(fields.get("planner_data"))
        self._facts["version"] = (
            fields.get("version") if isinstance(fields.get("version"), str) else None
        )
        meta = fields.get("storage_meta")
        if meta is not None:
            save_id = vars(meta).get("save_id") if hasattr(meta, "__dict__") else None
            if isinstance(save_id, str):
                self._facts["save_id"] = save_id

    def _dcp_storage(
        self, storage: dict[Any, Any], where: str
    ) -> dict[tuple[str, Any], tuple[str, int, int]]:
        """(entry, chunk offsets) -> (file, start, length), every file and span checked."""
        located: dict[tuple[str, Any], tuple[str, int, int]] = {}
        sizes: dict[str, int] = {}
        for index, info in storage.items():
            if not isinstance(index, DCPMetadataIndex) or not isinstance(info, DCPStorageInfo):
                raise InvalidHeaderError(
                    f"storage_data maps a {type(index).__name__} to a {type(info).__name__}",
                    path=where,
                )
            fqn, offset = vars(index).get("fqn"), vars(index).get("offset")
            if not isinstance(fqn, str):
                raise InvalidHeaderError(
                    f"storage_data names an entry {short_repr(fqn)}", path=where
                )
            if offset is not None:
                offset = _dims(offset, "chunk offset", path=where, tensor=fqn)
            rel, start, length = (vars(info).get(k) for k in ("relative_path", "offset", "length"))
            if vars(info).get("transform_descriptors"):
                raise UnsupportedOperationError(
                    f"the chunk is stored through transforms {short_repr(vars(info)['transform_descriptors'])} "
                    "(a compressed or encrypted checkpoint); only plain chunks are read",
                    path=where,
                    tensor=fqn,
                )
            if (
                not isinstance(rel, str)
                or type(start) is not int
                or type(length) is not int
                or start < 0
                or length < 0
            ):
                raise InvalidHeaderError(
                    f"storage record {short_repr(vars(info))} is not (file, offset, length)",
                    path=where,
                    tensor=fqn,
                )
            if rel not in sizes:
                sizes[rel] = os.path.getsize(self._file(rel, where=where, tensor=fqn))
            if start + length > sizes[rel]:
                raise InvalidOffsetError(
                    f"the chunk needs bytes {start}..{start + length} of {rel}, which has {sizes[rel]}",
                    path=where,
                    tensor=fqn,
                )
            if (fqn, offset) in located:
                raise InvalidHeaderError(
                    f"two storage records for the chunk at {offset}", path=where, tensor=fqn
                )
            located[(fqn, offset)] = (rel, start, length)
        return located

    def _dcp_tensor(
        self,
        name: str,
        entry: Any,
        located: dict[tuple[str, Any], tuple[str, int, int]],
        where: str,
    ) -> _Tensor:
        from weightvault.formats.pytorch import TORCH_DTYPES

        fields = vars(entry)
        props = fields.get("properties")
        torch_dtype = vars(props).get("dtype") if isinstance(props, DCPTensorProperties) else None
        if not isinstance(torch_dtype, TorchDtype):
            raise InvalidHeaderError(
                f"the tensor's properties give no dtype ({short_repr(props)})",
                path=where,
                tensor=name,
            )
        dtype = TORCH_DTYPES.get(torch_dtype.name)
        if dtype is None:
            raise UnknownDtypeError(
                f"torch dtype {torch_dtype.name} is not supported", path=where, tensor=name
            )
        shape = _dims(fields.get("size"), "size", path=where, tensor=name)
        chunks = fields.get("chunks")
        if not isinstance(chunks, list) or not all(
            isinstance(c, DCPChunkStorageMetadata) for c in chunks
        ):
            raise InvalidHeaderError(
                "the tensor's chunks are not a list of chunk records", path=where, tensor=name
            )
        pieces = []
        itemsize = DTYPES[dtype].itemsize
        for chunk in chunks:
            offsets = _dims(vars(chunk).get("offsets"), "chunk offsets", path=where, tensor=name)
            sizes = _dims(vars(chunk).get("sizes"), "chunk sizes", path=where, tensor=name)
            spot = located.pop((name, offsets), None)
            if spot is None:
                raise InvalidHeaderError(
                    f"no storage record for the chunk at {list(offsets)}", path=where, tensor=name
                )
            piece = _Piece(offsets, sizes, *spot)
            if piece.numel * itemsize > piece.length:
                raise InvalidOffsetError(
                    f"the chunk at {list(offsets)} of size {list(sizes)} needs {piece.numel * itemsize} bytes "
                    f"but its record holds {piece.length}",
                    path=where,
                    tensor=name,
                )
            pieces.append(piece)
        return self._checked(name, dtype, shape, pieces, where)

    def _checked(
        self, name: str, dtype: str, shape: tuple[int, ...], pieces: list[_Piece], where: str
    ) -> _Tensor:
        _check_tiling(name, shape, pieces, path=where)
        tensor = _Tensor(name, dtype, shape, tuple(pieces))
        # tiled exactly, the chunks' stored bytes hold every element: the assembly cannot expand
        # (checked anyway, against the bytes the files really hold for the chunks)
        stored = sum(p.length for p in pieces)
        check_expansion(tensor.nbytes, stored, path=where, tensor=name, what="the assembled chunks")
        return tensor

    # -- HuggingFaceStorageWriter(save_distributed=True) ------------------------------------------
    def _read_hf_shards(self) -> None:
        names = sorted(n for n in os.listdir(self.root) if n.endswith(".safetensors"))
        if not names:
            raise InvalidHeaderError(
                "no .metadata, manifest.json or safetensors shards: not a DCP checkpoint",
                path=self.root,
            )
        found: dict[str, list[_Piece]] = {}
        dtypes: dict[str, str] = {}
        for rel in names:
            st = self._st(rel, where=os.fspath(self.root))
            sharding = st.metadata.get(HF_SHARDING_KEY)
            if sharding is None:
                raise InvalidHeaderError(
                    f"the header has no {HF_SHARDING_KEY}: not a DCP shard", path=st.path
                )
            info = load_json(sharding, path=st.path, what=HF_SHARDING_KEY)
            if not isinstance(info, dict):
                raise InvalidHeaderError(f"{HF_SHARDING_KEY} is not a JSON object", path=st.path)
            for key, entry in st.entries.items():
                spec = info.get(key)
                offsets = spec.get("saved_offsets") if isinstance(spec, dict) else None
                offsets = _dims(
                    offsets if offsets is not None else [0] * len(entry.shape),
                    "saved_offsets",
                    path=st.path,
                    tensor=key,
                )
                if len(offsets) != len(entry.shape):
                    raise InvalidHeaderError(
                        f"saved_offsets {list(offsets)} do not match the chunk's shape "
                        f"{list(entry.shape)}",
                        path=st.path,
                        tensor=key,
                    )
                if dtypes.setdefault(key, entry.dtype) != entry.dtype:
                    raise InvalidHeaderError(
                        f"the chunks disagree on the dtype ({dtypes[key]}, {entry.dtype})",
                        path=st.path,
                        tensor=key,
                    )
                found.setdefault(key, []).append(
                    _Piece(offsets, entry.shape, rel, entry.start, entry.end - entry.start, key)
                )
        for key, pieces in found.items():
            rank = {len(p.sizes) for p in pieces}
            if len(rank) != 1:
                raise InvalidHeaderError(
                    "the chunks disagree on the number of dimensions", path=self.root, tensor=key
                )
            # the full shape is where the chunks end (as torch's HuggingFaceStorageReader infers it)
            shape = tuple(max(p.offsets[d] + p.sizes[d] for p in pieces) for d in range(rank.pop()))
            self._tensors[key] = self._checked(
                key, dtypes[key], shape, pieces, os.fspath(self.root)
            )

    # -- weightvault's DCP backend: manifest.json + rank files + COMMITTED ------------------------
    def _read_manifest(self) -> None:
        where, raw = self._bounded_read(MANIFEST_FILE)
        manifest = load_json(raw, path=where, what="manifest")
        if not isinstance(manifest, dict) or manifest.get("layout") != MANIFEST_LAYOUT:
            raise InvalidHeaderError(
                "manifest.json does not describe a weightvault DCP checkpoint", path=where
            )
        if manifest.get("format_version") != MANIFEST_VERSION:
            raise InvalidHeaderError(
                f"manifest format_version {short_repr(manifest.get('format_version'))} is "
                f"not {MANIFEST_VERSION}",
                path=where,
            )
        if not (self.root / COMMIT_MARKER).is_file():
            raise CheckpointNotFoundError(
                "the checkpoint has no COMMITTED marker: its save did not finish", path=self.root
            )
        entries = manifest.get("entries")
        if not isinstance(entries, dict):
            raise InvalidHeaderError("manifest has no 'entries' object", path=where)
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise InvalidHeaderError("manifest entry is not an object", path=where, tensor=name)
            if entry.get("type") == "bytes":
                rel, key = entry.get("file"), entry.get("key")
                if not isinstance(rel, str) or not isinstance(key, str):
                    raise InvalidHeaderError(
                        "bytes entry without file and key", path=where, tensor=name
                    )
                st = self._st(rel, where=where, tensor=name)
                e = st.entries.get(key)
                if e is None or e.dtype != "uint8" or len(e.shape) != 1:
                    raise InvalidHeaderError(
                        f"{rel} holds no uint8 record {key!r}", path=where, tensor=name
                    )
                self._blobs[name] = _Blob(name, rel, e.start, e.end - e.start, key)
            elif entry.get("type") == "tensor":
                self._tensors[name] = self._manifest_tensor(name, entry, where)
            else:
                raise InvalidHeaderError(
                    f"manifest entry type {short_repr(entry.get('type'))}", path=where, tensor=name
                )
        for key in ("world_size", "library_version", "created"):
            if isinstance(manifest.get(key), (int, str)):
                self._facts[key] = manifest[key]
        if isinstance(manifest.get("metadata"), dict):
            self._facts["metadata"] = manifest["metadata"]
        self._paths = _planner_paths(manifest.get("planner_data"))

    def _manifest_tensor(self, name: str, entry: dict[str, Any], where: str) -> _Tensor:
        dtype = entry.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise UnknownDtypeError(
                f"manifest dtype {short_repr(dtype)} is not known", path=where, tensor=name
            )
        shape = _dims(entry.get("shape"), "shape", path=where, tensor=name)
        chunks = entry.get("chunks")
        if not isinstance(chunks, list):
            raise InvalidHeaderError("the tensor's chunks are not a list", path=where, tensor=name)
        pieces = []
        for chunk in chunks:
            if (
                not isinstance(chunk, dict)
                or not isinstance(chunk.get("file"), str)
                or not isinstance(chunk.get("key"), str)
            ):
                raise InvalidHeaderError(
                    f"chunk {short_repr(chunk)} has no file and key", path=where, tensor=name
                )
            offsets = _dims(chunk.get("offsets"), "chunk offsets", path=where, tensor=name)
            sizes = _dims(chunk.get("sizes"), "chunk sizes", path=where, tensor=name)
            st = self._st(chunk["file"], where=where, tensor=name)
            e = st.entries.get(chunk["key"])
            if e is None or e.dtype != dtype or e.shape != sizes:
                raise InvalidHeaderError(
                    f"{chunk['file']} holds no {dtype} {list(sizes)} record {chunk['key']!r}",
                    path=where,
                    tensor=name,
                )
            checksum = chunk.get("checksum")
            if checksum is not None and not isinstance(checksum, str):
                raise InvalidHeaderError(
                    f"chunk checksum {short_repr(checksum)} is not a string",
                    path=where,
                    tensor=name,
                )
            pieces.append(
                _Piece(
                    offsets, sizes, chunk["file"], e.start, e.end - e.start, chunk["key"], checksum
                )
            )
        return self._checked(name, dtype, shape, pieces, where)

    # -- FormatReader -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        t = self._tensors[name]
        files = sorted({p.file for p in t.pieces})
        return TensorInfo(name, t.dtype, t.shape, {"chunks": len(t.pieces), "files": files})

    def _piece(self, t: _Tensor, piece: _Piece) -> np.ndarray:
        if piece.key is not None:
            return self._safetensors[piece.file].view(piece.key)
        try:
            return _load_chunk(self._data(piece.file, t.name), piece, t.dtype, tensor=t.name)
        except WeightVaultError as exc:
            if exc.tensor is not None:
                raise
            # errors from inside the chunk's archive (its pickle, its zip) name the tensor too
            raise type(exc)(exc.message, path=exc.path, tensor=t.name, hint=exc.hint) from None

    def get(self, name: str) -> np.ndarray:
        import numpy as np

        self._require(name)
        t = self._tensors[name]
        whole = [p for p in t.pieces if p.sizes == t.shape]
        if whole:
            return self._piece(t, whole[0])
        out = np.empty(t.shape, DTYPES[t.dtype])
        for piece in t.pieces:
            if piece.numel:
                where = tuple(
                    slice(o, o + s) for o, s in zip(piece.offsets, piece.sizes, strict=True)
                )
                out[where] = self._piece(t, piece)
        return out

    def check_chunk(self, name: str, index: int, chunk: np.ndarray) -> bool:
        """Compare chunk ``index`` of ``name`` (its array, as read) with its recorded checksum:
        True when checked, False when the layout records none; ChecksumMismatchError otherwise."""
        import numpy as np

        piece = self._tensors[name].pieces[index]
        if piece.checksum is None:
            return False
        got = checksum(memoryview(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)))
        if got != piece.checksum:
            raise ChecksumMismatchError(
                f"chunk {index} (at {list(piece.offsets)}) has checksum {got}, the manifest says "
                f"{piece.checksum}",
                path=os.fspath(self.root / piece.file),
                tensor=name,
            )
        return True

    def verify(self) -> VerifyResult:
        """Read every chunk; the weightvault layout's chunks are checked against their checksums."""
        result = VerifyResult(self.path)
        for name, t in self._tensors.items():
            try:
                checked = [
                    self.check_chunk(name, i, self._piece(t, p)) for i, p in enumerate(t.pieces)
                ]
            except ChecksumMismatchError as exc:
                result.failures.append(str(exc))
                continue
            if checked and all(checked):
                result.checked += 1
            else:
                result.unchecked += 1
        return result

    @property
    def skipped(self) -> dict[str, str]:
        self._read_objects()
        return dict(self._skipped)

    def structure(self) -> Any:
        """The state dict as ``dcp.save`` was given it (nested dicts and lists, tensors whole,
        plain-data objects by value), rebuilt from DCP's planner data; None when the checkpoint
        has none or it does not describe every entry (then the names are the flat keys)."""
        if self._paths is None:
            return None
        objects = self._read_objects()
        names = [*self._tensors, *objects]
        if any(n not in self._paths for n in names):
            return None
        root: dict[Any, Any] = {}
        for name in names:
            *parents, last = self._paths[name]
            node = root
            for key in parents:
                child = node.setdefault(key, {})
                if not isinstance(child, dict):
                    return None  # a path runs through a leaf: not a tree
                node = child
            if last in node:
                return None
            node[last] = self.get(name) if name in self._tensors else objects[name]
        return _lists(root)

    @property
    def metadata(self) -> dict[str, Any]:
        objects = self._read_objects()
        facts = {k: v for k, v in self._facts.items() if v is not None and k != "metadata"}
        facts["files"] = len(
            {p.file for t in self._tensors.values() for p in t.pieces}
            | {b.file for b in self._blobs.values()}
        )
        if objects:
            facts["objects"] = objects
        out: dict[str, Any] = {"torch_dcp": facts}
        user = self._facts.get("metadata")
        if isinstance(user, dict):
            out.update(user)
        return out

    def _read_objects(self) -> dict[str, Any]:
        """Every non-tensor entry, read with the plain-data allow-list once: its value when that
        is plain data, and the reason it is left out of the tensors (``skipped``)."""
        if self._objects is not None:
            return self._objects
        self._objects = {}
        for name, blob in self._blobs.items():
            kind = "a pickled Python object (torch.save bytes)"
            if blob.length > MAX_OBJECT_BYTES:
                self._skipped[name] = f"{kind} of {blob.length} bytes, not inspected"
                continue
            try:
                value = _load_object(self._data(blob.file, name), blob)
            except WeightVaultError as exc:  # a bad entry never stops the tensors from reading
                self._skipped[name] = f"{kind} not read: {exc.message}"
                continue
            self._objects[name] = _json_value(value)
            self._skipped[name] = f"{kind}, not a tensor: {short_repr(value, 60)}"
        return self._objects

    def close(self) -> None:
        for data in self._files.values():
            data.close()
        for st in self._safetensors.values():
            st.close()
        self._files.clear()
        self._safetensors.clear()


def _planner_paths(data: Any) -> dict[str, tuple[str | int, ...]] | None:
    """DCP's planner data (entry -> path of keys), when it is that; None otherwise."""
    if not isinstance(data, dict):
        return None
    paths: dict[str, tuple[str | int, ...]] = {}
    for name, path in data.items():
        if (
            not isinstance(name, str)
            or not isinstance(path, (tuple, list))
            or not 0 < len(path) <= MAX_NESTING
            or not all(type(k) in (str, int) for k in path)
        ):
            return None
        paths[name] = tuple(path)
    return paths


def _lists(node: Any) -> Any:
    """Dicts keyed 0..n-1 (DCP flattens lists that way) back into lists, bottom up."""
    if not isinstance(node, dict):
        return node
    out = {k: _lists(v) for k, v in node.items()}
    if out and all(type(k) is int for k in out) and sorted(out) == list(range(len(out))):
        return [out[i] for i in range(len(out))]
    return out


def _json_value(value: Any) -> Any:
    """``value`` as JSON (metadata must stay JSON-able); its short repr when it has no JSON form
    (a set, a complex number, NaN)."""
    value = jsonable(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return short_repr(value, 200)
    return value


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------
def _is_hf_dcp_dir(path: Path) -> bool:
    """A directory of HuggingFaceStorageWriter(save_distributed=True) shards (no index file)."""
    if (path / "model.safetensors.index.json").exists():
        return False
    names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not names or not all(_HF_SHARD_RE.match(n) for n in names):
        return False
    try:
        with open(path / names[0], "rb") as f:
            # the key sits in the header's __metadata__, which may follow many tensor entries
            (n,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
            header = f.read(min(n, MAX_SNIFF_HEADER))
    except OSError:
        return False
    return HF_SHARDING_KEY.encode() in header


class TorchDCPFormat(Format):
    name = "torch_dcp"
    description = (
        "torch.distributed.checkpoint directory (.metadata + .distcp, or DCP safetensors shards)"
    )
    # Registry row: no endings (a .distcp file is recognised by its directory's sniff), not
    # writable here (dcp.save with weightvault.torch_dcp's writer makes these).
    read_options: ClassVar[Mapping[str, str] | None] = {}
    write_options: ClassVar[Mapping[str, str] | None] = {}  # read-only: dcp.save writes these

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        p = Path(path)
        try:
            if p.is_dir():
                if (p / METADATA_FILE).is_file():
                    with open(p / METADATA_FILE, "rb") as f:
                        return f.read(1) == b"\x80"  # a pickle (the HF writer's JSON index is not)
                if (p / MANIFEST_FILE).is_file() and (p / RANK_FILE.format(rank=0)).is_file():
                    return True
                return _is_hf_dcp_dir(p)
            if p.name == METADATA_FILE:
                return head[:1] == b"\x80"
            return p.name.endswith(".distcp") and (p.parent / METADATA_FILE).is_file()
        except OSError:
            return False

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> TorchDCPReader:
        return TorchDCPReader(path)
