"""Keras HDF5 weights: Keras 3 ``.weights.h5`` / ``.keras`` and legacy Keras/tf.keras ``.h5``.

h5py is this format's optional dependency and is imported lazily (a missing h5py raises
:class:`MissingDependencyError` with the install hint). Nothing from a file is ever executed: the
``.keras`` config is parsed as JSON only.

**Keras 3 layout** (``saving_lib.H5IOStore``): every object that owns variables has a group with a
``vars`` sub-group whose datasets are named ``"0"``, ``"1"``, ... in the order of
``trainable_variables + non_trainable_variables``; layers sit under ``layers/<snake_case class>``
(``dense``, ``dense_1``, ...), nested objects under their attribute name (``lstm/cell``). The file
does not store variable names, only positions. Tensor names are rebuilt as Keras' own variable
paths (``fc1/kernel``, ``lstm/lstm_cell/kernel``):

* the layer part is the chain of ``name`` attributes of the enclosing ``vars`` groups (written by
  Keras >= 3.x; for older files the h5 group name is used);
* the variable part comes from a table of the built-in layers keyed by the class (taken from the
  ``.keras`` config when there is one, otherwise from the snake_case group name), adjusted for
  ``use_bias=False`` / ``center`` / ``scale`` from the config; when the class is unknown or the count
  does not fit, the position is used (``my_layer/0``);
* optimizer variables are named ``optimizer/<i>``; variables of the model object itself
  ``<model name>/<i>``.

With a ``.keras`` archive, tensors come out in the model's layer order (from ``config.json``,
exposed as ``metadata["keras"]["config"]``); a bare ``.weights.h5`` has no order beyond the
group names.

**Legacy layout** (``model.save("x.h5")`` -> ``model_weights`` group; ``save_weights("x.h5")`` ->
root): ``layer_names`` lists layers (attributes over 64 KB are split into ``layer_names0``,
``layer_names1``, ...), each layer group lists ``weight_names``, and datasets live at
``<layer>/<weight name>``. Tensor names are the weight names without the ``:0`` suffix
(``dense/kernel:0`` -> ``dense/kernel``); optimizer weights are ``optimizer/<weight name>``.

Files written here also store each variable's full name in a dataset attribute ``path`` (Keras
ignores it), so any names round-trip exactly; the reader prefers that attribute when present.

Every tensor's HDF5 location is kept in ``info().extra["h5_path"]`` and in
``metadata["keras"]["h5_paths"]``, so a conversion that passes the metadata along (``convert``
does, and the native format stores it) can write the exact layout back.

**Writing** (``layout="keras3"`` for names ending ``.weights.h5``, ``layout="legacy"`` for other
``.h5`` names): each tensor's group is taken from option ``paths={name: h5 path}``, else from
``metadata["keras"]["h5_paths"]``, else derived from the name (Keras 3: ``a/b/var`` ->
``layers/a/b/vars`` with ``*_cell`` sub-objects under ``cell``, positions following the
variable-name table, else the mapping order; this matches Keras only where the layer names equal
Keras' snake_case class paths. Legacy: the layer is the last path part before the variable, skipping
a ``*_cell`` part, so ``sequential/dense/kernel`` and ``lstm/lstm_cell/kernel`` go to ``dense`` and
``lstm``). Legacy files are loaded positionally by Keras, so the mapping order must be the model's
layer order.

bfloat16: Keras 3 files store it as Keras does (2-byte opaque data with the dataset attribute
``dtype="bfloat16"``); legacy files store float32 (exact) with that attribute, because Keras' legacy
loader cannot cast opaque data (it fails on its own legacy bfloat16 files). The reader accepts all
three forms, including Keras' unmarked 2-byte opaque legacy datasets.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from weightvault.abc.format import Format, FormatReader, TensorInfo
from weightvault.core.dtypes import dtype_name
from weightvault.core.io import atomic_write
from weightvault.core.limits import check_depth, check_expansion
from weightvault.errors import (
    DuplicateTensorError,
    InvalidHeaderError,
    MissingDependencyError,
    ResourceLimitError,
    TruncatedFileError,
    UnknownDtypeError,
    UnsupportedOperationError,
    WeightVaultError,
)
from weightvault.formats._common import describe_entry, fetch_array, jsonable

__all__ = ["KerasFormat", "KerasReader"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_MEMBERS = (b"metadata.json", b"config.json", b"model.weights.h5")
MAX_ZIP_RATIO = 1100

#: variable names in Keras' order (trainable then non-trainable), by snake_case class name
VAR_NAMES: dict[str, list[str]] = {
    **{k: ["kernel", "bias"] for k in (
        "dense", "einsum_dense", "conv1d", "conv2d", "conv3d", "conv1d_transpose", "conv2d_transpose",
        "conv3d_transpose", "depthwise_conv1d", "depthwise_conv2d",
    )},
    "separable_conv1d": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "separable_conv2d": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "batch_normalization": ["gamma", "beta", "moving_mean", "moving_variance"],
    "layer_normalization": ["gamma", "beta"],
    "group_normalization": ["gamma", "beta"],
    "embedding": ["embeddings"],
    "lstm_cell": ["kernel", "recurrent_kernel", "bias"],
    "gru_cell": ["kernel", "recurrent_kernel", "bias"],
    "simple_rnn_cell": ["kernel", "recurrent_kernel", "bias"],
    "p_re_lu": ["alpha"],
    "prelu": ["alpha"],
}  # fmt: skip
_CLASS_KEYS = {"Conv1D": "conv1d", "Conv2D": "conv2d", "Conv3D": "conv3d", "PReLU": "p_re_lu",
               "DepthwiseConv1D": "depthwise_conv1d", "DepthwiseConv2D": "depthwise_conv2d",
               "SeparableConv1D": "separable_conv1d", "SeparableConv2D": "separable_conv2d",
               "Conv1DTranspose": "conv1d_transpose", "Conv2DTranspose": "conv2d_transpose",
               "Conv3DTranspose": "conv3d_transpose", "LSTMCell": "lstm_cell", "GRUCell": "gru_cell"}  # fmt: skip


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(
            "Keras HDF5 files need h5py", hint="pip install 'weightvault[keras]' (or pip install h5py)"
        ) from exc
    return h5py


def _snake(class_name: str) -> str:
    if class_name in _CLASS_KEYS:
        return _CLASS_KEYS[class_name]
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def _class_key(group_key: str) -> str:
    return re.sub(r"_\d+$", "", group_key)


def _var_names(class_key: str, count: int, cfg: Mapping[str, Any] | None) -> list[str]:
    """Variable names for a layer's ``count`` stored variables, or positions when unsure."""
    names = list(VAR_NAMES.get(class_key, []))
    cfg = cfg or {}
    if names and names[-1] == "bias" and cfg.get("use_bias") is False:
        names.pop()
    if class_key in ("batch_normalization", "layer_normalization", "group_normalization"):
        if cfg.get("center") is False:
            names.remove("beta")
        if cfg.get("scale") is False:
            names.remove("gamma")
        if not cfg and class_key == "batch_normalization" and count == 3:
            names.remove("beta")  # no config: assume the more common center=False over scale=False
        if not cfg and count == 2 and class_key == "batch_normalization":
            names = ["moving_mean", "moving_variance"]
    if names and len(names) == count - 1 and names[-1] != "bias" and class_key in VAR_NAMES and "bias" in VAR_NAMES[class_key]:
        names.append("bias")
    if names and not cfg and len(names) == count + 1 and names[-1] == "bias":
        names.pop()  # a kernel-only Dense/Conv without a config
    if len(names) != count:
        return [str(i) for i in range(count)]
    return names


