"""The public functions: save, load, open, verify, convert.

One obvious call per task. ``open`` works on every registered format and returns a lazy reader;
``load`` returns the saved structure as numpy or torch; ``save`` always writes the native format;
``convert`` streams any readable format into any writable one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from weightvault.abc.format import DescribedTensors, FormatReader, LazyTensors, VerifyResult
from weightvault.core.dtypes import STRING, dtype_from_name
from weightvault.core.tree import unflatten
from weightvault.errors import (
    ChecksumMismatchError,
    CorruptFileError,
    InvalidHeaderError,
    UnsupportedObjectError,
    UnsupportedOperationError,
)
from weightvault.core.shards import DEFAULT_SHARD_SIZE
from weightvault.registry import check_options, detect_format, format_for_destination, get_format

if TYPE_CHECKING:  # numpy and the native format load with the first save/load, not with `open`
    import numpy as np

__all__ = ["ConversionReport", "convert", "load", "open", "save", "verify"]

PathLike = str | os.PathLike[str]


def save(
    obj: Any,
    path: PathLike,
    metadata: Mapping[str, Any] | None = None,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    single_file: bool | None = None,
    fsync: bool = True,
    progress: bool | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    process_group: Any = None,
    timeout: float | None = None,
) -> Path:
    """Save weights or nested training state as a native weightvault checkpoint.

    Args:
        obj: a state dict, or any nesting of dicts (str/int/... keys), lists, tuples, scalars and
            tensors (numpy, torch on any device, jax). Tied tensors are stored once.
        path: ``*.safetensors`` for one file, anything else for a sharded directory.
        metadata: JSON-serialisable user metadata kept in the manifest.
        shard_size: maximum data bytes per shard in the directory form.
        include, exclude: glob patterns over tensor names for a partial save (a tensor is
            saved when it matches some ``include`` (or there is none) and no ``exclude``).
        process_group: save from every rank of this torch.distributed group (a collective: call
            it on every rank). Also taken without it when torch.distributed is initialised and
            ``obj`` holds DTensors. Each rank writes only its own chunks; see
            :mod:`weightvault.frameworks.torch_distributed` and ``docs/distributed-save.md``.
        timeout: distributed saves: seconds a rank waits for the others before it raises
            :class:`~weightvault.errors.CheckpointSaveError` (default 600).

    Returns:
        The path written.

    Example:
        >>> import numpy as np, weightvault, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> p = weightvault.save({"w": np.ones((2, 3), np.float32)}, os.path.join(d, "m.safetensors"))
        >>> weightvault.load(p)["w"].shape
        (2, 3)
    """
    if _is_url(path):  # object storage (#17): weightvault.storage
        from weightvault import storage

        if _wants_distributed(obj, process_group):  # every rank uploads its chunks, rank 0 commits
            from weightvault.frameworks.torch_distributed import save_distributed

            return str(  # type: ignore[return-value]
                save_distributed(
                    storage.location(path, storage_options), obj, metadata=metadata,
                    shard_size=shard_size, process_group=process_group, timeout=timeout,
                    include=include, exclude=exclude,
                )  # fmt: skip
            )
        return storage.save_url(  # type: ignore[return-value]
            obj, path, storage_options=storage_options, metadata=metadata, shard_size=shard_size,
            single_file=single_file, progress=progress, include=include, exclude=exclude,
        )  # fmt: skip
    if _wants_distributed(obj, process_group):
        from weightvault.frameworks.torch_distributed import save_distributed

        return save_distributed(
            _local(path), obj, metadata=metadata, shard_size=shard_size, fsync=fsync,
            process_group=process_group, timeout=timeout, include=include, exclude=exclude,
        )  # fmt: skip
    from weightvault.formats.native import save_native

    return save_native(
        _local(path),
        obj,
        metadata=metadata,
        shard_size=shard_size,
        single_file=single_file,
        fsync=fsync,
        progress=progress,
        include=include,
        exclude=exclude,
    )


def _wants_distributed(obj: Any, process_group: Any) -> bool:
    """A distributed save: a process group given, or torch.distributed running and DTensors in
    ``obj``. Imports nothing unless torch.distributed is already imported."""
    import sys

    if process_group is None and "torch.distributed" not in sys.modules:
        return False
    from weightvault.frameworks.torch_distributed import wants_distributed

    return wants_distributed(obj, process_group)


def open(  # noqa: A001
    path: PathLike,
    *,
    format: str | None = None,  # noqa: A002
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> FormatReader:
    """Open any weight file weightvault can read and return a lazy reader.

    The reader has ``.format``, ``.metadata``, ``.keys()``, ``.info(name)``, ``.get(name)`` (a
    zero-copy view where the format allows) and ``.get_slice(name, index)``.

    ``path`` may be a URL (``s3://``, ``gs://``, ``memory://``...; ``storage_options`` go to its
    filesystem): a native checkpoint is then read with ranged requests (see
    ``docs/object_store.md``).

    >>> path = weightvault.save({"w": np.arange(4, dtype=np.float32)}, tmp_path / "m.wv")
    >>> with weightvault.open(path) as reader:
    ...     reader.format, reader.keys(), reader.get("w").tolist()
    ('native', ['w'], [0.0, 1.0, 2.0, 3.0])
    """
    if _is_url(path):  # object storage (#17): weightvault.storage
        from weightvault import storage

        return storage.open_url(path, format=format, storage_options=storage_options, **options)
    path = _local(path)
    if format is None:
        fmt = detect_format(path)
        check_options(fmt, options, "read", path=path)
        return fmt.open(path, **options)
    fmt = get_format(format)
    check_options(fmt, options, "read", path=path)
    try:
        return fmt.open(path, **options)
    except (CorruptFileError, UnsupportedObjectError) as exc:
        raise _not_this_format(fmt, path, exc) from exc


def _not_this_format(fmt: Any, path: PathLike, exc: Exception) -> Exception:
    """A forced format that fails on a file that does not even look like it: say so ("not an
    ONNX file") rather than the field its parser tripped over."""
    from weightvault.registry import format_title, sniff_format

    p = Path(path)
    try:
        head = b""
        if p.is_file():
            with p.open("rb") as f:
                head = f.read(4096)
        claimed = p.exists() and not fmt.sniff(p, head)
        actual = sniff_format(p) if claimed else None
    except Exception:  # noqa: BLE001 - only choosing a message; the reader's error stands otherwise
        actual = None
    if actual is None or actual == fmt.name:
        # Nothing else claims the file (a damaged file of this format?) or it looks like this
        # format: the parser's own message is the useful one.
        return exc
    title = format_title(fmt.name)
    article = "an" if title[:1] in "AEIOU" and not title.startswith("One") else "a"
    looks = f"; it looks like {format_title(actual)} ({actual})"
    return InvalidHeaderError(
        f"not {article} {title} file{looks}",
        path=path,
        hint=f"drop --format (format= in Python) to detect the format; with --format {fmt.name}, "
        f"the reader said: {getattr(exc, 'message', str(exc))}",
    )


def _load_reader(reader: FormatReader, framework: str, device: Any) -> Any:
    """The saved structure, every tensor copied out of the file (so it can be closed).

    A reader that describes its tree by tensor names (``tree_spec``) gets each stored tensor
    allocated once (tied names share it) and filled by its ``read_jobs`` on a few threads; a
    reader that can only rebuild its tree (``structure``) is copied as it comes; any other is a
    flat ``{name: tensor}`` dict.
    """
    spec = reader.tree_spec()
    if spec is None:
        tree = reader.structure()
        if tree is not None:
            return _materialise(tree, framework, device)
        spec = _flat_spec(reader.keys())
    made = _read_tensors(reader, framework, device)
    aliases = reader.aliases
    return unflatten(spec, lambda name: made[aliases.get(name, name)])


def _flat_spec(names: list[str]) -> dict[str, Any]:
    return {"t": "dict", "items": [[["s", n], {"t": "tensor", "name": n}] for n in names]}


def _read_tensors(reader: FormatReader, framework: str, device: Any) -> dict[str, Any]:
    """Every stored tensor by name: allocated, then filled with parallel reads where the reader
    offers them (``checked_info`` + ``read_jobs``), else copied from ``get``."""
    import numpy as np

    made: dict[str, Any] = {}
    strings: dict[str, np.ndarray] = {}  # no framework has string tensors: they stay numpy
    jobs: list[Any] = []
    pinned = False
    if framework == "torch":
        from weightvault.frameworks.torch import wants_pinned

        pinned = wants_pinned(device)
    aliases = reader.aliases
    for name in reader.keys():
        target = aliases.get(name, name)
        if target in made or target in strings:
            continue
        info = reader.checked_info(target)  # not None: the file holds these bytes, safe to allocate
        if info is None or info.dtype == STRING:
            arr = np.array(reader.get(target))
            (strings if arr.dtype.kind == "O" else made)[target] = arr
            continue
        if pinned:
            from weightvault.frameworks.torch import empty_like_info

            tensor, view = empty_like_info(info.dtype, info.shape, pin_memory=True)
            made[target] = tensor
        else:
            # numpy's allocator, then a zero-copy hand-over to torch: torch.empty's first call in a
            # process costs ~0.3 s of allocator start-up that a plain buffer does not.
            view = np.empty(info.shape, dtype=dtype_from_name(info.dtype))
            made[target] = view
        jobs.extend(reader.read_jobs(target, view))
    _run_parallel(jobs)
    if framework == "torch":
        from weightvault.frameworks.torch import from_numpy

        made = {k: v if not isinstance(v, np.ndarray) else from_numpy(v) for k, v in made.items()}
        if device is not None:
            from weightvault.frameworks.torch import to_device

            made = to_device(made, device)
    made.update(strings)
    return made


def _run_parallel(jobs: list[Any]) -> None:
    # A few threads: the copies release the GIL, and more threads than cores only add contention.
    workers = min(4, os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        for job in jobs:
            job()
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()


def load(
    path: PathLike,
    framework: Literal["numpy", "torch"] = "numpy",
    device: Any = None,
    *,
    verify: bool = False,
    format: str | None = None,  # noqa: A002
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Load a checkpoint into memory and return the saved structure.

    Native checkpoints come back exactly as saved (nesting, int keys, tuples, scalars, tied
    tensors). Other formats come back as their structure where the format has one, else as a
    flat ``{name: tensor}`` dict.

    Args:
        framework: ``"numpy"`` or ``"torch"``.
        device: torch device to move tensors to (torch only).
        verify: check every checksum before returning.

    >>> path = weightvault.save({"fc": {"weight": np.ones((2, 3), np.float32)}, "step": 7}, tmp_path / "c.wv")
    >>> state = weightvault.load(path)
    >>> state["step"], state["fc"]["weight"].shape
    (7, (2, 3))
    >>> # torch is an optional dependency: the next line is shown, not run
    >>> weightvault.load(path, framework="torch")["fc"]["weight"].dtype  # doctest: +SKIP
    torch.float32
    """
    if framework not in ("numpy", "torch"):
        raise ValueError(f"framework must be 'numpy' or 'torch', not {framework!r}")
    if _is_url(path):  # object storage (#17): parallel ranged reads into preallocated buffers
        from weightvault import storage

        return storage.load_url(
            path, storage_options=storage_options, framework=framework, device=device,
            verify=verify, format=format,
        )  # fmt: skip
    with open(path, format=format) as reader:
        if verify:
            result = reader.verify()
            if result.failures:
                raise ChecksumMismatchError("; ".join(result.failures[:3]), path=path)
        return _load_reader(reader, framework, device)


def _materialise(tree: Any, framework: str, device: Any) -> Any:
    """Copy every array out of the file (so it can be closed) and convert for the framework."""
    import numpy as np

    if isinstance(tree, np.ndarray):
        arr = np.array(tree)
        if framework == "torch" and arr.dtype.kind != "O":  # string tensors stay numpy
            from weightvault.frameworks.torch import from_numpy

            return from_numpy(arr, device)
        return arr
    if isinstance(tree, dict):
        return {k: _materialise(v, framework, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_materialise(v, framework, device) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_materialise(v, framework, device) for v in tree)
    return tree


def verify(
    path: PathLike,
    *,
    format: str | None = None,  # noqa: A002
    storage_options: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Check every checksum the file carries; raises :class:`ChecksumMismatchError` on a mismatch.

    Formats without checksums are read completely (which catches truncation and bad headers)
    and counted as ``unchecked``.

    >>> result = weightvault.verify(weightvault.save({"w": np.ones(3)}, tmp_path / "m.wv"))
    >>> result.checked, result.failures
    (1, [])
    """
    with open(path, format=format, storage_options=storage_options) as reader:
        result = reader.verify()
    if result.failures:
        first = result.failures[0].split(":", 1)[0]
        raise ChecksumMismatchError(
            f"{len(result.failures)} tensor(s) fail verification: {'; '.join(result.failures[:3])}",
            path=path,
            tensor=first,
        )
    return result


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    to: str | None = None,
    src_format: str | None = None,
    read_options: Mapping[str, Any] | None = None,
    write_options: Mapping[str, Any] | None = None,
    rules: str | None = None,
    hints: Mapping[str, str] | None = None,
    rename: list[tuple[str, str]] | None = None,
    name_map: Mapping[str, str] | PathLike | None = None,
    rule_options: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    skip_unsupported: bool = False,
    dtype: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ConversionReport:
    """Convert a weight file from any readable format to any writable one, tensor by tensor.

    The destination format is ``to`` or follows from ``dst``'s name (no known ending: native).
    The source's metadata is carried over where the target can hold it; a native target also
    records where the weights came from and, with ``rules``, every transform applied.

    Args:
        rules: a layout rule set (``keras-to-torch``, ``torch-to-keras``, ``tf1-to-torch``,
            ``onnx-to-torch``, ``gorgonia-to-torch``, ``oneflow-to-torch``); None copies names
            and layouts as they are.
        hints: ``{layer_glob: kind}`` where the file cannot tell (e.g. ``{"dw": "depthwise"}``).
        rename: ``[(regex, replacement), ...]`` applied to target names.
        name_map: ``{name: new_name}`` or a JSON/YAML file holding one.
        dry_run: plan and report without writing anything.
        skip_unsupported: leave out what the conversion cannot carry (string tensors for a target
            that cannot hold them, entries the source reader cannot return, see
            :attr:`FormatReader.skipped`) and list them in ``report.skipped``. Without it such
            entries are refused with :class:`UnsupportedOperationError` naming them: nothing is
            dropped silently.
        dtype: cast every floating tensor to this dtype (``float32``, ``bf16``...), as a step of
            the plan; integer, bool and string tensors are kept as they are and listed in
            ``report.uncast``.
        include, exclude: glob patterns over source tensor names (as in :func:`save`): a target
            is written when all its sources are kept; the others are listed in ``dropped``.

    The destination's missing parent directories are created and ``~`` is expanded.

    Either side may be a URL (``storage_options`` go to both filesystems); URL to URL streams
    tensor by tensor without a local copy when the target is native.

    Returns:
        A :class:`ConversionReport` (per target tensor: sources, transforms, shapes; ``skipped``).

    >>> src = weightvault.save({"fc": {"weight": np.ones((2, 3), np.float32)}}, tmp_path / "c.wv")
    >>> report = weightvault.convert(src, tmp_path / "c.npz", rename=[("^fc/", "head.")])
    >>> [(t["target"], t["target_shape"]) for t in report.to_dict()["tensors"]]
    [('head.weight', [2, 3])]
    >>> with weightvault.open(tmp_path / "c.npz") as reader:
    ...     reader.format, reader.keys()
    ('numpy', ['head.weight'])
    """
    from weightvault.rules import build_plan, load_name_map

    if name_map is not None and not isinstance(name_map, Mapping):
        name_map = load_name_map(name_map)
    dst = _destination(dst)
    fmt = format_for_destination(dst, to)
    check_options(fmt, dict(write_options or {}), "write", path=dst)
    with open(
        src, format=src_format, storage_options=storage_options, **dict(read_options or {})
    ) as reader:
        plan = build_plan(
            reader, rules, hints=hints, rename=rename, name_map=name_map, options=rule_options
        )
        plan = _filtered(plan, include, exclude)
        plan, uncast = _with_cast(plan, reader, dtype)
        skipped = _unsupported_entries(reader, plan, fmt)
        if skipped and not skip_unsupported:
            _refuse_unsupported(skipped, src, fmt.name)
        plan = _without_targets(plan, skipped)
        tensors = plan.apply(reader)
        report = ConversionReport(os.fspath(src), os.fspath(dst), reader.format, fmt.name, plan, tensors, reader)
        report.skipped = skipped
        report.uncast = uncast
        if dry_run:
            report.compute_shapes()
            return report
        metadata: dict[str, Any] = dict(reader.metadata)
        options = dict(write_options or {})
        if fmt.name == "native":
            extra: dict[str, Any] = {"source": {"path": os.fspath(src), "format": reader.format}}
            if rules is not None or rename or name_map or dtype or include or exclude:
                extra["transforms"] = plan.to_dict()
            options.setdefault("extra_manifest", extra)
        source: Mapping[str, Any] = (
            LazyTensors(reader, [step.target for step in plan.steps])
            if plan.rules == "rename" and not (rename or name_map or dtype)
            else tensors
        )
        if _is_url(dst):  # object storage (#17)
            from weightvault import storage

            left_out = storage.write_converted(
                fmt, dst, source, metadata=metadata, storage_options=storage_options, **options
            )
        else:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            left_out = fmt.write(dst, source, metadata=metadata, **options)
        if isinstance(left_out, Mapping):  # a template writer's training-only tensors (tf_graph)
            report.skipped = {**report.skipped, **left_out}
        report.compute_shapes()
    return report


def _destination(dst: PathLike) -> str:
    """``~/out.pt`` as the user meant it."""
    if _is_url(dst):
        return os.fspath(dst)
    return os.path.expanduser(os.fspath(_local(dst)))


def _is_url(path: Any) -> bool:
    """#17: ``s3://``, ``gs://``, ``memory://``... go to :mod:`weightvault.storage`."""
    from weightvault.storage.location import is_url

    return is_url(path)


def _local(path: Any) -> Any:
    """#17: a ``file://`` URL as the plain path it names (anything else unchanged)."""
    from weightvault.storage.location import local_path

    return local_path(path)


#: spellings of floating dtypes people type for ``--dtype``
_DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "double": "float64",
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
    "float": "float32",
    "fp16": "float16",
    "fp32": "float32",
    "fp64": "float64",
    "half": "float16",
}
_FLOATING = ("float16", "bfloat16", "float32", "float64")


def _is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _cast_dtype(dtype: str) -> str:
    name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    if name not in _FLOATING:
        raise UnsupportedOperationError(
            f"--dtype {dtype!r} is not a floating dtype; choose one of {', '.join(_FLOATING)}",
            hint="--dtype casts floating tensors only (bf16 -> float32 for .npz, "
            "float32 -> float16 to halve a file)",
        )
    return name


def _with_cast(plan: Any, reader: FormatReader, dtype: str | None) -> tuple[Any, dict[str, str]]:
    """Append a cast to every step whose sources are floating; the others are returned, by target,
    with their dtype (integer, bool and string tensors are never cast)."""
    if dtype is None:
        return plan, {}
    from weightvault.transforms.base import Cast
    from weightvault.transforms.plan import Plan, Step

    target = _cast_dtype(dtype)
    steps, uncast = [], {}
    for step in plan.steps:
        dtypes = [reader.info(s).dtype for s in step.sources]
        if not dtypes or not all(_is_floating(d) for d in dtypes):
            uncast[step.target] = dtypes[0] if dtypes else "constant"
            steps.append(step)
        elif step.transforms or step.combine or dtypes[0] != target:
            cast = Cast(target, dtypes[0] if len(set(dtypes)) == 1 else None)
            transforms = (*step.transforms, cast)
            steps.append(Step(step.target, step.sources, transforms, step.combine, step.note))
        else:
            steps.append(step)  # already that dtype: a plain copy
    return Plan(plan.rules, steps, plan.dropped, plan.notes), uncast


def _filtered(plan: Any, include: Sequence[str] | None, exclude: Sequence[str] | None) -> Any:
    """Keep the steps whose sources all pass the include/exclude globs; the rest are dropped."""
    from weightvault.core.tree import name_filter
    from weightvault.transforms.plan import Plan

    keep = name_filter(list(include or []), list(exclude or []))
    if keep is None:
        return plan
    steps, dropped = [], dict(plan.dropped)
    for step in plan.steps:
        if all(keep(s) for s in step.sources):
            steps.append(step)
        else:
            for s in step.sources:
                if not keep(s):
                    dropped.setdefault(s, "left out by --include/--exclude")
    return Plan(plan.rules, steps, dropped, plan.notes)


def _unsupported_entries(reader: FormatReader, plan: Any, fmt: Any) -> dict[str, str]:
    """What the conversion cannot carry, by name, with why: entries the reader cannot return, and
    string tensors (as sources of a target tensor) when the target format cannot hold them."""
    out = {name: f"not readable as a tensor: {why}" for name, why in reader.skipped.items()}
    if fmt.can_write_strings:
        return out
    for step in plan.steps:
        strings = [s for s in step.sources if reader.info(s).dtype == STRING]
        if strings:
            out[step.target] = f"string tensor; the {fmt.name} format cannot hold strings"
    return out


def _refuse_unsupported(skipped: Mapping[str, str], src: PathLike, target: str) -> None:
    first, why = next(iter(skipped.items()))
    others = list(skipped)[1:]
    more = f" (and {len(others)} more: {', '.join(others[:5])})" if others else ""
    raise UnsupportedOperationError(
        f"cannot convert to {target}: {why}{more}",
        path=src,
        tensor=first,
        hint="pass --skip-unsupported (skip_unsupported=True in Python) to leave these out and "
        "list them in the report, or convert to the native format, which keeps string tensors",
    )


def _without_targets(plan: Any, skipped: Mapping[str, str]) -> Any:
    if not skipped:
        return plan
    from weightvault.transforms.plan import Plan

    steps = [s for s in plan.steps if s.target not in skipped]
    return Plan(plan.rules, steps, plan.dropped, plan.notes)


class ConversionReport:
    """What a conversion did: for each target tensor, its sources, transforms and shapes;
    ``skipped`` maps what was left out with ``skip_unsupported`` to why."""

    def __init__(self, src: str, dst: str, src_format: str, dst_format: str, plan: Any, tensors: Any, reader: FormatReader) -> None:
        self.src, self.dst = src, dst
        self.src_format, self.dst_format = src_format, dst_format
        self.plan = plan
        self._tensors = tensors
        self._reader = reader
        self.rows: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        #: with ``dtype``: targets left uncast (integer, bool, string), with their dtype
        self.uncast: dict[str, str] = {}

    def compute_shapes(self) -> None:
        rows = []
        for step in self.plan.steps:
            src_shapes = [list(self._reader.info(s).shape) for s in step.sources]
            info = self._tensors.info(step.target) if isinstance(self._tensors, DescribedTensors) else None
            rows.append(
                {
                    "target": step.target,
                    "sources": list(step.sources),
                    "source_shapes": src_shapes,
                    "target_shape": list(info.shape) if info else src_shapes[0] if src_shapes else [],
                    "transforms": step.describe(),
                    "note": step.note,
                }
            )
        self.rows = rows

    def __fspath__(self) -> str:
        return self.dst

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "src_format": self.src_format,
            "dst_format": self.dst_format,
            "rules": self.plan.rules,
            "tensors": self.rows,
            "dropped": self.plan.dropped,
            "skipped": dict(self.skipped),
            "uncast": dict(self.uncast),
            "notes": self.plan.notes,
        }
