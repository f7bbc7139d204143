"""What the viewer serves: the opened paths, per-tensor summaries, diffs and training runs.

Design:

* Every path the user named becomes an *entry*; a run directory (CheckpointManager output, or any
  directory of native checkpoints) also adds one entry per checkpoint in it. Requests name an
  entry by its index (or by the exact path of an entry), never by a free path, so no request can
  make the server open or reveal anything outside what it was started with.
* Readers are opened on first use and kept open; a failure to open is not remembered, so a file
  fixed on disk works on the next request, and a broken file never stops the others.
* Readers are not promised to be thread-safe (pickle-based readers seek one shared file handle),
  so each entry has a lock and every read of that entry holds it.
* Summaries (statistics, histogram, heat-map) are computed on demand, from the one tensor asked
  for, and kept in a small LRU cache so clicking back and forth is instant without memory growing.
* Reductions run over chunks in float64, so a large float16/bfloat16 tensor never needs a second
  full-size float64 copy.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightvault.abc.format import FormatReader, TensorInfo
from weightvault.errors import WeightVaultError
from weightvault.inspect import power_of_two_scale
from weightvault.storage.location import is_url, local_path

__all__ = ["ApiError", "Entry", "LRUCache", "ViewerData", "jsonable"]

_CHUNK = 1 << 22
MAX_BINS = 512
MAX_GRID = 256
MIN_SIDE = 16  # a heat-map keeps at least this many cells a side (when the tensor has them)
MAX_VALUES = 10_000
MAX_PRECISION = 16
_MAX_INDEX_DIGITS = 9
# keys of training facts looked for in a file's metadata (top level and nested one level)
_TRAINING_KEYS = ("step", "global_step", "epoch", "iteration", "metrics", "metric", "loss", "best_metric")
_RUN_RECORD_KEY = "weightvault.checkpoint"


class ApiError(Exception):
    """An error the API reports as JSON: HTTP status, a stable code and a one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def jsonable(obj: Any, depth: int = 0) -> Any:
    """Plain JSON data: numpy scalars unwrapped, NaN/Inf as strings, anything else as ``str``."""
    if depth > 40:
        return "…"
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity"))
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), depth + 1)
    if isinstance(obj, dict):
        return {str(k): jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, depth + 1) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.size > 64:
            return f"<array {obj.dtype} {list(obj.shape)}>"
        return jsonable(obj.tolist(), depth + 1)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