def _decode(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _attr_list(group: Any, name: str, read: Any) -> list[str]:
    """A string-list attribute, joined from Keras' ``name0``, ``name1``... chunks when split;
    ``read(group, name)`` reads one attribute (after checking its size)."""
    if name in group.attrs:
        values = list(np.atleast_1d(read(group, name)))
    else:
        values = []
        i = 0
        while f"{name}{i}" in group.attrs:
            values.extend(np.atleast_1d(read(group, f"{name}{i}")))
            i += 1
    return [_decode(v) for v in values if not isinstance(v, (float, np.floating))]


def _walk_config(config: Any, path: str | None = None) -> dict[str, dict[str, Any]]:
    """layer name -> {"class_name", "config", "order"} from a .keras config (nested models too)."""
    found: dict[str, dict[str, Any]] = {}

    def visit(node: Any, depth: int = 0) -> None:
        check_depth(depth, path=path, what="the Keras model config")
        if isinstance(node, dict):
            cfg = node.get("config")
            if "class_name" in node and isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
                found.setdefault(cfg["name"], {"class_name": node["class_name"], "config": cfg, "order": len(found)})
            for v in node.values():
                visit(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                visit(v, depth + 1)

    visit(config)
    return found


def _parse_json(text: str | bytes, *, path: str, what: str) -> Any:
    """JSON from a file, with its failures (bad syntax, bad UTF-8, nesting deep enough to
    exhaust Python's stack) as weightvault errors."""
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidHeaderError(f"{what} is not JSON: {exc}", path=path) from None
    except RecursionError:
        raise ResourceLimitError(f"{what} is nested too deeply to parse", path=path) from None
    _check_nesting(doc, path=path, what=what)
    return doc


def _check_nesting(doc: Any, *, path: str, what: str) -> None:
    """Refuse JSON nested deeper than ``MAX_NESTING`` (walked without recursion), so that no
    consumer of the metadata (``json.dumps``, ``jsonable``) recurses into a RecursionError."""
    pending: list[tuple[Any, int]] = [(doc, 0)]
    while pending:
        node, depth = pending.pop()
        check_depth(depth, path=path, what=what)
        if isinstance(node, dict):
            pending.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            pending.extend((v, depth + 1) for v in node)


# -- guards: nothing outside the named file, nothing unbounded ------------------------------------
#: exceptions h5py raises for damaged files; turned into weightvault errors at the format boundary
_H5PY_ERRORS = (RuntimeError, OSError, KeyError, ValueError, TypeError, OverflowError, IndexError)
#: soft links followed while resolving one name (HDF5's own default limit)
MAX_SOFT_LINK_HOPS = 16
#: links visited when checking a file (a Keras file has a few per variable)
MAX_H5_LINKS = 1_000_000
#: HDF5 filters that ship with the library or h5py; any other id makes HDF5 search for a
#: plugin library to load, so such datasets are refused rather than decoded
_BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
_UNDEFINED_ADDRESS = (1 << 64) - 1


@contextlib.contextmanager
def _h5_errors(path: str, what: str, tensor: str | None = None) -> Iterator[None]:
    """Turn h5py's own failures on a damaged file into :class:`InvalidHeaderError` /
    :class:`TruncatedFileError` naming the file, the dataset and what was being read."""
    try:
        yield
    except WeightVaultError:
        raise
    except _H5PY_ERRORS as exc:
        text = str(exc) or type(exc).__name__
        cls = TruncatedFileError if "truncated" in text.lower() else InvalidHeaderError
        raise cls(f"{what}: HDF5 reports {text}", path=path, tensor=tensor) from None


def _superblock_offset(read: Callable[[int, int], bytes], size: int) -> int:
    """Where the HDF5 signature is: 0, or a power of two from 512 on (after a user block)."""
    offset = 0
    while offset + len(HDF5_MAGIC) <= size:
        if read(offset, len(HDF5_MAGIC)) == HDF5_MAGIC:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return -1


def check_superblock(read: Callable[[int, int], bytes], size: int, *, path: str) -> None:
    """Cheap checks of the HDF5 superblock before h5py sees the file (``read(offset, n)``: up to
    ``n`` bytes of the file at ``offset``; ``size``: the file's length).

    HDF5 itself trusts the superblock's addresses and sizes; a flipped byte there sends it far
    into (or past) the file. Checked here: the signature, a known superblock version (0-3), the
    sizes of offsets and lengths (2-8 bytes), the B-tree K values, that the base address is where
    the signature is, that the end-of-file address does not pass the file's end (HDF5 reports a
    truncated file only after reading), that the root group's object header lies inside it, and
    that there is no driver-info block (the family/multi drivers open other files).
    """
    sig = _superblock_offset(read, size)
    if sig < 0:
        raise InvalidHeaderError("no HDF5 signature", path=path)
    body = read(sig, 256)
    if len(body) < 24:  # the shortest superblock (version 2/3 with 2-byte offsets) has 24 bytes
        raise TruncatedFileError("the HDF5 superblock is cut off", path=path)
    version = body[8]
    if version > 3:
        raise InvalidHeaderError(f"unknown HDF5 superblock version {version}", path=path)
    if version <= 1:
        so, sl = body[13], body[14]
        fixed = 24 if version == 0 else 28
        if body[12] != 0 or body[9] != 0 or body[10] != 0:
            raise InvalidHeaderError("HDF5 superblock names unknown sub-format versions", path=path)
        leaf_k, node_k = int.from_bytes(body[16:18], "little"), int.from_bytes(body[18:20], "little")
        if leaf_k == 0 or node_k == 0:
            raise InvalidHeaderError("HDF5 superblock has a zero B-tree K", path=path)
        addresses = ("base", "free space", "end of file", "driver info")
    else:
        so, sl = body[9], body[10]
        fixed = 12
        addresses = ("base", "superblock extension", "end of file", "root object header")
    if so not in (2, 4, 8) or sl not in (2, 4, 8):
        raise InvalidHeaderError(f"HDF5 superblock gives {so}-byte offsets and {sl}-byte lengths", path=path)
    need = fixed + so * (len(addresses) + (2 if version <= 1 else 0))
    if len(body) < need:
        raise TruncatedFileError("the HDF5 superblock is cut off", path=path)
    undefined = (1 << (8 * so)) - 1
    values = {
        what: int.from_bytes(body[fixed + i * so : fixed + (i + 1) * so], "little") for i, what in enumerate(addresses)
    }
    if version <= 1:  # the root group's symbol table entry follows: link name offset, header address
        values["root object header"] = int.from_bytes(body[fixed + 5 * so : fixed + 6 * so], "little")
        if values["driver info"] != undefined:
            raise InvalidHeaderError(
                "HDF5 superblock has a driver-info block (a family/multi file spread over other files)", path=path
            )
    if values["base"] != sig:
        raise InvalidHeaderError(f"HDF5 base address {values['base']} is not the superblock's ({sig})", path=path)
    eof = values["end of file"]
    if eof == undefined or eof > size:  # HDF5 writes it as an absolute address (user blocks too)
        raise TruncatedFileError(
            f"HDF5 superblock says the file ends at byte {eof if eof != undefined else 'undefined'} "
            f"but it has {size} bytes",
            path=path,
        )
    root = values["root object header"]
    if root == undefined or root >= eof:
        raise InvalidHeaderError(f"HDF5 root group header address {root} lies outside the file", path=path)
    ext = values.get("superblock extension", undefined)
    if ext != undefined and ext >= eof:
        raise InvalidHeaderError(f"HDF5 superblock extension address {ext} lies outside the file", path=path)


class KerasReader(FormatReader):
    format_name = "keras"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        h5py = _h5py()
        self._config: Any = None
        self._keras_meta: dict[str, Any] = {}
        self._buffer: io.BytesIO | None = None
        self._entries: dict[str, dict[str, Any]] = {}  # name -> {"h5": path, ...}
        try:
            if zipfile.is_zipfile(self.path):
                self.container = "keras"
                self._buffer = self._read_archive()
                with self._buffer.getbuffer() as data:
                    self._size = len(data)
                    check_superblock(lambda at, n: bytes(data[at : at + n]), self._size, path=self.path)
                with _h5_errors(self.path, "model.weights.h5 is not a readable HDF5 file"):
                    self._h5 = h5py.File(self._buffer, "r")
            else:
                self.container = "h5"
                self._size = os.path.getsize(self.path)
                with open(self.path, "rb") as f:

                    def read(at: int, n: int) -> bytes:
                        f.seek(at)
                        return f.read(n)

                    check_superblock(read, self._size, path=self.path)
                with _h5_errors(self.path, "not a readable HDF5 file"):
                    self._h5 = h5py.File(self.path, "r")
        except BaseException:
            self.close_buffer()
            raise
        try:
            with _h5_errors(self.path, "cannot index the Keras groups"):
                self._check_links_and_storage()
                self._index()
        except BaseException:
            self.close()
            raise

    def close_buffer(self) -> None:
        if self._buffer is not None:
            self._buffer.close()

    def _read_archive(self) -> io.BytesIO:
        try:
            with zipfile.ZipFile(self.path) as zf:
                return self._read_members(zf)
        except WeightVaultError:
            raise
        except (
            zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError, ValueError
        ) as exc:
            # a damaged central directory, a bad CRC, a corrupt deflate stream, an encrypted or
            # unknown-compression member: all mean the archive cannot be read as written
            raise InvalidHeaderError(f"not a readable .keras archive: {exc}", path=self.path) from None

    def _read_members(self, zf: zipfile.ZipFile) -> io.BytesIO:
        # Keras 2.13-2.15 on Windows wrote member names with backslashes
        members = {zi.filename.replace("\\", "/"): zi for zi in zf.infolist()}
        if "model.weights.h5" not in members:
            raise InvalidHeaderError(".keras archive has no model.weights.h5", path=self.path)
        for meta in ("config.json", "metadata.json"):
            if meta in members:
                zi = members[meta]
                if zi.file_size > 64 * 1024 * 1024:
                    raise InvalidHeaderError(f"{meta} is implausibly large", path=self.path)
                check_expansion(zi.file_size, zi.compress_size, path=self.path, what=meta)
                doc = _parse_json(zf.read(zi), path=self.path, what=meta)
                if meta == "config.json":
                    self._config = doc
                else:
                    self._keras_meta = doc if isinstance(doc, dict) else {}
        zi = members["model.weights.h5"]
        if zi.compress_type != zipfile.ZIP_STORED and zi.file_size > zi.compress_size * MAX_ZIP_RATIO + 4096:
            raise InvalidHeaderError("model.weights.h5 claims an impossible size", path=self.path)
        try:
            data = zf.read(zi)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            raise TruncatedFileError(f"cannot read model.weights.h5: {exc}", path=self.path) from None
        return io.BytesIO(data)

    # -- guards ------------------------------------------------------------------------------------
    def _check_links_and_storage(self) -> None:
        """Walk every link once before anything is read: refuse external links, soft links that
        dangle, loop or pass through an external link, and datasets whose bytes live in another
        file (external raw storage, virtual datasets) or need a filter plugin. After this, plain
        h5py access by name stays inside this file."""
        h5py = _h5py()
        seen: set[int] = set()
        links = 0
        pending = ["/"]
        while pending:
            group_path = pending.pop()
            group = self._h5[group_path]  # reached through hard links only
            for name in group:
                links += 1
                if links > MAX_H5_LINKS:
                    raise ResourceLimitError(f"HDF5 file has more than {MAX_H5_LINKS} links", path=self.path)
                target = self._resolve_link(group_path, name, [MAX_SOFT_LINK_HOPS], group)
                info = h5py.h5o.get_info(self._h5.id, target.encode("utf-8"))
                if info.addr in seen:  # hard links may make cycles
                    continue
                seen.add(info.addr)
                if info.type == h5py.h5o.TYPE_GROUP:
                    pending.append(target)
                elif info.type == h5py.h5o.TYPE_DATASET:
                    with _h5_errors(self.path, f"cannot open dataset {target}"):
                        self._check_storage(target)

    def _resolve_link(self, parent: str, name: str, budget: list[int], parent_group: Any = None) -> str:
        """The hard-link path that ``parent/name`` leads to (``parent`` is one already)."""
        h5py = _h5py()
        where = f"{parent.rstrip('/')}/{name}"
        group = parent_group if parent_group is not None else self._h5[parent]
        link = group.get(name, getlink=True)
        if link is None:
            raise InvalidHeaderError(f"HDF5 link {where} leads nowhere", path=self.path)
        if isinstance(link, h5py.ExternalLink):
            raise InvalidHeaderError(
                f"HDF5 link {where} is an external link to {link.filename}:{link.path}; "
                "weightvault reads nothing outside the named file",
                path=self.path,
            )
        if isinstance(link, h5py.HardLink):
            return where
        if not isinstance(link, h5py.SoftLink):
            raise InvalidHeaderError(f"HDF5 link {where} is of a user-defined kind", path=self.path)
        budget[0] -= 1
        if budget[0] < 0:
            raise InvalidHeaderError(
                f"HDF5 soft link {where} loops (or chains more than {MAX_SOFT_LINK_HOPS})", path=self.path
            )
        target = link.path
        current = "/" if target.startswith("/") else parent
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == ".." or not isinstance(self._h5[current], h5py.Group):
                raise InvalidHeaderError(f"HDF5 soft link {where} -> {target} leads nowhere", path=self.path)
            current = self._resolve_link(current, part, budget)
        return current

    def _check_storage(self, dataset_path: str) -> None:
        h5py = _h5py()
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_virtual_view(h5py.h5d.VDS_FIRST_MISSING)  # do not look for mapped files on open
        dcpl = h5py.h5d.open(self._h5.id, dataset_path.encode("utf-8"), dapl).get_create_plist()
        if dcpl.get_layout() == h5py.h5d.VIRTUAL:
            raise InvalidHeaderError(
                f"dataset {dataset_path} is an HDF5 virtual dataset (its data lives in other files); "
                "weightvault reads nothing outside the named file",
                path=self.path,
            )
        if dcpl.get_external_count() > 0:
            other = _decode(dcpl.get_external(0)[0])
            raise InvalidHeaderError(
                f"dataset {dataset_path} keeps its data in external file {other!r}; "
                "weightvault reads nothing outside the named file",
                path=self.path,
            )
        for i in range(dcpl.get_nfilters()):
            code = dcpl.get_filter(i)[0]
            if code not in _BUILTIN_FILTERS:
                raise UnsupportedOperationError(
                    f"dataset {dataset_path} needs HDF5 filter {code}, which only a plugin library provides",
                    path=self.path,
                )

    def _attr(self, obj: Any, name: str, default: Any = None) -> Any:
        """An attribute, after checking its size against the file (h5py allocates first)."""
        if name not in obj.attrs:
            return default
        h5py = _h5py()
        aid = obj.attrs.get_id(name)
        type_class = aid.get_type().get_class()
        if type_class not in (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT):
            # Keras writes strings and numbers only; HDF5 crashes on some damaged variable-length
            # sequence types, so anything else is refused before its data is touched
            raise InvalidHeaderError(
                f"attribute {name!r} of {obj.name} has HDF5 type class {type_class}, not a string or number",
                path=self.path,
            )
        shape = aid.shape if aid.shape is not None else ()
        nbytes = math.prod(shape) * aid.dtype.itemsize
        if nbytes > self._size:
            raise InvalidHeaderError(
                f"attribute {name!r} of {obj.name} claims {nbytes} bytes in a {self._size}-byte file", path=self.path
            )
        return obj.attrs[name]

    # -- indexing ----------------------------------------------------------------------------------
    def _index(self) -> None:
        f = self._h5
        if "model_weights" in f and ("layer_names" in f["model_weights"].attrs or "layer_names0" in f["model_weights"].attrs):
            self.layout = "legacy"
            self._index_legacy(f["model_weights"], "model_weights/")
            if "optimizer_weights" in f:
                self._index_legacy_group(f["optimizer_weights"], "optimizer_weights/", prefix="optimizer/")
        elif "layer_names" in f.attrs or "layer_names0" in f.attrs:
            self.layout = "legacy"
            self._index_legacy(f, "")
        elif set(self._group_tree()[0][""]) & {"layers", "vars", "_layer_checkpoint_dependencies", "optimizer"}:
            self.layout = "keras3"
            self._index_keras3()
        else:
            raise InvalidHeaderError("HDF5 file has neither Keras 3 nor legacy Keras weights", path=self.path)

    def _add(self, name: str, h5_path: str, **extra: Any) -> None:
        if name in self._entries:
            raise DuplicateTensorError("two datasets map to this tensor name", path=self.path, tensor=name)
        self._entries[name] = {"h5_path": h5_path, **extra}

    def _index_legacy(self, group: Any, base: str) -> None:
        for layer in _attr_list(group, "layer_names", self._attr):
            if layer not in group:
                raise InvalidHeaderError(f"layer_names lists {layer!r} but it has no group", path=self.path)
            self._index_legacy_group(group[layer], f"{base}{layer}/", layer=layer)

    def _index_legacy_group(self, group: Any, base: str, prefix: str = "", layer: str | None = None) -> None:
        for wn in _attr_list(group, "weight_names", self._attr):
            if wn not in group:
                raise InvalidHeaderError(f"weight {wn!r} is listed but missing", path=self.path, tensor=wn)
            name = prefix + re.sub(r":\d+$", "", wn)
            self._add(name, base + wn, layer=layer)

    def _group_tree(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """(logical group -> child groups, logical group -> real HDF5 path). Logical paths use
        ``/`` only: Keras 2.13-2.15 on Windows joined its object paths with ``os.path.join``, so
        its files hold root groups literally named ``layers\\dense``; those are split here."""
        if getattr(self, "_tree", None) is not None:
            return self._tree
        h5py = _h5py()
        children: dict[str, list[str]] = {"": []}
        real: dict[str, str] = {"": "/"}
        seen: set[int] = set()

        def add(logical: str, real_path: str) -> None:
            parts = logical.split("/")
            for i in range(1, len(parts) + 1):
                sub, parent = "/".join(parts[:i]), "/".join(parts[: i - 1])
                if sub not in children:
                    children[sub] = []
                    children[parent].append(sub)
            real[logical] = real_path

        pending = [("", "/")]
        while pending:
            logical, real_path = pending.pop(0)
            if logical.count("/") > 32:
                raise InvalidHeaderError("Keras groups nested too deep", path=self.path)
            group = self._h5[real_path]
            for k in group:
                if group.get(k, getclass=True) is not h5py.Group:  # link metadata only, nothing opened
                    continue
                addr = h5py.h5o.get_info(group.id, k.encode("utf-8")).addr
                if addr in seen:
                    continue  # the same group again through another hard link
                seen.add(addr)
                parts = [p for p in k.replace("\\", "/").split("/") if p]
                if not parts:
                    continue
                child_logical = "/".join([logical, *parts] if logical else parts)
                child_real = f"{real_path.rstrip('/')}/{k}"
                add(child_logical, child_real)
                if parts[-1] != "vars":
                    pending.append((child_logical, child_real))
        self._tree = (children, real)
        return self._tree

    def _index_keras3(self) -> None:
        h5py = _h5py()
        layers_cfg = _walk_config(self._config, self.path) if self._config is not None else {}
        children, real = self._group_tree()
        # (order, name prefix, class key, vars path, count, layer config flags)
        found: list[tuple[float, str, str, str, int, Any]] = []

        def visit(logical: str, chain: list[str], depth: int) -> None:
            if depth > 32:
                raise InvalidHeaderError("Keras groups nested too deep", path=self.path)
            vars_logical = f"{logical}/vars" if logical else "vars"
            here = chain
            if vars_logical in real:
                vars_group = self._h5[real[vars_logical]]
                key = logical.split("/")[-1]
                parent_key = _class_key(logical.split("/")[-2]) if logical.count("/") else ""
                if key == "cell" and parent_key in ("lstm", "gru", "simple_rnn"):
                    key = f"{parent_key}_cell"  # files without name attributes: the RNN's default cell name
                label = _decode(self._attr(vars_group, "name", key)).replace("\\", "/").split("/")[-1]
                is_root = logical == ""
                here = chain if is_root or key == "optimizer" else [*chain, label]
                count = len([k for k in vars_group if k.isdigit() and vars_group.get(k, getclass=True) is h5py.Dataset])
                if count:
                    own = layers_cfg.get(label)
                    top = layers_cfg.get(here[0]) if here else None
                    ckey = _snake(own["class_name"]) if own else ""
                    if ckey not in VAR_NAMES:
                        ckey = next((c for c in (_class_key(key), _class_key(label)) if c in VAR_NAMES), ckey or key)
                    if ckey not in VAR_NAMES and key.endswith("_dense"):
                        ckey = "einsum_dense"  # attention sub-layers: _query_dense, _output_dense, ...
                    flags = (own or top or {}).get("config")
                    order = (top or own or {}).get("order", 1e9)
                    if key == "optimizer":
                        prefix, ckey = "optimizer", ""
                    elif is_root:
                        prefix = label or "model"
                    else:
                        prefix = "/".join(here)
                    found.append((order, prefix, ckey, real[vars_logical].lstrip("/"), count, flags))
            for child in children.get(logical, []):
                if child != vars_logical:
                    visit(child, here, depth + 1)

        visit("", [], 0)
        found.sort(key=lambda t: t[0])  # stable: config order when known, else h5 order
        for _order, prefix, ckey, vpath, count, cfg in found:
            names = [str(i) for i in range(count)] if not ckey else _var_names(ckey, count, cfg)
            group = self._h5[vpath]
            for i, var in enumerate(names):
                if str(i) not in group:
                    raise InvalidHeaderError(f"variables of {vpath} are not numbered 0..{count - 1}", path=self.path)
                # files we wrote carry each variable's full path (Keras ignores the attribute)
                stored = self._attr(group[str(i)], "path")
                self._add(_decode(stored) if stored is not None else f"{prefix}/{var}", f"{vpath}/{i}")

    # -- FormatReader hooks ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def _dataset(self, name: str) -> Any:
        self._require(name)
        path = self._entries[name]["h5_path"]
        try:
            ds = self._h5[path]
        except KeyError:
            raise InvalidHeaderError(f"dataset {path} is missing", path=self.path, tensor=name) from None
        if not isinstance(ds, _h5py().Dataset):
            raise InvalidHeaderError(f"{path} is an HDF5 {type(ds).__name__}, not a dataset", path=self.path, tensor=name)
        if ds.shape is None:
            raise InvalidHeaderError(
                f"dataset {path} has no dataspace (an empty HDF5 dataset)", path=self.path, tensor=name
            )
        return ds

    def _dtype(self, ds: Any, name: str) -> str:
        if self._attr(ds, "dtype") in ("bfloat16", b"bfloat16"):
            return "bfloat16"
        if ds.dtype.kind == "V" and ds.dtype.itemsize == 2 and ds.dtype.names is None:
            # Keras' legacy writer stores bfloat16 variables as 2-byte opaque data with no marker
            return "bfloat16"
        try:
            return dtype_name(ds.dtype, tensor=name)
        except UnknownDtypeError as exc:
            raise UnknownDtypeError(f"dataset {ds.name} has dtype {ds.dtype}", path=self.path, tensor=name) from exc

    def info(self, name: str) -> TensorInfo:
        with _h5_errors(self.path, f"cannot describe dataset {self._entries.get(name, {}).get('h5_path')}", name):
            ds = self._dataset(name)
            extra = {"h5_path": self._entries[name]["h5_path"]}
            return TensorInfo(name, self._dtype(ds, name), tuple(ds.shape), extra)

    def _check_size(self, ds: Any, name: str) -> None:
        """Before h5py allocates ``shape x itemsize``: the stored bytes must lie in the file, and
        a dataset larger than the whole file (unwritten chunks read as the fill value, or
        compressed chunks) must pass the shared expansion limit."""
        nbytes = math.prod(ds.shape) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        if stored > self._size:
            raise TruncatedFileError(
                f"dataset {ds.name} claims {stored} stored bytes but the file holds {self._size}",
                path=self.path,
                tensor=name,
            )
        if nbytes > self._size:
            check_expansion(nbytes, stored, path=self.path, tensor=name, what=f"dataset {ds.name}")

    def get(self, name: str) -> np.ndarray:
        with _h5_errors(self.path, f"cannot read dataset {self._entries.get(name, {}).get('h5_path')}", name):
            ds = self._dataset(name)
            dtype = self._dtype(ds, name)
            self._check_size(ds, name)
            arr = np.asarray(ds[()])
        if dtype == "bfloat16":
            import ml_dtypes

            if arr.dtype.kind == "f":  # our legacy files widen bfloat16 to float32 (exact)
                arr = arr.astype(ml_dtypes.bfloat16)
            else:
                arr = np.frombuffer(arr.tobytes(), dtype=ml_dtypes.bfloat16).reshape(ds.shape)
        elif arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return arr

    @property
    def metadata(self) -> dict[str, Any]:
        keras: dict[str, Any] = {
            "layout": self.layout,
            "container": self.container,
            "h5_paths": {n: e["h5_path"] for n, e in self._entries.items()},
        }
        with _h5_errors(self.path, "cannot read the Keras attributes"):
            root = self._h5["model_weights"] if "model_weights" in self._h5 else self._h5
            for attr in ("keras_version", "backend"):
                value = self._attr(root, attr)
                if value is not None:
                    keras[attr] = _decode(value)
            if self._config is None and "model_config" in self._h5.attrs:  # legacy model.save()
                try:
                    text = _decode(self._attr(self._h5, "model_config"))
                    self._config = _parse_json(text, path=self.path, what="model_config")
                except (InvalidHeaderError, ResourceLimitError):
                    pass  # a config we cannot parse is not needed to read weights
        if self._config is not None:
            keras["config"] = self._config
        if self._keras_meta:
            keras["archive_metadata"] = jsonable(self._keras_meta)
        return {"keras": keras}

    def close(self) -> None:
        h5 = getattr(self, "_h5", None)
        if h5 is not None:
            try:
                h5.close()
            except Exception:  # noqa: BLE001 - closing a half-open file must not mask the real error
                pass
        self.close_buffer()


# -- writing ------------------------------------------------------------------------------------------
def _keras3_path_for(name: str) -> tuple[str, str]:
    """(vars group, variable name) derived from a ``layer/.../var`` name when no path is known."""
    parts = name.split("/")
    if len(parts) == 1:
        return f"layers/{name}/vars", name
    if parts[0] == "optimizer":
        return "optimizer/vars", parts[-1]
    groups = ["layers", parts[0]]
    for sub in parts[1:-1]:
        # Bidirectional keeps its two copies under forward_layer/backward_layer; RNN cells under cell.
        if sub.endswith("_cell"):
            groups.append("cell")
        elif sub.startswith("forward_"):
            groups.append("forward_layer")
        elif sub.startswith("backward_"):
            groups.append("backward_layer")
        else:
            groups.append(sub)
    return "/".join(groups) + "/vars", parts[-1]


_PATHS_SHAPE = (
    '{"tensor name": "HDF5 dataset path", ...} (e.g. {"dense/kernel": "layers/dense/vars/0"})'
)


def _paths_option(value: Any) -> dict[str, str]:
    """The ``paths`` write option: a mapping, or a JSON file holding one (``-w paths=FILE``)."""
    if value is None:
        return {}
    source = value
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, "rb") as f:
                value = json.loads(f.read())
        except FileNotFoundError:
            raise UnsupportedOperationError(
                f"paths option: no such file {os.fspath(source)!r}", hint=f"it holds {_PATHS_SHAPE}"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnsupportedOperationError(
                f"paths option: {os.fspath(source)} is not JSON ({exc})", path=source,
                hint=f"it holds {_PATHS_SHAPE}",
            ) from None
    strings = isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )
    if not strings:
        where = f" in {os.fspath(source)}" if source is not value else ""
        raise UnsupportedOperationError(
            f"paths option{where}: expected {_PATHS_SHAPE}, got {type(value).__name__}"
            + ("" if not isinstance(value, Mapping) else " with a non-string key or value"),
        )
    return dict(value)


def _resolve_paths(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None, options: Mapping[str, Any], layout: str
) -> dict[str, str]:
    known = _paths_option(options.get("paths"))
    keras_meta = (metadata or {}).get("keras")
    if isinstance(keras_meta, str):  # string-only containers (safetensors) keep it JSON-encoded
        try:
            keras_meta = json.loads(keras_meta)
        except json.JSONDecodeError:
            keras_meta = None
    meta_paths = keras_meta.get("h5_paths") if isinstance(keras_meta, dict) else None
    meta_layout = keras_meta.get("layout") if isinstance(keras_meta, dict) else None
    if meta_paths and meta_layout == layout:
        for n, p in meta_paths.items():
            # a Windows Keras 2.13-2.15 file names its groups layers\\dense: write them as Keras 3 does
            known.setdefault(n, str(p).replace("\\", "/"))
    out: dict[str, str] = {}
    if layout == "keras3":
        pending: dict[str, list[tuple[str, str]]] = {}
        for name in tensors:
            if name in known:
                out[name] = known[name]
                continue
            group, var = _keras3_path_for(name)
            pending.setdefault(group, []).append((name, var))
        for group, members in pending.items():
            ckey = _class_key(group.split("/")[-2]) if group.count("/") >= 1 else ""
            table = VAR_NAMES.get(ckey, [])
            taken = {int(p.rsplit("/", 1)[1]) for p in out.values() if p.rsplit("/", 1)[0] == group}
            ordered = sorted(members, key=lambda m: table.index(m[1]) if m[1] in table else len(table))
            i = 0
            for name, _var in ordered:
                while i in taken:
                    i += 1
                out[name] = f"{group}/{i}"
                i += 1
        return out
    for name in tensors:
        if name in known:
            out[name] = known[name].removeprefix("model_weights/")
        elif name.startswith("optimizer/"):  # optimizer state is not a layer: keep it apart
            out[name] = f"optimizer_weights/{name.removeprefix('optimizer/')}"
        else:
            out[name] = f"{_legacy_layer_for(name)}/{name}"
    return out


def _legacy_layer_for(name: str) -> str:
    """The layer owning a ``[model/]layer[/x_cell]/var`` name (Sequential paths carry the model)."""
    parts = name.split("/")[:-1]
    if parts and parts[-1].endswith("_cell") and len(parts) > 1:
        parts = parts[:-1]
    # Both directions of a Bidirectional belong to the wrapper layer.
    if parts and parts[-1].startswith(("forward_", "backward_")) and len(parts) > 1:
        parts = parts[:-1]
    return parts[-1] if parts else name


class KerasFormat(Format):
    name = "keras"
    description = "Keras 3 .weights.h5 / .keras and legacy Keras HDF5 (needs h5py)"
    read_options: ClassVar[Mapping[str, str]] = {}
    write_options: ClassVar[Mapping[str, str]] = {
        "layout": "keras3 (.weights.h5) or legacy (model.save_weights .h5); default from the name",
        "paths": "{tensor: HDF5 dataset path}, or a JSON file holding one",
        "template": "a Keras-written weights file of the target model: paths come from it",
    }

    @classmethod
    def sniff(cls, path: Path, head: bytes) -> bool:
        if head.startswith(HDF5_MAGIC):
            return True
        if head.startswith(b"PK\x03\x04") and len(head) >= 30:
            n = int.from_bytes(head[26:28], "little")
            return head[30 : 30 + n] in KERAS_MEMBERS
        return False

    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> KerasReader:
        return KerasReader(path)

    @classmethod
    def write(
        cls,
        path: str | os.PathLike[str],
        tensors: Mapping[str, np.ndarray],
        *,
        metadata: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        h5py = _h5py()
        lower = os.fspath(path).lower()
        if lower.endswith(".keras"):
            raise UnsupportedOperationError(
                "writing a .keras archive needs the model's config; write NAME.weights.h5 instead",
                path=path,
                hint="model.load_weights('NAME.weights.h5') loads it into the matching model",
            )
        layout = options.get("layout") or ("keras3" if lower.endswith(".weights.h5") else "legacy")
        if layout not in ("keras3", "legacy"):
            raise UnsupportedOperationError(f"unknown Keras layout {layout!r} (keras3 or legacy)", path=path)
        if options.get("template") and not options.get("paths"):
            # A Keras-written weights file of the target model (torch-to-keras --template): its groups.
            with KerasReader(options["template"]) as t:
                template_paths = (t.metadata.get("keras") or {}).get("h5_paths") or {}
            options = {**options, "paths": {n: p for n, p in template_paths.items() if n in tensors}}
        paths = _resolve_paths(tensors, metadata, options, layout)
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            if layout == "keras3":
                cls._write_keras3(f, tensors, paths)
            else:
                cls._write_legacy(f, tensors, paths)
        with atomic_write(path) as out:
            out.write(buf.getbuffer())

    @staticmethod
    def _dataset(group: Any, key: str, tensors: Mapping[str, np.ndarray], name: str, widen_bf16: bool = False) -> None:
        dtype, _shape = describe_entry(tensors, name)
        arr = fetch_array(tensors, name)
        if dtype == "bfloat16":
            # Keras 3 files: 2-byte opaque data + dtype attribute, exactly as H5IOStore writes.
            # Legacy files: Keras' legacy loader cannot cast opaque data (it fails on its own
            # bfloat16 files), so we store float32 (exact) and mark it for our reader.
            ds = group.create_dataset(key, data=arr.astype(np.float32) if widen_bf16 else arr)
            ds.attrs["dtype"] = "bfloat16"
        elif arr.dtype.kind not in "biufc":
            raise UnsupportedOperationError(f"Keras HDF5 cannot hold {dtype}", path=None, tensor=name)
        else:
            group.create_dataset(key, data=arr)

    @classmethod
    def _write_keras3(cls, f: Any, tensors: Mapping[str, np.ndarray], paths: dict[str, str]) -> None:
        for name in tensors:
            group_path, _, key = paths[name].rpartition("/")
            group = f.require_group(group_path)
            cls._name_vars_groups(f, group_path, name)
            cls._dataset(group, key, tensors, name)
            group[key].attrs["path"] = name

    @staticmethod
    def _name_vars_groups(f: Any, vars_path: str, name: str) -> None:
        """Give each object on the way a ``vars`` group with its ``name`` attribute, as Keras does,
        so the names read back are the names written (``lstm`` / ``lstm_cell``)."""
        if not vars_path.endswith("vars"):
            return
        parts = vars_path.split("/")[:-1]
        objects = ["/".join(parts[: i + 1]) for i, p in enumerate(parts) if p not in ("layers", "_layer_checkpoint_dependencies")]
        labels = name.split("/")[:-1] or [name]
        if parts and parts[0] == "optimizer":
            labels = []
        if len(labels) != len(objects):
            objects, labels = objects[-1:], labels[-1:]
        for obj, label in zip(objects, labels):
            vars_group = f.require_group(f"{obj}/vars")
            if "name" not in vars_group.attrs:
                vars_group.attrs["name"] = label

    @classmethod
    def _write_legacy(cls, f: Any, tensors: Mapping[str, np.ndarray], paths: dict[str, str]) -> None:
        from weightvault._version import __version__

        layers: dict[str, list[tuple[str, str]]] = {}
        optimizer: list[tuple[str, str]] = []
        for name in tensors:
            layer, _, weight = paths[name].partition("/")
            if layer == "optimizer_weights":  # not a layer: Keras loads it apart, by name
                optimizer.append((name, weight))
                continue
            layers.setdefault(layer, []).append((name, weight))
        if optimizer:
            group = f.require_group("optimizer_weights")
            group.attrs["weight_names"] = [w.encode("utf-8") for _n, w in optimizer]
            for name, weight in optimizer:
                cls._dataset(group, weight, tensors, name, widen_bf16=True)
        f.attrs["layer_names"] = [layer.encode("utf-8") for layer in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = f"weightvault-{__version__}".encode()
        for layer, members in layers.items():
            group = f.require_group(layer)
            group.attrs["weight_names"] = [w.encode("utf-8") for _n, w in members]
            for name, weight in members:
                cls._dataset(group, weight, tensors, name, widen_bf16=True)
