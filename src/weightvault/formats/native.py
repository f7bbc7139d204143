"""weightvault's native checkpoint: safetensors files plus a manifest, readable by everyone.

Two forms:

* **single file** ``name.safetensors``: a plain safetensors file whose ``__metadata__`` holds the
  manifest as JSON under ``weightvault.manifest``;
* **directory**: ``model-00001-of-0000N.safetensors`` shards (each at most ``shard_size`` bytes of
  data unless one tensor alone is larger), ``manifest.json``, a Hugging Face style
  ``model.safetensors.index.json``, and the ``COMMITTED`` marker, written last. The directory is
  built under a temporary name and renamed into place, so a reader sees all of it or none of it.

The manifest records the format version, library version, creation time, per-tensor dtype, shape,
file and checksum, tied-tensor aliases, the user's metadata and the tree spec (see
:mod:`weightvault.core.tree`) that rebuilds nested training state exactly.

dtypes stock safetensors cannot name (complex128) are stored as a float64 ``[..., 2]`` view and
the manifest records the real dtype; every file stays loadable by the safetensors library.

String tensors (dtype ``"string"``, object arrays of ``bytes``) are stored as one 1-D ``uint8``
tensor: ``n + 1`` little-endian uint64 offsets (``n`` = number of elements, the first offset 0,
the last the total length), then the concatenated bytes of the elements in C order. The manifest
row says ``"dtype": "string"``, the real shape and ``"stored_as": "uint8"``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from weightvault.abc.format import (
    ByteSpan,
    DescribedTensors,
    Format,
    FormatReader,
    TensorInfo,
    VerifyResult,
)
from weightvault.core.checksum import PLACEHOLDER, StreamingChecksum, checksum
from weightvault.core.chunks import Box, byte_runs, check_tiling, intersect
from weightvault.core.dtypes import (
    DTYPES,
    STRING,
    as_string_array,
    dtype_from_name,
    is_string_array,
)
from weightvault.core.io import atomic_write
from weightvault.core.progress import progress_bar
from weightvault.core.safetensors_io import (
    SafetensorsFile,
    TensorDigest,
    TensorSource,
    check_shape,
    check_tensor_names,
    load_json,
    write_safetensors,
)
from weightvault.core.shards import (
    DEFAULT_SHARD_SIZE,
    FlatState,
    plan_shards,
    read_index,
    resolve_shard,
    shard_directory,
    split_ties,
)
from weightvault.core.tensors import describe, to_numpy
from weightvault.core.tree import check_spec, flatten, name_filter, tensor_names, unflatten
from weightvault.errors import (
    AliasError,
    CheckpointNotFoundError,
    InvalidHeaderError,
    InvalidOffsetError,
    TensorNotFoundError,
    UnknownDtypeError,
    UnsupportedOperationError,
)
from weightvault.formats._common import span_of

if TYPE_CHECKING:  # numpy is imported where data is touched: header-only commands never need it
    import numpy as np

__all__ = [
    "COMMIT_MARKER",
    "DEFAULT_SHARD_SIZE",
    "MANIFEST_FILE",
    "MANIFEST_KEY",
    "NativeFormat",
    "NativeReader",
    "save_native",
]

FORMAT_NAME = "weightvault"
FORMAT_VERSION = 1
#: the manifest version of a checkpoint with chunked rows (a distributed save, see
#: :mod:`weightvault.frameworks.torch_distributed`): readers of version 1 refuse it instead of
#: listing tensors they cannot read
CHUNKED_FORMAT_VERSION = 2
MANIFEST_KEY = "weightvault.manifest"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "model.safetensors.index.json"
COMMIT_MARKER = "COMMITTED"
#: largest manifest.json read (the safetensors header cap; a manifest is a few bytes per tensor)
MAX_MANIFEST_BYTES = 100_000_000

#: endings of the other built-in formats (see ``Format.extensions``; a test keeps this in step with
#: the registry). A native checkpoint is never written under one: ``save(sd, "x.pt")`` would make a
#: directory named ``x.pt`` that ``torch.load`` cannot open. Kept here so a save imports no format.
FOREIGN_EXTENSIONS = (
    ".pt", ".pth", ".pt2", ".bin", ".ckpt", ".npy", ".npz", ".gguf", ".gob", ".onnx", ".index", ".pb",
    ".meta", ".weights.h5", ".keras", ".h5", ".hdf5",
)  # fmt: skip


def _refuse_foreign_extension(path: Path) -> None:
    name = path.name.lower()
    ending = next((e for e in FOREIGN_EXTENSIONS if name.endswith(e)), None)
    if ending is None:
        return
    raise UnsupportedOperationError(
        f"will not write a weightvault checkpoint under a {ending} name: save() writes the native "
        "format (a .safetensors file, or a directory for any other name), which tools expecting "
        f"a {ending} file cannot read",
        path=path,
        hint=f"save to {path.name[: len(path.name) - len(ending)] or 'model'}.safetensors, then "
        f"`weightvault convert <that file> {path.name}` to get a {ending} file",
    )


# dtypes stored through a same-bytes view that safetensors can name
_STORED_AS = {"complex128": ("float64", 2)}


def encode_strings(values: np.ndarray) -> np.ndarray:
    """A string tensor as its stored ``uint8`` tensor: (n+1) u64le offsets, then the bytes."""
    import numpy as np

    items = as_string_array(values).reshape(-1).tolist()
    ends = np.cumsum([len(b) for b in items], dtype="<u8") if items else np.zeros(0, "<u8")
    offsets = np.concatenate([np.zeros(1, "<u8"), ends]).astype("<u8")
    return np.frombuffer(offsets.tobytes() + b"".join(items), np.uint8)


def decode_strings(
    stored: np.ndarray, shape: tuple[int, ...], *, path: str, tensor: str
) -> np.ndarray:
    """The object array of ``bytes`` a stored ``uint8`` tensor encodes, every offset checked
    against the bytes present before anything is allocated."""
    import numpy as np

    count = math.prod(shape)
    head = 8 * (count + 1)
    if stored.ndim != 1 or head > stored.size:
        raise InvalidOffsetError(
            f"string tensor of {count} elements needs {head} bytes of offsets, the file holds "
            f"{stored.size}",
            path=path,
            tensor=tensor,
        )
    offsets = np.frombuffer(stored[:head].tobytes(), "<u8")
    data = stored[head:].tobytes()
    if offsets[0] != 0 or offsets[-1] != len(data) or bool(np.any(offsets[1:] < offsets[:-1])):
        raise InvalidOffsetError(
            f"string offsets are not increasing from 0 to the {len(data)} bytes stored",
            path=path,
            tensor=tensor,
        )
    out = np.empty(count, dtype=object)
    bounds = offsets.tolist()
    for i in range(count):
        out[i] = data[bounds[i] : bounds[i + 1]]
    return out.reshape(shape)


def _string_source(name: str, values: np.ndarray) -> TensorSource:
    # Encoded now: the header needs the stored length before the data is written (string
    # tensors are vocabularies and tags, small next to the weights).
    stored = encode_strings(values)
    return TensorSource(name, "uint8", (stored.size,), lambda: stored)


def _library_version() -> str:
    from weightvault._version import __version__

    return __version__


def _source_for(
    name: str, fetch: Callable[[], np.ndarray], dtype: str, shape: tuple[int, ...], span: ByteSpan | None = None
) -> TensorSource:
    if dtype in _STORED_AS:  # the carrier view has the same bytes, so a span still applies
        carrier, last = _STORED_AS[dtype]
        carrier_dt = dtype_from_name(carrier)
        return TensorSource(
            name, carrier, (*shape, last), lambda: fetch().view(carrier_dt).reshape(*shape, last), span
        )
    return TensorSource(name, dtype, shape, fetch, span)


def _row_for(dtype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"dtype": dtype, "shape": list(shape)}
    if dtype in _STORED_AS:
        row["stored_as"] = _STORED_AS[dtype][0]
    elif dtype == STRING:
        row["stored_as"] = "uint8"
    return row


def _is_lazy(obj: Any) -> bool:
    """A mapping that describes tensors before producing them (a reader's view, a conversion plan)."""
    return isinstance(obj, Mapping) and not isinstance(obj, dict) and isinstance(obj, DescribedTensors)


def plan_lazy(
    tensors: Mapping[str, Any],
) -> tuple[dict[str, Any], list[TensorSource], dict[str, dict[str, Any]]]:
    """Plan a flat checkpoint from a lazy mapping without reading any data yet (streaming convert)."""
    import numpy as np

    spec = {"t": "dict", "items": [[["s", n], {"t": "tensor", "name": n}] for n in tensors]}
    sources, rows = [], {}
    for name in tensors:
        info = tensors.info(name)  # type: ignore[attr-defined]
        rows[name] = _row_for(info.dtype, info.shape)
        if info.dtype == STRING:
            sources.append(_string_source(name, np.asarray(tensors[name])))
            continue
        fetch = (lambda n: lambda: to_numpy(np.asarray(tensors[n])))(name)
        sources.append(_source_for(name, fetch, info.dtype, info.shape, span_of(tensors, name)))
    return spec, sources, rows


def plan_tensors(
    found: Mapping[str, Any], aliases: Mapping[str, str] | None = None
) -> tuple[list[TensorSource], dict[str, dict[str, Any]], dict[str, str]]:
    """Describe every tensor, storing tied tensors once. Returns sources, manifest rows, aliases.

    ``aliases`` given: ``found`` is already free of ties (:func:`~weightvault.core.shards.split_ties`
    ran, e.g. in the async snapshot) and is not searched again."""
    if aliases is None:
        found, aliases = split_ties(found)
    sources: list[TensorSource] = []
    rows: dict[str, dict[str, Any]] = {}
    for name, obj in found.items():
        if is_string_array(obj):
            sources.append(_string_source(name, obj))
            rows[name] = _row_for(STRING, tuple(obj.shape))
            continue
        desc = describe(obj, name=name)
        fetch = (lambda o: lambda: to_numpy(o))(obj)
        sources.append(_source_for(name, fetch, desc.dtype, desc.shape))
        rows[name] = _row_for(desc.dtype, desc.shape)
    return sources, rows, dict(aliases)


def _new_manifest(
    rows: dict[str, dict[str, Any]],
    aliases: dict[str, str],
    spec: dict[str, Any],
    metadata: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "tensors": rows,
        "aliases": aliases,
        "tree": spec,
        "metadata": dict(metadata or {}),
    }
    manifest.update(extra or {})
    try:
        json.dumps(manifest["metadata"], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable (no NaN): {exc}") from None
    return manifest


class _ChecksumDigest:
    """Fills one manifest row's checksum from the bytes written, and advances the progress bar."""

    def __init__(self, row: dict[str, Any], advance: Callable[[int], None]) -> None:
        self._row, self._advance = row, advance
        self._sum = StreamingChecksum()

    def update(self, chunk: memoryview) -> None:
        self._sum.update(chunk)
        self._advance(len(chunk))

    def finish(self) -> None:
        self._row["checksum"] = self._sum.value()


def _checksum_hook(
    rows: dict[str, dict[str, Any]], advance: Callable[[int], None]
) -> Callable[[TensorSource], TensorDigest]:
    return lambda src: _ChecksumDigest(rows[src.name], advance)


def single_file_metadata(
    manifest: dict[str, Any], rows: dict[str, dict[str, Any]], file_name: str
) -> Callable[[], dict[str, str]]:
    """Point every row at the one file (checksums filled in as the tensors are written) and
    return what makes its header metadata: called before the data and again after it, when the
    checksums are known (local files and object-store uploads alike)."""
    for row in rows.values():
        row["file"] = file_name
        row["checksum"] = PLACEHOLDER

    def final_meta() -> dict[str, str]:
        # "format": "pt" is what transformers checks before it loads a safetensors file
        text = json.dumps(manifest, ensure_ascii=False, allow_nan=False)
        return {"format": "pt", MANIFEST_KEY: text}

    return final_meta


def plan_state(
    obj: Any, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> tuple[dict[str, Any], list[TensorSource], dict[str, dict[str, Any]], dict[str, str]]:
    """What a save of ``obj`` writes: tree spec, tensor sources, manifest rows and aliases.

    ``obj`` is a nested state, a lazy mapping (a reader or a conversion plan: read one tensor
    at a time) or a :class:`~weightvault.core.shards.FlatState` (already flattened, ties found).
    Shared by local saves and object-store saves, so both write the same manifest."""
    if _is_lazy(obj):
        spec, sources, rows = plan_lazy(obj)
        return spec, sources, rows, {}
    if isinstance(obj, FlatState):
        if include or exclude:
            raise TypeError("include/exclude filter a state as it is flattened, not a FlatState")
        sources, rows, aliases = plan_tensors(obj.tensors, obj.aliases)
        return obj.spec, sources, rows, aliases
    spec, found = flatten(obj, keep=name_filter(include, exclude))
    sources, rows, aliases = plan_tensors(found)
    return spec, sources, rows, aliases


def save_native(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    single_file: bool | None = None,
    fsync: bool = True,
    progress: bool | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    before_commit: Callable[[int], Mapping[str, bytes]] | None = None,
    incremental: bool = False,
    base: str | os.PathLike[str] | None = None,
    stats: dict[str, Any] | None = None,
) -> Path:
    """Save ``obj`` (a state dict or any nested training state) as a native checkpoint.

    ``single_file`` defaults to True when ``path`` ends in ``.safetensors``. ``include`` and
    ``exclude`` are glob patterns over tensor names (``model/encoder.*``) for a partial save.
    ``obj`` may be a :class:`~weightvault.core.shards.FlatState` (state already flattened and its
    ties found, as the checkpoint manager's snapshot has it). ``before_commit`` (directories
    only) is called with the bytes the checkpoint will have once committed and returns more
    files ``{name: bytes}`` to write before the ``COMMITTED`` marker (the manager's record).

    ``incremental`` (directories only): shards whose tensors are unchanged since the committed
    checkpoint directory ``base`` are hard-linked from it instead of written (see
    :mod:`weightvault.formats.native_incremental`); the result is still a standalone checkpoint.
    ``stats``, a dict, receives ``written_bytes`` and ``reused_bytes`` before ``before_commit``
    runs.
    """
    path = Path(path)
    _refuse_foreign_extension(path)
    if single_file is None:
        single_file = path.suffix == ".safetensors"
    spec, sources, rows, aliases = plan_state(obj, include, exclude)
    check_tensor_names(sources, path=path)
    manifest = _new_manifest(rows, aliases, spec, metadata, extra_manifest)
    total = sum(s.nbytes for s in sources)
    with progress_bar(f"saving {path.name}", total, enabled=progress) as advance:
        hook = _checksum_hook(rows, advance)
        if single_file:
            final_meta = single_file_metadata(manifest, rows, path.name)

            with atomic_write(path, fsync=fsync) as f:
                write_safetensors(f, sources, final_meta(), on_tensor=hook, finalize=final_meta)
        elif incremental:
            from weightvault.formats.native_incremental import save_directory_incremental

            save_directory_incremental(
                path, sources, manifest, shard_size, fsync, hook, before_commit, base, stats
            )
        else:
            _save_directory(path, sources, manifest, shard_size, fsync, hook, before_commit, stats)
    return path


def _save_directory(
    path: Path,
    sources: list[TensorSource],
    manifest: dict[str, Any],
    shard_size: int,
    fsync: bool,
    hook: Callable[[TensorSource], TensorDigest],
    before_commit: Callable[[int], Mapping[str, bytes]] | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    plan = plan_shards(sources, shard_size)
    weight_map = plan.tensor_to_filename
    with shard_directory(path, fsync=fsync) as d:
        d.write_shards(
            sources, plan, metadata=lambda shard: {"format": "pt", "weightvault.shard": shard},
            on_tensor=hook,
        )  # fmt: skip
        for name, shard in weight_map.items():  # after the checksum, as the rows always had it
            manifest["tensors"][name]["file"] = shard
        d.write_file(MANIFEST_FILE, _json_bytes(manifest))  # checksums filled by the hook
        index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": weight_map}
        d.write_file(INDEX_FILE, _json_bytes(index))
        marker = _json_bytes({"files": sorted({*plan.files, MANIFEST_FILE})})
        if stats is not None:
            stats.update(written_bytes=d.nbytes + len(marker), reused_bytes=0)
        for name, data in (before_commit(d.nbytes + len(marker)) if before_commit else {}).items():
            d.write_file(name, data)
        d.commit(COMMIT_MARKER, marker)


#: runs shorter than this are copied from the mmap rather than read one pread each
_SMALL_RUN_BYTES = 64 << 10


def _unmap_pages(shard: SafetensorsFile, key: str) -> None:
    """Drop the record's pages from this process's mapping once copied (they stay in the page
    cache): a reshard touches every page of every chunk, and mapped pages count as its memory."""
    import mmap

    entry, mapped = shard.entries[key], getattr(shard, "_mmap", None)
    if mapped is None or entry.end <= entry.start or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = entry.start - entry.start % mmap.PAGESIZE
    try:
        mapped.madvise(mmap.MADV_DONTNEED, start, entry.end - start)
    except (OSError, ValueError):  # only a memory hint
        pass


def _pread_exact(span: ByteSpan | None, view: memoryview, offset: int, name: str) -> None:
    """Fill ``view`` from byte ``offset`` of the tensor at ``span``."""
    if span is None:  # an empty record: nothing to read
        return
    done = 0
    while done < len(view):
        got = os.preadv(span.fileno, [view[done:]], span.offset + offset + done)
        if got == 0:
            raise InvalidOffsetError("file shrank while reading", path=span.path, tensor=name)
        done += got


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1, allow_nan=False).encode("utf-8")


def _int_list(value: Any, what: str, *, path: str, tensor: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise InvalidHeaderError(f"chunk {what} {value!r} is not a list of non-negative ints", path=path, tensor=tensor)
    return tuple(value)


def _check_chunked_row(name: str, row: dict[str, Any], path: str) -> None:
    """A chunked row (a distributed save): global dtype and shape, and chunks that tile it."""
    if row["dtype"] == STRING or "stored_as" in row or "file" in row:
        raise InvalidHeaderError("a chunked row has no file, string dtype or stored_as", path=path, tensor=name)
    chunks = row["chunks"]
    if not isinstance(chunks, list):
        raise InvalidHeaderError("manifest chunks is not a list", path=path, tensor=name)
    boxes = []
    for chunk in chunks:
        if not isinstance(chunk, dict):
            raise InvalidHeaderError("a chunk is not an object", path=path, tensor=name)
        for key in ("file", "key", "checksum"):
            if not isinstance(chunk.get(key, ""), str) or (key != "checksum" and key not in chunk):
                raise InvalidHeaderError(f"chunk {key} {chunk.get(key)!r} is not a string", path=path, tensor=name)
        if "data_offsets" in chunk:
            offs = _int_list(chunk["data_offsets"], "data_offsets", path=path, tensor=name)
            if len(offs) != 2 or offs[1] < offs[0]:
                raise InvalidHeaderError(f"chunk data_offsets {list(offs)} are not [begin, end]", path=path, tensor=name)
        boxes.append(
            Box(
                _int_list(chunk.get("offsets"), "offsets", path=path, tensor=name),
                _int_list(chunk.get("sizes"), "sizes", path=path, tensor=name),
            )
        )
    check_tiling(tuple(row["shape"]), boxes, path=path, tensor=name)


def _check_row(name: str, row: Any, path: str) -> None:
    """One manifest row, checked field by field so that no later lookup can fail foreignly."""
    if not isinstance(row, dict):
        raise InvalidHeaderError("manifest row is not an object", path=path, tensor=name)
    dtype = row.get("dtype")
    if not isinstance(dtype, str) or (dtype not in DTYPES and dtype != STRING):
        raise UnknownDtypeError(
            f"manifest dtype {dtype!r} is not a known dtype", path=path, tensor=name
        )
    check_shape(row.get("shape"), path=path, tensor=name)
    for key in ("file", "checksum"):
        if key in row and not isinstance(row[key], str):
            raise InvalidHeaderError(
                f"manifest {key} {row[key]!r} is not a string", path=path, tensor=name
            )
    if dtype == STRING and row.get("stored_as") != "uint8":
        raise InvalidHeaderError("a string tensor must be stored_as uint8", path=path, tensor=name)
    carrier = _STORED_AS.get(dtype, (None,))[0]
    if dtype != STRING and "stored_as" in row and row["stored_as"] != carrier:
        raise InvalidHeaderError(
            f"manifest stores {dtype} as {row['stored_as']!r}, which is not its carrier",
            path=path,
            tensor=name,
        )
    if "chunks" in row:
        _check_chunked_row(name, row, path)


def _parse_manifest(raw: str | bytes, path: str) -> dict[str, Any]:
    manifest = load_json(raw, path=path, what="manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise InvalidHeaderError("manifest does not describe a weightvault checkpoint", path=path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > CHUNKED_FORMAT_VERSION:
        raise InvalidHeaderError(
            f"manifest format_version {version!r} is newer than this library reads "
            f"({CHUNKED_FORMAT_VERSION})",
            path=path,
            hint="upgrade weightvault",
        )
    layout = manifest.get("layout", "native")
    if layout != "native":  # weightvault's DCP backend writes "torch_dcp" (its own reader)
        raise InvalidHeaderError(
            f"manifest has layout {layout!r}, not a native checkpoint",
            path=path,
            hint=f"open it with format={layout!r}" if isinstance(layout, str) else None,
        )
    for key in ("tensors", "aliases", "tree"):
        if not isinstance(manifest.get(key), dict):
            raise InvalidHeaderError(f"manifest has no valid {key!r}", path=path)
    if not isinstance(manifest.get("metadata", {}), dict):
        raise InvalidHeaderError("manifest metadata is not an object", path=path)
    rows = manifest["tensors"]
    for name, row in rows.items():
        _check_row(name, row, path)
    for alias, target in manifest["aliases"].items():
        if not isinstance(target, str) or target not in rows:
            raise AliasError(f"alias points at missing tensor {target!r}", path=path, tensor=alias)
    check_spec(manifest["tree"], path=path)
    for name in tensor_names(manifest["tree"]):
        if name not in rows and name not in manifest["aliases"]:
            raise InvalidHeaderError(
                "the tree spec names a tensor the manifest does not list", path=path, tensor=name
            )
    return manifest


def _read_manifest_file(root: Path) -> bytes:
    """``manifest.json`` of a directory checkpoint: a regular file inside it, of bounded size."""
    return read_index(root, MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES)


class NativeReader(FormatReader):
    """Reads both native forms; tensors are zero-copy views of the mmapped shards."""

    format_name = "native"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        p = Path(path)
        self._shards: dict[str, SafetensorsFile] = {}
        if p.is_dir():
            self.root = p
            if not (p / COMMIT_MARKER).exists():
                raise CheckpointNotFoundError(
                    f"incomplete checkpoint: no {COMMIT_MARKER} marker (an interrupted save?)",
                    path=p,
                )
            self._single: str | None = None
            self.manifest = _parse_manifest(_read_manifest_file(p), os.fspath(p / MANIFEST_FILE))
        else:
            self.root = p.parent
            st = SafetensorsFile(p)
            self._shards[p.name] = st
            self._single = p.name  # the one file, whatever name the manifest recorded for it
            try:
                if MANIFEST_KEY not in st.metadata:
                    raise InvalidHeaderError(
                        "safetensors file carries no weightvault manifest", path=p
                    )
                self.manifest = _parse_manifest(st.metadata[MANIFEST_KEY], self.path)
            except BaseException:
                st.close()
                raise
        self._rows: dict[str, dict[str, Any]] = self.manifest["tensors"]
        self._aliases: dict[str, str] = self.manifest["aliases"]
        self._names = [n for n in tensor_names(self.manifest["tree"]) if n in self._rows or n in self._aliases]
        seen = set(self._names)
        self._names += [n for n in self._rows if n not in seen]
        self._parts: dict[str, list[tuple[Box, SafetensorsFile, dict[str, Any]]]] = {}
        #: data bytes read by :meth:`read_region` and :meth:`read_jobs` of chunked tensors
        self.bytes_read = 0

    # -- shard access ----------------------------------------------------------------------------
    def _row(self, name: str) -> dict[str, Any]:
        target = self._aliases.get(name, name)
        if target not in self._rows:
            self._require(name)
        return self._rows[target]

    def _shard(self, file: str, tensor: str) -> SafetensorsFile:
        if self._single is not None:
            return self._shards[self._single]
        if "/" in file or "\\" in file or file in ("", ".", ".."):
            raise InvalidHeaderError(f"shard name {file!r} leaves the checkpoint", path=self.path, tensor=tensor)
        if file not in self._shards:
            # resolves links: a shard that is a symlink to a file outside the directory is refused
            self._shards[file] = SafetensorsFile(resolve_shard(self.root, file, path=self.path, tensor=tensor))
        return self._shards[file]

    def _entry_checked(self, name: str) -> tuple[SafetensorsFile, str, dict[str, Any]]:
        target = self._aliases.get(name, name)
        row = self._row(name)
        shard = self._shard(row.get("file", ""), target)
        entry = shard.entries.get(target)
        if entry is None:
            raise InvalidHeaderError(f"manifest lists the tensor in {row.get('file')} but it is not there", path=shard.path, tensor=target)
        stored_dtype = row.get("stored_as", row["dtype"])
        if row["dtype"] == STRING:  # offsets + bytes: any length, checked when decoded
            expected_shape = entry.shape if len(entry.shape) == 1 else (-1,)
        else:
            expected_shape = tuple(row["shape"]) + ((_STORED_AS[row["dtype"]][1],) if "stored_as" in row else ())
        if entry.dtype != stored_dtype or entry.shape != expected_shape:
            raise InvalidHeaderError(
                f"manifest says {row['dtype']} {row['shape']} but the shard holds {entry.dtype} {list(entry.shape)}",
                path=shard.path,
                tensor=target,
            )
        return shard, target, row

    # -- chunked tensors (distributed saves) ---------------------------------------------------
    def is_chunked(self, name: str) -> bool:
        """True for a tensor stored as chunks of its global shape (a distributed save)."""
        return "chunks" in self._row(name)

    def chunks(self, name: str) -> list[Box]:
        """The boxes of the global tensor stored as chunks (one box for a whole tensor)."""
        row = self._row(name)
        if "chunks" not in row:
            return [Box((0,) * len(row["shape"]), tuple(row["shape"]))]
        return [Box(tuple(c["offsets"]), tuple(c["sizes"])) for c in row["chunks"]]

    def _chunk_parts(self, name: str) -> list[tuple[Box, SafetensorsFile, dict[str, Any]]]:
        """Each chunk's box, shard and manifest entry, after checking the manifest against the
        shard's own header (dtype, shape = the chunk's sizes, the recorded byte range)."""
        target = self._aliases.get(name, name)
        if target in self._parts:
            return self._parts[target]
        row = self._row(name)
        parts = []
        for chunk in row["chunks"]:
            shard = self._shard(chunk["file"], target)
            entry = shard.entries.get(chunk["key"])
            box = Box(tuple(chunk["offsets"]), tuple(chunk["sizes"]))
            if entry is None:
                raise InvalidHeaderError(
                    f"the manifest's chunk record {chunk['key']!r} is not in the shard",
                    path=shard.path,
                    tensor=target,
                )
            if entry.dtype != row["dtype"] or entry.shape != box.sizes:
                raise InvalidHeaderError(
                    f"manifest says chunk {row['dtype']} {list(box.sizes)} but the shard holds "
                    f"{entry.dtype} {list(entry.shape)}",
                    path=shard.path,
                    tensor=target,
                )
            base = 8 + shard.header_len
            if "data_offsets" in chunk and chunk["data_offsets"] != [entry.start - base, entry.end - base]:
                raise InvalidOffsetError(
                    f"manifest puts chunk {chunk['key']!r} at data bytes {chunk['data_offsets']}, the "
                    f"shard at {[entry.start - base, entry.end - base]}",
                    path=shard.path,
                    tensor=target,
                )
            parts.append((box, shard, chunk))
        self._parts[target] = parts
        return parts

    def read_region(
        self,
        name: str,
        offsets: Sequence[int],
        sizes: Sequence[int],
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The box ``offsets`` x ``sizes`` of the global tensor, reading only the bytes of the
        stored chunks that overlap it (``pread`` of their C-order runs; counted in
        :attr:`bytes_read`). ``out``: a C-contiguous array of ``sizes`` to fill."""
        import numpy as np

        row = self._row(name)
        if row["dtype"] == STRING or "stored_as" in row:
            raise UnsupportedOperationError("a region of a string or complex128 tensor", path=self.path, tensor=name)
        want = Box(tuple(int(o) for o in offsets), tuple(int(s) for s in sizes))
        shape = tuple(row["shape"])
        if len(want.offsets) != len(shape) or any(
            o < 0 or s < 0 or o + s > d for o, s, d in zip(want.offsets, want.sizes, shape, strict=False)
        ):
            raise ValueError(f"{name}: region {list(want.offsets)} + {list(want.sizes)} is outside {list(shape)}")
        dtype = dtype_from_name(row["dtype"])
        if out is None:
            out = np.empty(want.sizes, dtype)
        elif out.shape != want.sizes or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"{name}: out must be a C-contiguous {dtype} array of shape {want.sizes}")
        self._run_jobs(self._region_jobs(name, want, out))
        return out

    def _run_jobs(self, jobs: list[Callable[[], None]]) -> None:
        """Run read jobs: one after the other here (local ``pread``); a remote reader runs its
        ranged requests in parallel."""
        for job in jobs:
            job()

    def _region_jobs(self, name: str, want: Box, out: np.ndarray) -> list[Callable[[], None]]:
        if self.is_chunked(name):
            pieces = [(box, shard, c["key"]) for box, shard, c in self._chunk_parts(name)]
        else:
            shard, target, _ = self._entry_checked(name)
            pieces = [(self.chunks(name)[0], shard, target)]
        jobs = []
        for box, shard, key in pieces:
            common = intersect(box, want)
            if common is None or common.numel == 0:
                continue
            jobs += self._piece_jobs(shard, key, box, common, want, out, name)
        return jobs

    def _piece_jobs(
        self, shard: Any, key: str, box: Box, common: Box, want: Box, out: np.ndarray, name: str
    ) -> list[Callable[[], None]]:
        """The reads that put the part ``common`` of the stored chunk ``box`` into ``out`` (the
        box ``want``): one job here; a remote reader makes ranged requests instead."""
        return [self._piece_job(shard, key, box, common, want, out, name)]

    def _piece_job(
        self, shard: SafetensorsFile, key: str, box: Box, common: Box, want: Box, out: np.ndarray, name: str
    ) -> Callable[[], None]:
        import numpy as np

        local = Box(tuple(c - b for c, b in zip(common.offsets, box.offsets, strict=True)), common.sizes)
        starts, run = byte_runs(box.sizes, local)
        itemsize = out.dtype.itemsize
        span = shard.span(key)
        if len(starts) > 1 and run * itemsize < _SMALL_RUN_BYTES:
            # Many short runs (a column slice of a row-sharded chunk): one pread each costs more
            # than the copy, so copy them out of the mmapped record; the kernel pages in only the
            # pages holding them (the bytes between runs that share a page come along).
            def copy_job() -> None:
                out[(*common.slices(want.offsets), Ellipsis)] = shard.view(key)[local.slices()]
                self.bytes_read += local.numel * itemsize
                _unmap_pages(shard, key)

            return copy_job

        def job() -> None:
            dest = out[(*common.slices(want.offsets), Ellipsis)]  # a view, also for 0-d
            buf = dest if dest.flags.c_contiguous else np.empty(common.sizes, out.dtype)
            flat = memoryview(buf.reshape(-1).view(np.uint8))
            step = run * itemsize
            for i, start in enumerate(starts.tolist()):
                _pread_exact(span, flat[i * step : (i + 1) * step], start * itemsize, name)
            self.bytes_read += step * len(starts)
            if buf is not dest:
                dest[...] = buf

        return job

    # -- FormatReader hooks ----------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        row = self._row(name)
        if "chunks" in row:
            files = sorted({c["file"] for c in row["chunks"]})
            return TensorInfo(name, row["dtype"], tuple(row["shape"]), {
                "file": files[0] if len(files) == 1 else None, "files": files,
                "chunks": len(row["chunks"]), "checksum": None,
                **({"alias_of": self._aliases[name]} if name in self._aliases else {}),
            })  # fmt: skip
        extra: dict[str, Any] = {"file": row.get("file"), "checksum": row.get("checksum")}
        if name in self._aliases:
            extra["alias_of"] = self._aliases[name]
        if row["dtype"] == STRING:
            shard, target, _ = self._entry_checked(name)
            extra["nbytes"] = shard.entries[target].end - shard.entries[target].start
        return TensorInfo(name, row["dtype"], tuple(row["shape"]), extra)

    def checked_info(self, name: str) -> TensorInfo:
        """``info(name)`` after checking the manifest row against the shard's own header, so a
        caller may allocate ``nbytes`` (the shard's bytes are there)."""
        if self.is_chunked(name):
            self._chunk_parts(name)  # every chunk's bytes are there and they tile the shape
        else:
            self._entry_checked(name)
        return self.info(name)

    def get(self, name: str) -> np.ndarray:
        if self.is_chunked(name):  # assembled whole from its chunks
            info = self.checked_info(name)
            return self.read_region(name, (0,) * len(info.shape), info.shape)
        shard, target, row = self._entry_checked(name)
        arr = shard.view(target)
        if row["dtype"] == STRING:
            return decode_strings(arr, tuple(row["shape"]), path=shard.path, tensor=target)
        if "stored_as" in row:
            arr = arr.view(dtype_from_name(row["dtype"])).reshape(tuple(row["shape"]))
        return arr

    def byte_span(self, name: str) -> ByteSpan | None:
        if self.is_chunked(name):
            return None
        shard, target, row = self._entry_checked(name)
        return None if row["dtype"] == STRING else shard.span(target)

    def read(self, name: str, out: np.ndarray) -> None:
        """Copy the tensor into ``out`` (an array of the right dtype and shape) with one read."""
        for job in self.read_jobs(name, out):
            job()

    def read_jobs(self, name: str, out: np.ndarray) -> list[Callable[[], None]]:
        """Independent reads that together fill ``out``; safe to run on a thread pool. Not for
        string tensors (``get`` decodes those)."""
        if self.is_chunked(name):  # one job per chunk
            info = self.checked_info(name)
            if out.shape != info.shape or not out.flags.c_contiguous:
                raise ValueError(f"{name}: out must be C-contiguous of shape {info.shape}")
            return self._region_jobs(name, Box((0,) * len(info.shape), info.shape), out)
        shard, target, row = self._entry_checked(name)
        if row["dtype"] == STRING:
            raise UnsupportedOperationError(
                "a string tensor is read with get()", path=self.path, tensor=name
            )
        return shard.read_jobs(target, out)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.manifest.get("metadata", {}))

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def tree_spec(self) -> dict[str, Any]:
        return self.manifest["tree"]

    def structure(self) -> Any:
        return unflatten(self.manifest["tree"], self.get)

    def verify(self) -> VerifyResult:
        result = VerifyResult(self.path)
        for name in self._rows:
            if self.is_chunked(name):
                for box, shard, chunk in self._chunk_parts(name):
                    if not chunk.get("checksum"):
                        result.unchecked += 1
                        continue
                    result.checked += 1
                    actual = checksum(shard.raw(chunk["key"]))
                    if actual != chunk["checksum"]:
                        result.failures.append(
                            f"{name}: chunk at {list(box.offsets)} checksum {actual} != recorded {chunk['checksum']}"
                        )
                continue
            shard, target, row = self._entry_checked(name)
            expected = row.get("checksum")
            if not expected:
                result.unchecked += 1
                continue
            actual = checksum(shard.raw(target))
            result.checked += 1
            if actual != expected:
                result.failures.append(f"{name}: checksum {actual} != recorded {expected}")
        return result

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()


class NativeFormat(Format):
    name = "native"
    description = "weightvault checkpoint: safetensors file or sharded directory with a manifest"
    can_write_strings = True
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "shard_size": "maximum data bytes per shard of a checkpoint directory",
        "single_file": "write one .safetensors file (default: when the name ends in .safetensors)",
        "fsync": "make the files durable before the checkpoint is committed (default true)",
        "progress": "show a progress bar (default: on a terminal, for large files)",
        "extra_manifest": "extra JSON kept in the manifest (convert records the source here)",
        "include": "glob patterns over tensor names to save",
        "exclude": "glob patterns over tensor names to leave out",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if path.is_dir():
            return (path / MANIFEST_FILE).exists() or (path / COMMIT_MARKER).exists()
        return len(head) > 8 and b'"' + MANIFEST_KEY.encode() + b'"' in head[8:]

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> NativeReader:
        return NativeReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        obj = tensors if isinstance(tensors, dict) or _is_lazy(tensors) else dict(tensors.items())
        save_native(path, obj, metadata=metadata, **options)
