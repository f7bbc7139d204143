"""safetensors files and sharded Hugging Face repositories, without the safetensors package.

Two layouts, one format name:

* a single ``.safetensors`` file (:class:`SafetensorsReader`);
* a sharded repository: a directory holding ``model.safetensors.index.json``
  (``{"metadata": {...}, "weight_map": {tensor: shard file}}``, a transformers convention) and the
  shard files (:class:`ShardedSafetensorsReader`). It can be opened through the directory or the
  index file. Opening validates the whole repository before any tensor is read: every shard named
  must be a relative path that stays inside the directory, must exist and be a valid safetensors
  file, and must hold every tensor the index assigns to it. A weightvault native directory also has
  such an index but carries ``manifest.json``; it is detected as ``native`` first, and this
  format's sniff requires the index *and* no manifest.

Writing picks the layout from the destination: a name ending in ``.safetensors`` (without a
``shard_size`` option) gives a single file; anything else, or ``shard_size=N`` (bytes of tensor data
per shard, default 5 GB as in transformers), gives a repository directory built under a temporary
name with :mod:`weightvault.core.shards` and named ``model-0000i-of-0000n.safetensors``.
Each shard's ``__metadata__`` carries the (string-valued) metadata plus ``format: pt``, which
transformers requires.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from weightvault.abc.format import ByteSpan, DescribedTensors, Format, FormatReader, TensorInfo
from weightvault.core.io import atomic_write
from weightvault.core.progress import progress_bar
from weightvault.core.safetensors_io import (
    ST_CODES,
    ProgressDigest,
    SafetensorsFile,
    TensorDigest,
    TensorSource,
    check_tensor_names,
    write_safetensors,
)
from weightvault.core.shards import plan_shards, read_index, resolve_shard, shard_directory
from weightvault.errors import (
    CheckpointNotFoundError,
    InvalidHeaderError,
    UnsupportedOperationError,
)
from weightvault.formats._common import fetch_array, span_of

if TYPE_CHECKING:  # numpy is imported where data is touched: header-only commands never need it
    import numpy as np

__all__ = ["INDEX_FILE", "SafetensorsFormat", "SafetensorsReader", "ShardedSafetensorsReader"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_INDEX_BYTES = 100_000_000
DEFAULT_SHARD_SIZE = 5_000_000_000  # transformers' max_shard_size="5GB"


class SafetensorsReader(FormatReader):
    format_name = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._file = SafetensorsFile(path)
        # Keep the file's own order (by offset), which is how the producer laid it out.
        self._names = sorted(self._file.entries, key=lambda n: self._file.entries[n].start)

    def keys(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        e = self._file.entries[name]
        return TensorInfo(name, e.dtype, e.shape, {"offsets": [e.start, e.end]})

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        return self._file.view(name)

    def byte_span(self, name: str) -> ByteSpan | None:
        self._require(name)
        return self._file.span(name)

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self._file.metadata)

    def close(self) -> None:
        self._file.close()


class ShardedSafetensorsReader(FormatReader):
    """A Hugging Face sharded repository, read as one checkpoint (zero-copy views of the shards)."""

    format_name = "safetensors"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        p = Path(path)
        self.root = p if p.is_dir() else p.parent
        self._shards: dict[str, SafetensorsFile] = {}
        try:
            index_path = self.root / INDEX_FILE if p.is_dir() else p
            if index_path.exists():
                self._index_meta, self._map = self._read_index(index_path)
            elif (self.root / SINGLE_FILE).is_file():
                # a one-file repository (transformers writes no index when nothing is sharded)
                self._index_meta = {}
                st = self._open_shard(SINGLE_FILE, None)
                self._map = {name: SINGLE_FILE for name in sorted(st.entries, key=lambda n: st.entries[n].start)}
            else:
                raise CheckpointNotFoundError(f"no {INDEX_FILE} or {SINGLE_FILE} in the directory", path=self.path)
            for name, file in self._map.items():
                shard = self._open_shard(file, name)
                if name not in shard.entries:
                    raise InvalidHeaderError(
                        f"the index puts this tensor in {file}, which does not hold it", path=self.path, tensor=name
                    )
        except BaseException:
            self.close()
            raise

    def _read_index(self, index_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
        import json

        # An index named by the caller may itself be a link (the Hugging Face cache links every
        # file to a blob); one found inside the directory must stay inside it.
        named = os.fspath(index_path) == self.path
        homes = (os.path.dirname(os.path.realpath(index_path)),) if named else ()
        raw = read_index(self.root, index_path.name, max_bytes=MAX_INDEX_BYTES, what="index", link_homes=homes)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidHeaderError(f"index is not valid UTF-8 JSON: {exc}", path=index_path) from None
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise InvalidHeaderError("index needs a weight_map of tensor name -> file name", path=index_path)
        meta = doc.get("metadata") or {}
        if not isinstance(meta, dict):
            raise InvalidHeaderError("index metadata is not an object", path=index_path)
        return meta, weight_map

    def _open_shard(self, file: str, tensor: str | None) -> SafetensorsFile:
        if file not in self._shards:
            self._shards[file] = SafetensorsFile(resolve_shard(self.root, file, path=self.path, tensor=tensor))
        return self._shards[file]

    def keys(self) -> list[str]:
        return list(self._map)

    def info(self, name: str) -> TensorInfo:
        self._require(name)
        file = self._map[name]
        e = self._shards[file].entries[name]
        return TensorInfo(name, e.dtype, e.shape, {"file": file, "offsets": [e.start, e.end]})

    def get(self, name: str) -> np.ndarray:
        self._require(name)
        return self._shards[self._map[name]].view(name)

    def byte_span(self, name: str) -> ByteSpan | None:
        self._require(name)
        return self._shards[self._map[name]].span(name)

    def __contains__(self, name: object) -> bool:
        return name in self._map

    @property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for shard in self._shards.values():
            out.update(shard.metadata)
            break
        out.update(self._index_meta)
        return out

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        self._shards.clear()


def _string_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    import json

    out = {}
    for k, v in (metadata or {}).items():
        out[str(k)] = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return out


class SafetensorsFormat(Format):
    name = "safetensors"
    description = "safetensors file (Hugging Face)"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "shard_size": "bytes per shard: a sharded repository with model.safetensors.index.json",
        "progress": "show a progress bar (default: on a terminal, for large files)",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if path.is_dir():
            return (path / INDEX_FILE).is_file() and not (path / "manifest.json").exists()
        if path.name.endswith(INDEX_FILE):
            return head.lstrip()[:1] == b"{" and not (path.parent / "manifest.json").exists()
        if len(head) < 10:
            return False
        n = int.from_bytes(head[:8], "little")
        return 2 <= n <= 100_000_000 and head[8:9] == b"{"

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> FormatReader:
        p = Path(path)
        if p.is_dir() or p.name.endswith(".index.json"):
            return ShardedSafetensorsReader(p)
        return SafetensorsReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Write one ``.safetensors`` file, or a sharded repository (a directory, or any name with
        ``shard_size=`` bytes per shard). ``progress``: show a bar (default: on a terminal, for
        64 MiB or more)."""
        import numpy as np

        sources = []
        for name in tensors:
            info = tensors.info(name) if isinstance(tensors, DescribedTensors) else None
            if info is not None:
                dtype, shape = info.dtype, info.shape
            else:
                arr = np.asarray(tensors[name])
                from weightvault.core.dtypes import dtype_name

                dtype, shape = dtype_name(arr.dtype, tensor=name), tuple(arr.shape)
            if dtype == "string":
                raise UnsupportedOperationError(
                    "safetensors cannot hold string tensors", path=path, tensor=name,
                    hint="write the native format (it keeps them), or convert with "
                    "--skip-unsupported (skip_unsupported=True) to leave them out",
                )
            if dtype not in ST_CODES:
                raise UnsupportedOperationError(
                    f"safetensors has no dtype for {dtype}", path=path, tensor=name,
                    hint="write the native format instead (it stores complex128 as a float64 view)",
                )
            sources.append(TensorSource(name, dtype, shape, (lambda n: lambda: fetch_array(tensors, n))(name),
                                        span_of(tensors, name)))
        check_tensor_names(sources, path=path)
        shard_size = options.get("shard_size")
        total = sum(src.nbytes for src in sources)
        with progress_bar(f"writing {Path(path).name}", total, enabled=options.get("progress")) as advance:
            digests = ProgressDigest.factory(advance)
            if shard_size is None and os.fspath(path).lower().endswith(".safetensors"):
                with atomic_write(path) as f:
                    write_safetensors(f, sources, _string_metadata(metadata), on_tensor=digests)
                return
            _write_repository(Path(path), sources, metadata, int(shard_size or DEFAULT_SHARD_SIZE), digests)


def _write_repository(
    path: Path,
    sources: list[TensorSource],
    metadata: Mapping[str, Any] | None,
    shard_size: int,
    digests: Callable[[TensorSource], TensorDigest],
) -> None:
    import json

    if shard_size <= 0:
        raise UnsupportedOperationError(f"shard_size must be positive, got {shard_size}", path=path)
    plan = plan_shards(sources, shard_size)  # keeps the caller's order
    shard_meta = {"format": "pt", **_string_metadata(metadata)}
    with shard_directory(path) as d:
        d.write_shards(sources, plan, metadata=lambda _file: shard_meta, on_tensor=digests)
        index_meta: dict[str, Any] = {k: v for k, v in (metadata or {}).items() if k != "total_size"}
        index_meta["total_size"] = plan.total_bytes
        index = {"metadata": index_meta, "weight_map": plan.tensor_to_filename}
        d.write_file(INDEX_FILE, json.dumps(index, indent=2, ensure_ascii=False, default=str).encode("utf-8"))