class LRUCache:
    """A thread-safe LRU mapping bounded by entry count."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class Entry:
    """One thing the viewer can show: a weight file/directory, a run, or a checkpoint of a run."""

    index: int
    path: Path | str  # str: a URL on object storage
    label: str
    kind: str  # "file" | "run" | "checkpoint"
    run: int | None = None  # for checkpoints: the run entry's index
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)  # for runs: checkpoint entry indices
    kept_because: list[str] = field(default_factory=list)  # for checkpoints: the manager's reasons
    best: tuple[str, str] | None = None  # for runs: (metric, "min"|"max") of the manager's best=
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    reader: FormatReader | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "label": self.label, "path": os.fspath(self.path), "kind": self.kind}
        if self.kind == "checkpoint":
            out.update(run=self.run, step=self.step, metrics=jsonable(self.metrics))
        if self.kind == "run":
            out["checkpoints"] = list(self.checkpoints)
        return out


# -- discovering runs -------------------------------------------------------------------------------


@dataclass
class _Found:
    """One checkpoint of a run directory, as the scan found it."""

    step: int | None
    path: Any  # a Path, or a storage Location for a run on object storage
    metrics: dict[str, Any]
    kept_because: list[str] = field(default_factory=list)


def _run_best(path: Path) -> tuple[str, str] | None:
    """(metric, mode) of the ``best=`` setting a CheckpointManager recorded for the run, if any."""
    from weightvault.checkpoint.manager import read_state

    best = (read_state(path).get("settings") or {}).get("best")
    if isinstance(best, dict) and isinstance(best.get("metric"), str) and best.get("mode") in ("min", "max"):
        return best["metric"], best["mode"]
    return None


def _scan_run(path: Path) -> list[_Found]:
    """Each checkpoint in a run directory (step order), or [] if it is not one."""
    if not path.is_dir():
        return []
    try:
        from weightvault.checkpoint.manager import scan_run
    except ImportError:  # the checkpoint package is optional for the viewer
        scan_run = None
    if scan_run is not None:
        found = scan_run(path)
        if found:
            return [_Found(c.step, c.path, dict(c.metrics), list(c.kept_because)) for c in found]
    # Any directory whose children are native checkpoints counts as a run (no manager record).
    from weightvault.formats.native import NativeFormat

    out: list[_Found] = []
    try:
        children = sorted(path.iterdir())
    except OSError:
        return []
    for child in children:
        if child.is_dir() and NativeFormat.sniff(child, b""):
            digits = "".join(ch for ch in child.name if ch.isdigit())
            out.append(_Found(int(digits) if digits else None, child, {}))
    out.sort(key=lambda f: (f.step is None, f.step or 0, f.path.name))
    return out


def _scan_remote_run(url: str) -> list[_Found]:
    """Each committed checkpoint of a run on object storage (step order), or [] if the URL is
    not a run: a single object, or a checkpoint prefix (it has its own ``COMMITTED``)."""
    from weightvault.checkpoint.manager import scan_run
    from weightvault.formats.native import COMMIT_MARKER
    from weightvault.storage import location

    loc = location(url)
    if loc.is_file() or loc.child(COMMIT_MARKER).exists():
        return []
    return [_Found(c.step, c.path, dict(c.metrics), list(c.kept_because)) for c in scan_run(loc)]


def _is_weight_path(path: Path) -> bool:
    from weightvault.registry import detect_format

    try:
        detect_format(path)
    except WeightVaultError:
        return False
    except OSError:
        return False
    return True


# -- numeric helpers --------------------------------------------------------------------------------


def _numeric_flat(arr: np.ndarray) -> np.ndarray | None:
    """A flat array whose chunks convert to float64, or None for strings/objects."""
    flat = np.asarray(arr).reshape(-1)
    if flat.dtype == np.bool_:
        return flat.view(np.uint8)
    if flat.dtype.kind == "c":
        return np.abs(flat)
    if flat.dtype.kind in "iuf" or flat.dtype.kind == "V":
        try:
            flat[:1].astype(np.float64)
        except (TypeError, ValueError):
            return None
        return flat
    return None


def _chunks(flat: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK].astype(np.float64)


def histogram(
    chunks: Callable[[], Iterator[np.ndarray]], lo: float | None, hi: float | None, bins: int, integral: bool
) -> dict[str, Any]:
    """Counts of finite values in ``bins`` equal bins over [lo, hi]; integer kinds get unit bins.

    ``chunks`` yields the values as float64 pieces (one pass); NaN and Inf are not counted, so the
    counts sum to numel - nan - inf.
    """
    if lo is None or hi is None:
        return {"edges": [], "counts": [], "total": 0}
    if integral and hi - lo + 1 <= bins:
        bins = int(hi - lo + 1)
        lo, hi = lo - 0.5, hi + 0.5
    elif hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = np.zeros(bins, dtype=np.int64)
    # Edges on values scaled by a power of two (exact): hi - lo of two values near the float64
    # limit overflows, and plain linspace would then give NaN edges.
    scale = power_of_two_scale(max(abs(lo), abs(hi)))
    edges = np.linspace(lo / scale, hi / scale, bins + 1) * scale
    edges[0], edges[-1] = lo, hi
    for chunk in chunks():
        finite = chunk[np.isfinite(chunk)]
        if finite.size:
            counts += np.histogram(finite, bins=edges)[0]
    return {"edges": edges.tolist(), "counts": counts.tolist(), "total": int(counts.sum())}


def _heat_grid(rows: int, cols: int, grid: int) -> tuple[int, int]:
    """Cells per side: one scale for both axes (the picture keeps the tensor's aspect ratio),
    except that neither side drops below ``min(side, MIN_SIDE)``: a [50000, 8] tensor becomes
    96 x 8 blocks, not a 96 x 1 stripe that shows nothing."""
    factor = max(rows, cols) / grid if max(rows, cols) > grid else 1.0
    out_r = min(rows, grid, max(1, round(rows / factor), min(rows, MIN_SIDE)))
    out_c = min(cols, grid, max(1, round(cols / factor), min(cols, MIN_SIDE)))
    return out_r, out_c


def heatmap(arr: np.ndarray, grid: int, scale: float = 1.0) -> dict[str, Any] | None:
    """Block means and block max-|x| of a 2-D view (ndim > 2: first axis by the rest).

    At most ``grid`` cells a side (see :func:`_heat_grid`). Blocks cover whole rows/columns (edges
    from ``linspace``), so every element counts once; NaN/Inf are left out of a block's mean and
    max and a block with no finite value is ``None``. Sums run on values divided by ``scale`` (a
    power of two near the largest magnitude), so blocks of values near the float64 limit do not
    overflow. The max-|x| picture shows a lone outlier that a block mean would average away.
    """
    if arr.ndim < 2 or arr.size == 0:
        return None
    if _numeric_flat(arr.reshape(-1)[:1]) is None:
        return None
    rows = arr.shape[0]
    mat = arr.reshape(rows, -1)
    cols = mat.shape[1]
    out_r, out_c = _heat_grid(rows, cols, grid)
    row_edges = np.linspace(0, rows, out_r + 1).astype(np.int64)
    col_starts = np.linspace(0, cols, out_c + 1).astype(np.int64)[:-1]
    sums = np.zeros((out_r, out_c))
    counts = np.zeros((out_r, out_c))
    peaks = np.full((out_r, out_c), -1.0)  # -1: no finite value in the block
    # One band of rows at a time: memory stays at one band in float64 whatever the tensor's size.
    for i in range(out_r):
        band = mat[row_edges[i] : row_edges[i + 1]]
        if band.dtype == np.bool_:
            band = band.view(np.uint8)
        values = np.abs(band) if band.dtype.kind == "c" else band
        values = values.astype(np.float64)
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0) / scale
        sums[i] = np.add.reduceat(values.sum(axis=0), col_starts)
        counts[i] = np.add.reduceat(finite.sum(axis=0), col_starts)
        magnitude = np.where(finite, np.abs(values), -1.0)
        peaks[i] = np.maximum.reduceat(magnitude.max(axis=0), col_starts)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan) * scale
        peaks = np.where(peaks >= 0, peaks * scale, np.nan)
    finite_means = means[np.isfinite(means)]
    finite_peaks = peaks[np.isfinite(peaks)]
    return {
        "rows": int(out_r),
        "cols": int(out_c),
        "source_shape": [int(rows), int(cols)],
        "reshaped": arr.ndim > 2,
        "downsampled": out_r < rows or out_c < cols,
        # elements per block along each axis (largest block), for the page's label
        "block": [int(np.diff(row_edges).max()), int(np.diff(np.append(col_starts, cols)).max())],
        "min": float(finite_means.min()) if finite_means.size else None,
        "max": float(finite_means.max()) if finite_means.size else None,
        # row-major; null where a block had no finite value
        "values": [None if not math.isfinite(v) else v for v in means.reshape(-1).tolist()],
        "max_abs": [None if not math.isfinite(v) else v for v in peaks.reshape(-1).tolist()],
        "max_abs_max": float(finite_peaks.max()) if finite_peaks.size else None,
    }


def format_head(arr: np.ndarray, precision: int, count: int) -> dict[str, Any]:
    """The first ``count`` values (flattened when the tensor is larger) printed with ``precision``."""
    from weightvault.inspect import format_values

    arr = np.asarray(arr)
    whole = arr.size <= count
    shown = arr if whole else arr.reshape(-1)[:count]
    if shown.dtype.kind in "OSU":  # strings: no precision to apply
        text = np.array2string(np.asarray(shown), threshold=count + 1, separator=", ", max_line_width=100)
    else:
        # "fixed": every value shows exactly ``precision`` digits, so changing it visibly changes
        # the print (numpy's default drops trailing zeros). numpy 2 keeps print options per context,
        # so this does not leak into other threads.
        with np.printoptions(floatmode="fixed"):
            text = format_values(np.asarray(shown), precision=precision, linewidth=100, threshold=count + 1)
    return {"precision": precision, "count": int(shown.size), "numel": int(arr.size), "whole": whole, "text": text}


# -- the viewer's state -----------------------------------------------------------------------------


def _with_role(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its ``role`` (weightvault.inspect.tensor_role): model, buffer, optimizer..."""
    from weightvault.inspect import tensor_role

    row["role"] = tensor_role(row["name"], row["dtype"], row["shape"])
    return row


def _info_dict(info: TensorInfo) -> dict[str, Any]:
    try:
        nbytes: int | None = info.nbytes
    except WeightVaultError:  # string tensors and other kinds with no fixed item size
        nbytes = None
    return {
        "name": info.name,
        "dtype": info.dtype,
        "shape": list(info.shape),
        "numel": info.numel,
        "nbytes": nbytes,
    }


class ViewerData:
    """The entries a viewer was started with, and everything the API computes from them."""

    def __init__(self, paths: list[str | os.PathLike[str]], *, cache_size: int = 64) -> None:
        if not paths:
            raise ValueError("the viewer needs at least one path")
        self.entries: list[Entry] = []
        self._summaries = LRUCache(cache_size)
        self._diffs = LRUCache(8)
        self._graphs = LRUCache(8)
        for raw in paths:
            self._add_path(raw)

    # -- entries --------------------------------------------------------------------------------
    def _add_path(self, raw: str | os.PathLike[str]) -> None:
        path: Path | str
        if is_url(raw):  # object storage (#17): the URL is the entry's path, read remotely
            path = label = os.fspath(raw)
            run = _scan_remote_run(path)
        else:
            path = Path(os.path.abspath(local_path(raw)))
            label = os.fspath(raw)
            run = _scan_run(path) if path.is_dir() and not _is_weight_path(path) else []
        if not run:
            self.entries.append(Entry(len(self.entries), path, label, "file"))
            return
        run_entry = Entry(len(self.entries), path, label, "run", best=_run_best(path))
        self.entries.append(run_entry)
        for found in run:
            entry = Entry(
                len(self.entries),
                os.fspath(found.path) if is_url(found.path) else found.path,
                f"{label.rstrip('/')}/{found.path.name}",
                "checkpoint",
                run=run_entry.index,
                step=found.step,
                metrics=found.metrics,
                kept_because=found.kept_because,
            )
            self.entries.append(entry)
            run_entry.checkpoints.append(entry.index)

    def entry(self, ref: str | int | None, param: str = "file") -> Entry:
        """The entry named by an index or by an entry's exact path; ApiError for anything else."""
        if ref is None or ref == "":
            raise ApiError(400, "missing_parameter", f"parameter {param!r} is required")
        text = str(ref)
        if text.isascii() and text.isdigit():
            # No int() of thousands of digits (Python refuses > 4300): an index has a few.
            if len(text) <= _MAX_INDEX_DIGITS and int(text) < len(self.entries):
                return self.entries[int(text)]
        else:
            for entry in self.entries:
                if text in (entry.label, os.fspath(entry.path)):
                    return entry
        raise ApiError(
            404, "unknown_file", f"{param}={_short(text, 80)!r} is not one of the {len(self.entries)} paths this viewer was opened with"
        )

    def tensor_entry(self, ref: str | int | None, param: str = "file") -> Entry:
        entry = self.entry(ref, param)
        if entry.kind == "run":
            if not entry.checkpoints:
                raise ApiError(422, "empty_run", f"run {entry.label} has no checkpoints")
            return self.entries[entry.checkpoints[-1]]  # a run shows its latest checkpoint
        return entry

    def reader(self, entry: Entry) -> FormatReader:
        """The entry's open reader (call with ``entry.lock`` held)."""
        if entry.reader is None:
            import weightvault

            entry.reader = weightvault.open(entry.path)
        return entry.reader

    def close(self) -> None:
        for entry in self.entries:
            with entry.lock:
                if entry.reader is not None:
                    try:
                        entry.reader.close()
                    finally:
                        entry.reader = None

    # -- API --------------------------------------------------------------------------------------
    def files(self) -> dict[str, Any]:
        return {"files": [e.to_dict() for e in self.entries]}

    def tree(self, ref: str | None) -> dict[str, Any]:
        from weightvault.inspect import ROLES, tensor_role

        entry = self.tensor_entry(ref)
        with entry.lock:
            reader = self.reader(entry)
            tensors = []
            by_role = dict.fromkeys(ROLES, 0)
            nbytes = 0
            by_dtype: dict[str, int] = {}
            for name in reader.keys():
                try:
                    row = _info_dict(reader.info(name))
                except WeightVaultError as exc:
                    tensors.append({"name": name, "error": str(exc)})
                    continue
                row["role"] = tensor_role(row["name"], row["dtype"], row["shape"])
                tensors.append(row)
                by_role[row["role"]] += row["numel"]
                nbytes += row["nbytes"] or 0
                by_dtype[row["dtype"]] = by_dtype.get(row["dtype"], 0) + row["numel"]
            fmt = reader.format
        return {
            "file": entry.index,
            "label": entry.label,
            "format": fmt,
            "tensors": tensors,
            # params: the model's own; optimizer slots, EMA copies, statistics, counters apart
            "totals": {
                "tensors": len(tensors),
                "params": by_role["model"],
                "by_role": by_role,
                "bytes": nbytes,
                "by_dtype": by_dtype,
            },
        }

    def graph(self, ref: str | None) -> dict[str, Any]:
        """The model graph of an entry (weightvault.graph), with its tensors attached to nodes.

        ``{"available": false, "reason"}`` for a format that carries no graph. Kept in a small cache:
        a graph is read once per entry, not per request."""
        from weightvault.graph import extract_graph

        entry = self.tensor_entry(ref)
        cached = self._graphs.get(entry.index)
        if cached is not None:
            return cached
        with entry.lock:
            reader = self.reader(entry)
            fmt = reader.format
            graph = extract_graph(entry.path, reader)
            names = set(reader.keys())
        base = {"file": entry.index, "label": entry.label, "format": fmt}
        if graph is None:
            reason = f"a {fmt} file carries no model graph (weights only)"
            return {**base, "available": False, "reason": reason}
        result = {**base, "available": True, **graph.to_json(names)}
        self._graphs.put(entry.index, result)
        return result

    def _require_tensor(self, entry: Entry, reader: FormatReader, name: str | None) -> str:
        if not name:
            raise ApiError(400, "missing_parameter", "parameter 'name' is required")
        if name not in reader:
            raise ApiError(404, "unknown_tensor", f"no tensor named {_short(name, 120)!r} in {entry.label}")
        return name

    def tensor(self, ref: str | None, name: str | None, *, bins: int = 64, grid: int = 96) -> dict[str, Any]:
        entry = self.tensor_entry(ref)
        bins = max(1, min(int(bins), MAX_BINS))
        grid = max(1, min(int(grid), MAX_GRID))
        with entry.lock:
            reader = self.reader(entry)
            name = self._require_tensor(entry, reader, name)
            key = ("tensor", entry.index, name, bins, grid)
            cached = self._summaries.get(key)
            if cached is not None:
                return cached
            info = reader.info(name)
            arr = np.asarray(reader.get(name))
            result = {
                "file": entry.index,
                "info": {**_info_dict(info), "extra": jsonable(dict(info.extra))},
                **_summarise(arr, bins, grid),
            }
        self._summaries.put(key, result)
        return result

    def values(self, ref: str | None, name: str | None, *, precision: int = 4, count: int = 100) -> dict[str, Any]:
        entry = self.tensor_entry(ref)
        precision = max(0, min(int(precision), MAX_PRECISION))
        count = max(1, min(int(count), MAX_VALUES))
        with entry.lock:
            reader = self.reader(entry)
            name = self._require_tensor(entry, reader, name)
            arr = reader.get(name)
            return {"file": entry.index, "name": name, **format_head(arr, precision, count)}

    def meta(self, ref: str | None) -> dict[str, Any]:
        entry = self.entry(ref)
        out: dict[str, Any] = {"file": entry.index, "label": entry.label, "kind": entry.kind}
        if entry.kind == "run":
            out["run"] = self.run(entry)
            return out
        with entry.lock:
            reader = self.reader(entry)
            metadata = dict(reader.metadata)
            manifest = getattr(reader, "manifest", None)
            out["format"] = reader.format
            out["tensors"] = len(reader.keys())
        out["metadata"] = jsonable(metadata)
        scalars = _saved_scalars(metadata, manifest)
        out["training"] = jsonable(_training_facts({**scalars, **metadata}))
        if scalars:
            out["saved_scalars"] = jsonable(scalars)
        if isinstance(manifest, dict):
            out["provenance"] = jsonable(
                {k: manifest.get(k) for k in ("format_version", "library_version", "created", "source") if k in manifest}
            )
            if manifest.get("transforms"):
                out["transforms"] = jsonable(manifest["transforms"])
        if entry.kind == "checkpoint":
            out["step"] = entry.step
            out["metrics"] = jsonable(entry.metrics)
        return out

    def run(self, entry: Entry) -> dict[str, Any]:
        checkpoints = []
        metric_names: list[str] = []
        for index in entry.checkpoints:
            ck = self.entries[index]
            metrics = jsonable(ck.metrics or self._metrics_from_file(ck))
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in metric_names:
                    metric_names.append(key)
            checkpoints.append(
                {"file": ck.index, "step": ck.step, "label": ck.label, "metrics": metrics, "kept_because": list(ck.kept_because)}
            )
        best = _best_checkpoint(checkpoints, entry.best, metric_names)
        for i, ck in enumerate(checkpoints):
            ck["latest"] = i == len(checkpoints) - 1
            ck["best"] = best is not None and ck["file"] == best["file"]
        return {
            "file": entry.index,
            "label": entry.label,
            "checkpoints": checkpoints,
            "metric_names": metric_names,
            "best": best,
        }

    def _metrics_from_file(self, ck: Entry) -> dict[str, Any]:
        try:
            with ck.lock:
                metadata = self.reader(ck).metadata
        except (WeightVaultError, OSError):
            return {}
        facts = _training_facts(metadata)
        metrics = facts.get("metrics")
        ck.metrics = dict(metrics) if isinstance(metrics, dict) else {}
        return ck.metrics

    def runs(self) -> dict[str, Any]:
        return {"runs": [self.run(e) for e in self.entries if e.kind == "run"]}

    def diff(self, ref_a: str | None, ref_b: str | None, *, atol: float = 0.0, rtol: float = 0.0) -> dict[str, Any]:
        from weightvault.inspect import diff as diff_readers

        a, b = self.tensor_entry(ref_a, "a"), self.tensor_entry(ref_b, "b")
        if not (math.isfinite(atol) and math.isfinite(rtol)) or atol < 0 or rtol < 0:
            raise ApiError(400, "bad_parameter", "atol and rtol must be finite and >= 0")
        key = ("diff", a.index, b.index, atol, rtol)
        cached = self._diffs.get(key)
        if cached is not None:
            return cached
        with _both_locked(a, b):
            ra, rb = self.reader(a), self.reader(b)
            report = diff_readers(ra, rb, atol=atol, rtol=rtol).to_dict()
            report["added"] = [_with_role(_info_dict(rb.info(n))) for n in report["added"]]
            report["removed"] = [_with_role(_info_dict(ra.info(n))) for n in report["removed"]]
            for kind in ("value_changed", "shape_changed", "dtype_changed"):
                for row in report[kind]:
                    row["role"] = _with_role(_info_dict(rb.info(row["name"])))["role"]
        result = {"a": a.index, "b": b.index, "atol": atol, "rtol": rtol, **jsonable(report)}
        self._diffs.put(key, result)
        return result

    def diff_tensor(self, ref_a: str | None, ref_b: str | None, name: str | None, *, bins: int = 64) -> dict[str, Any]:
        """Histogram and statistics of ``b - a`` for one tensor present in both with one shape."""
        a, b = self.tensor_entry(ref_a, "a"), self.tensor_entry(ref_b, "b")
        bins = max(1, min(int(bins), MAX_BINS))
        with _both_locked(a, b):
            ra, rb = self.reader(a), self.reader(b)
            name = self._require_tensor(a, ra, name)
            self._require_tensor(b, rb, name)
            key = ("difft", a.index, b.index, name, bins)
            cached = self._summaries.get(key)
            if cached is not None:
                return cached
            xa, xb = np.asarray(ra.get(name)), np.asarray(rb.get(name))
            if xa.shape != xb.shape:
                raise ApiError(422, "shape_changed", f"{name}: shape {list(xa.shape)} in a, {list(xb.shape)} in b")
            fa, fb = _numeric_flat(xa), _numeric_flat(xb)
            if fa is None or fb is None:
                raise ApiError(422, "not_numeric", f"{name}: dtype {xa.dtype} has no numeric difference")
            delta = _Delta(fa, fb)
            stats = _stats_of_chunks(delta.chunks)
            hist = histogram(delta.chunks, stats["min"], stats["max"], bins, integral=False)
            stats["max_abs"] = None if stats["min"] is None else max(abs(stats["min"]), abs(stats["max"]))
        result = {"a": a.index, "b": b.index, "name": name, "stats": jsonable(stats), "histogram": hist}
        self._summaries.put(key, result)
        return result


def _best_checkpoint(
    checkpoints: list[dict[str, Any]], setting: tuple[str, str] | None, metric_names: list[str]
) -> dict[str, Any] | None:
    """The best checkpoint: by the manager's ``best=`` metric, else by the lowest ``*loss*``.

    ``{"file", "step", "metric", "mode", "source"}``; None when no checkpoint has a usable metric.
    Ties go to the earlier step, as in the manager's ranking.
    """
    if setting is not None:
        metric, mode = setting
        source = "the run's best= setting"
    else:
        losses = [n for n in metric_names if "loss" in n.lower()]
        if not losses:
            return None
        metric, mode = losses[0], "min"
        source = "lowest loss (the run has no best= setting)"
    scored = [
        (value, ck)
        for ck in checkpoints
        if isinstance(value := ck["metrics"].get(metric), (int, float)) and not isinstance(value, bool)
    ]
    if not scored:
        return None
    sign = -1.0 if mode == "max" else 1.0
    _, ck = min(scored, key=lambda vc: (sign * vc[0], vc[1]["step"] if vc[1]["step"] is not None else 0))
    return {"file": ck["file"], "step": ck["step"], "metric": metric, "mode": mode, "source": source}


class _both_locked:
    """Hold two entries' locks, always in index order (no deadlock when two diffs cross)."""

    def __init__(self, a: Entry, b: Entry) -> None:
        self.locks = [a.lock] if a is b else [e.lock for e in sorted((a, b), key=lambda e: e.index)]

    def __enter__(self) -> None:
        for lock in self.locks:
            lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for lock in reversed(self.locks):
            lock.release()


class _Delta:
    """``b - a`` produced chunk by chunk in float64."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a, self.b = a, b

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.a.size, _CHUNK):
            ca = self.a[start : start + _CHUNK].astype(np.float64)
            cb = self.b[start : start + _CHUNK].astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                yield cb - ca


def _stats_of_chunks(make: Callable[[], Iterator[np.ndarray]]) -> dict[str, Any]:
    from weightvault.inspect import finite_stats

    return finite_stats(make)


def _summarise(arr: np.ndarray, bins: int, grid: int) -> dict[str, Any]:
    from weightvault.inspect import tensor_stats

    flat = _numeric_flat(arr)
    if flat is None:
        return {"stats": None, "histogram": None, "heatmap": None, "note": f"dtype {arr.dtype} has no numeric statistics"}
    stats = tensor_stats(arr)
    integral = arr.dtype.kind in "biu"
    scale = power_of_two_scale(max(abs(stats["min"]), abs(stats["max"]))) if stats["min"] is not None else 1.0
    return {
        "stats": jsonable(stats),
        "histogram": histogram(lambda: _chunks(flat), stats["min"], stats["max"], bins, integral),
        "heatmap": heatmap(arr, grid, scale),
    }


def _training_facts(metadata: dict[str, Any]) -> dict[str, Any]:
    """step, epoch and metrics found in a file's metadata (top level, or one level down)."""
    facts: dict[str, Any] = {}
    record = metadata.get(_RUN_RECORD_KEY)
    if isinstance(record, dict):
        facts.update({k: record[k] for k in ("step", "metrics") if k in record})
    # metrics dicts are reported whole, not searched for more keys
    scopes = [metadata] + [v for k, v in metadata.items() if isinstance(v, dict) and k not in ("metrics", "metric")]
    for scope in scopes:
        for key in _TRAINING_KEYS:
            if key in scope and key not in facts and not isinstance(scope[key], (list, tuple)):
                facts[key] = scope[key]
    return facts


def _find_tree_spec(metadata: dict[str, Any], manifest: Any) -> dict[str, Any] | None:
    """The saved object tree (weightvault.core.tree spec) a reader exposes, if any."""
    candidates = [manifest.get("tree") if isinstance(manifest, dict) else None, metadata.get("tree")]
    candidates += [v.get("tree") for v in metadata.values() if isinstance(v, dict)]
    for spec in candidates:
        if isinstance(spec, dict) and spec.get("t") == "dict":
            return spec
    return None


def _saved_scalars(metadata: dict[str, Any], manifest: Any) -> dict[str, Any]:
    """Top-level numbers and strings saved beside the tensors (epoch, global_step, best_acc...).

    A torch training checkpoint keeps them in its object tree, not in metadata; rebuilding the
    tree with a fetch that reads nothing finds them without touching tensor data.
    """
    from weightvault.core.tree import unflatten

    spec = _find_tree_spec(metadata, manifest)
    if spec is None:
        return {}
    try:
        obj = unflatten(spec, lambda name: None)
    except (KeyError, TypeError, ValueError):
        return {}
    if not isinstance(obj, dict):
        return {}
    found = {str(k): v for k, v in obj.items() if isinstance(v, (bool, int, float, str))}
    return dict(list(found.items())[:50])
