"""Selective restore: load the weights of any readable checkpoint into a model, and say what happened.

``restore(model, path, ...)`` works in two phases:

1. **Plan** (reads only names, shapes and dtypes): pick the part of the file that holds the model
   weights (a ``model`` / ``state_dict`` / ``model_state_dict`` group of a training state, or the
   EMA shadows with ``use_ema``), strip decorations such as ``module.`` (DDP) and ``_orig_mod.``
   (``torch.compile``) from both sides, apply renames, apply ``include``/``exclude`` globs, and
   match names and shapes. The result is a :class:`RestoreReport`.
2. **Load**, only when the plan is acceptable: ``strict=True`` refuses missing or unexpected
   names and any shape mismatch raises :class:`~weightvault.errors.ShapeMismatchError` naming
   both shapes (unless ``allow_shape_mismatch``). Errors are raised *before* any weight is
   touched, so a refused restore leaves the model exactly as it was.

Names the model has but the file lacks keep their current (initial) values and are listed as
``missing``: restoring into a model that grew works with ``strict=False`` and says which layers
were not restored. Globs and renames are written in terms of the *model's* names (after prefix
stripping), which is what a user knows.

The same planning serves ``weightvault restore-report`` (:func:`compare`), which compares a
checkpoint with another checkpoint or a list of expected names and shapes, without the model's
class. :func:`select` is the partial-save helper (``weightvault.save(select(sd, include=...))``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightvault.abc.format import TensorInfo
from weightvault.core.memory import MemoryReader
from weightvault.core.names import DEFAULT_STRIP_PREFIXES, match_names, strip_wrappers
from weightvault.core.tree import name_filter
from weightvault.errors import (
    ShapeMismatchError,
    StrictRestoreError,
    TensorNotFoundError,
    WeightVaultError,
)
from weightvault.rules import load_rename_file

__all__ = [
    "DEFAULT_STRIP_PREFIXES",
    "MODEL_GROUPS",
    "RestoreReport",
    "StrictRestoreError",
    "compare",
    "load_rename_file",
    "match_names",
    "plan",
    "read_target_spec",
    "restore",
    "select",
    "strip_wrappers",
]

# Top-level groups of a training state that hold the model weights, most specific first.
MODEL_GROUPS = ("model_state_dict", "state_dict", "model")
_SEPARATORS = ("/", ".")
_CHUNK_BYTES = 256 << 20  # tensors handed to load_state_dict at once (bounds the extra memory)

PathLike = str | os.PathLike[str]
Rename = Sequence[tuple[str, str]] | Mapping[str, str] | PathLike | None


@dataclass(frozen=True)
class TargetSpec:
    """What the target expects for one name (shape/dtype None: not known, not checked)."""

    shape: tuple[int, ...] | None
    dtype: str | None = None


@dataclass
class RestoreReport:
    """What a restore did (or would do): every name of both sides lands in exactly one list.

    Attributes:
        loaded: ``{"name", "source", "shape", "source_dtype", "dtype"}`` per restored tensor.
        missing: model names with nothing in the checkpoint (they keep their current values).
        unexpected: ``{"name", "source"}`` for checkpoint tensors the model has no place for.
        mismatched: ``{"name", "source", "source_shape", "target_shape"}`` (skipped or error).
        skipped: ``{"name", "source", "reason"}`` left out on purpose (include/exclude, EMA
            shadows when the raw weights are restored).
        renamed: ``(source_key, model_name)`` pairs where the two differ.
    """

    source: str
    format: str | None = None
    source_key: str | None = None
    use_ema: bool = False
    ema_convention: str | None = None
    strict: bool = True
    loaded: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    # Model shapes, to show beside missing names in the table.
    _target_shapes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when every selected model name was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def loaded_names(self) -> list[str]:
        return [row["name"] for row in self.loaded]

    def counts(self) -> dict[str, int]:
        return {
            "loaded": len(self.loaded),
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "mismatched": len(self.mismatched),
            "skipped": len(self.skipped),
            "renamed": len(self.renamed),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "source_key": self.source_key,
            "use_ema": self.use_ema,
            "ema_convention": self.ema_convention,
            "strict": self.strict,
            "ok": self.ok,
            "counts": self.counts(),
            "loaded": [dict(r, shape=_shape_list(r["shape"])) for r in self.loaded],
            "missing": list(self.missing),
            "unexpected": [dict(r) for r in self.unexpected],
            "mismatched": [
                dict(
                    r,
                    source_shape=_shape_list(r["source_shape"]),
                    target_shape=_shape_list(r["target_shape"]),
                )
                for r in self.mismatched
            ],
            "skipped": [dict(r) for r in self.skipped],
            "renamed": [list(p) for p in self.renamed],
        }

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """``(status, model name, checkpoint key, checkpoint shape, model shape)`` per name."""
        out: list[tuple[str, str, str, str, str]] = []
        for r in self.loaded:
            shape = _fmt_shape(r["shape"])
            cast = r.get("dtype") is not None and r.get("source_dtype") != r.get("dtype")
            out.append(
                ("loaded (cast)" if cast else "loaded", r["name"], r["source"], shape, shape)
            )
        out.extend(
            (
                "shape mismatch",
                r["name"],
                r["source"],
                _fmt_shape(r["source_shape"]),
                _fmt_shape(r["target_shape"]),
            )
            for r in self.mismatched
        )
        out.extend(
            ("unexpected", r["name"], r["source"], _fmt_shape(r.get("shape")), "-")
            for r in self.unexpected
        )
        out.extend(
            ("missing", name, "-", "-", _fmt_shape(self._target_shapes.get(name)))
            for name in self.missing
        )
        out.extend(
            (
                f"skipped: {r['reason']}",
                r["name"],
                r.get("source") or "-",
                _fmt_shape(r.get("shape")),
                "-",
            )
            for r in self.skipped
        )
        return out

    def summary(self) -> str:
        c = self.counts()
        what = f"{self.source}" + (f" [{self.source_key}]" if self.source_key else "")
        if self.use_ema:
            what += f" (EMA weights, {self.ema_convention})"
        optimizer = sum(1 for r in self.skipped if "optimizer" in r["reason"])
        return (
            f"{what}: loaded {c['loaded']}, missing {c['missing']}, unexpected {c['unexpected']}, "
            f"shape mismatch {c['mismatched']}, skipped {c['skipped']}"
            + (f" (optimizer state {optimizer})" if optimizer else "")
            + f", renamed {c['renamed']}"
        )

    def __str__(self) -> str:
        header = ("status", "model name", "checkpoint key", "checkpoint shape", "model shape")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        return "\n".join([*lines, self.summary()])


def _shape_list(shape: Any) -> list[int] | None:
    return None if shape is None else [int(x) for x in shape]


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    dims = [str(int(x)) for x in shape]
    return "(" + dims[0] + ",)" if len(dims) == 1 else "(" + ", ".join(dims) + ")"


# -- partial saves ------------------------------------------------------------------------------------


def select(
    state: Mapping[str, Any],
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """The entries of a (flat) state dict whose names match ``include`` and no ``exclude`` glob.

    Same semantics as ``weightvault.save(obj, path, include=..., exclude=...)``: ``*`` matches
    any characters including ``.`` and ``/``; no ``include`` means everything.

    Example:
        >>> sd = {"backbone.w": 1, "backbone.b": 2, "head.w": 3}
        >>> select(sd, exclude=["head.*"])
        {'backbone.w': 1, 'backbone.b': 2}
    """
    keep = name_filter(_globs(include), _globs(exclude))
    if keep is None:
        return dict(state)
    return {k: v for k, v in state.items() if keep(str(k))}


def _globs(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# -- renames ------------------------------------------------------------------------------------------


def _parse_rename(rename: Rename) -> tuple[dict[str, str], list[tuple[str, str]]]:
    if rename is None:
        return {}, []
    if isinstance(rename, (str, os.PathLike)):
        return load_rename_file(rename)
    if isinstance(rename, Mapping):
        return {str(k): str(v) for k, v in rename.items()}, []
    rules = []
    for pair in rename:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"rename rules are (regex, replacement) pairs, not {pair!r}")
        rules.append((str(pair[0]), str(pair[1])))
    return {}, rules


# -- sources ------------------------------------------------------------------------------------------


class _FileSource:
    def __init__(self, path: PathLike) -> None:
        from weightvault.api import open as open_weights

        self.reader = open_weights(path)
        self.format = getattr(self.reader, "format", None)

    def keys(self) -> list[str]:
        return list(self.reader.keys())

    def info(self, name: str) -> TensorInfo:
        return self.reader.info(name)

    def get(self, name: str) -> np.ndarray:
        return self.reader.get(name)

    def close(self) -> None:
        self.reader.close()


class _RuledSource(_FileSource):
    """A file seen through a conversion rule set (``tf1-to-torch``...): the plan's target names,
    built in memory, each tensor computed on access. What the rule set drops (optimizer slots,
    unused EMA shadows) is kept in ``dropped`` for the report."""

    def __init__(self, path: PathLike, rules: str, hints: Mapping[str, str] | None, use_ema: bool):
        from weightvault.rules import build_plan

        super().__init__(path)
        try:
            plan = build_plan(self.reader, rules, hints=hints, options={"use_ema": use_ema})
        except BaseException:
            self.reader.close()
            raise
        self.format = f"{self.format} via {rules}"
        self.dropped = dict(plan.dropped)
        self.notes = list(plan.notes)
        self.tensors = plan.apply(self.reader)

    def keys(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.tensors.info(name)

    def get(self, name: str) -> np.ndarray:
        return self.tensors[name]


def _open_source(
    source: Any,
    rules: str | None = None,
    hints: Mapping[str, str] | None = None,
    use_ema: bool = False,
) -> Any:
    if rules is not None:
        if isinstance(source, Mapping):
            raise TypeError("rules= applies to a file, not an in-memory state")
        return _RuledSource(source, rules, hints, use_ema)
    if isinstance(source, Mapping):
        return MemoryReader(source)
    return _FileSource(source)


def _shape(source: Any, name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in source.info(name).shape)


def _dtype(source: Any, name: str) -> str:
    return str(source.info(name).dtype)


def _optimizer_state(key: str) -> str | None:
    """Why ``key`` is training state rather than a model weight (TF1 optimizer slots such as
    ``w/Adam_1``, ``beta1_power``, ``global_step``), or None."""
    from weightvault.rules.common import is_optimizer_or_bookkeeping

    if not is_optimizer_or_bookkeeping(key):
        return None
    last = key.rstrip("/").rsplit("/", 1)[-1]
    if last in ("global_step", "beta1_power", "beta2_power", "save_counter"):
        return "optimizer bookkeeping (step / beta power)"
    return "optimizer slot (not a model weight)"


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def _dtype_name(value: Any) -> str:
    if _is_torch(value):
        from weightvault.frameworks.torch import describe

        return describe(value).dtype
    from weightvault.core.dtypes import dtype_name

    return dtype_name(np.asarray(value).dtype)


def _groups(keys: Iterable[str]) -> dict[str, str]:
    """Top-level model groups present in ``keys``: ``{group: prefix_with_separator}``."""
    found: dict[str, str] = {}
    key_list = list(keys)
    for group in MODEL_GROUPS:
        for sep in _SEPARATORS:
            prefix = group + sep
            if any(k.startswith(prefix) for k in key_list):
                found.setdefault(group, prefix)
    return found


# -- planning -----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    report: RestoreReport
    pairs: list[tuple[str, str]]  # (model name, source key) to load


def plan(
    source: Any,
    target: Mapping[str, TargetSpec],
    *,
    strict: bool = True,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    rename: Rename = None,
    strip_prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES,
    use_ema: bool = False,
    source_key: str | None = None,
    source_name: str | None = None,
) -> _Plan:
    """Match a source (an open source from :func:`_open_source`) with target specs; reads no data."""
    from weightvault.checkpoint.ema import ema_source_names

    keys = source.keys()
    exact, rules = _parse_rename(rename)
    keep = name_filter(_globs(include), _globs(exclude))
    report = RestoreReport(
        source=source_name or "<memory>",
        format=getattr(source, "format", None),
        use_ema=use_ema,
        strict=strict,
    )
    report._target_shapes = {k: v.shape for k, v in target.items()}
    ema_map, convention = ema_source_names(keys)

    # 1. which file keys are candidates, under which (relative) names
    skipped_shadows: list[str] = []
    beside: list[str] = []
    for key, why in getattr(source, "dropped", {}).items():  # what a rule set left out, and why
        shape = tuple(source.reader.info(key).shape)
        report.skipped.append({"name": key, "source": key, "reason": why, "shape": shape})
    if isinstance(source, _RuledSource):  # the rule set has chosen raw or EMA weights already
        candidates, report.ema_convention = {k: k for k in keys}, "tensorflow" if use_ema else None
    elif use_ema:
        if not ema_map:
            raise TensorNotFoundError(
                "use_ema=True but the checkpoint has no EMA weights (looked for ema/shadow/*, "
                "state_dict_ema, model_ema and */ExponentialMovingAverage)",
                path=report.source,
                hint="save them with weightvault.torch.capture(ema=weightvault.EMA(model)), or leave out --use-ema (use_ema=True in Python)",
            )
        candidates = dict(ema_map)
        report.ema_convention = convention
        report.source_key = {"weightvault": "ema/shadow", "tensorflow": None}.get(convention or "")
    else:
        shadow_keys = set(ema_map.values())
        candidates, report.source_key = _choose_group(
            keys, shadow_keys, target, source_key, strip_prefixes, exact, rules, report.source
        )
        beside = _beside_group(keys, candidates, shadow_keys, report.source_key, source_key)
        # In-place shadows (TF "w/ExponentialMovingAverage", timm "model_ema.*" inside a model)
        # are not the model's raw weights: skip them, visibly.
        for rel, key in list(candidates.items()):
            if key in shadow_keys:
                del candidates[rel]
                skipped_shadows.append(key)

    # 2. normalise both sides, rename, match
    target_names = list(target)
    norm_target: dict[str, str] = {}
    for name in target_names:
        norm = strip_wrappers(name, strip_prefixes, keep=())
        # Two model names that normalise alike (rare): the first keeps the normalised form, the
        # other is matched by its raw name only.
        norm_target.setdefault(norm, name)
    direct = set(target_names)

    matched: dict[str, str] = {}  # model name -> source key
    relative: dict[str, str] = {}  # source key -> its name inside the chosen group
    # Exact names first: of "module.x" and "x" in one checkpoint, "x" is the one for model "x".
    for rel, key in sorted(candidates.items(), key=lambda item: item[0] not in direct):
        name = rel if rel in direct else strip_wrappers(rel, strip_prefixes, keep=direct)
        name = exact.get(rel, exact.get(name, name))
        for pattern, repl in rules:
            name = re.sub(pattern, repl, name)
        stripped = strip_wrappers(name, strip_prefixes)
        model_name = name if name in direct else norm_target.get(stripped)
        shown = model_name or name
        if keep is not None and not keep(shown):
            report.skipped.append(
                {"name": shown, "source": key, "reason": "not selected", "shape": _shape(source, key)}
            )
            continue
        if model_name is None:
            row = {"name": name, "source": key, "shape": _shape(source, key)}
            optimizer = _optimizer_state(key)
            if optimizer is not None:
                report.skipped.append({**row, "reason": optimizer})
            else:
                report.unexpected.append(row)
            continue
        if model_name in matched:
            # Two checkpoint tensors for one model name ("module.x" and "x"): which one is meant
            # is a guess, so the second is left over like torch's unexpected keys.
            report.unexpected.append(
                {
                    "name": key,
                    "source": key,
                    "shape": _shape(source, key),
                    "reason": f"also maps to {model_name!r}, loaded from {matched[model_name]!r}",
                }
            )
            continue
        matched[model_name] = key
        relative[key] = rel

    for key in beside:
        row = {"name": key, "source": key, "shape": _shape(source, key)}
        if keep is not None and not keep(key):
            report.skipped.append({**row, "reason": "not selected"})
        else:
            reason = f"beside the model weights under {report.source_key!r}"
            report.unexpected.append({**row, "reason": reason})

    for key in skipped_shadows:
        report.skipped.append(
            {
                "name": key,
                "source": key,
                "reason": "EMA shadow (--use-ema / use_ema=True loads it)",
                "shape": _shape(source, key),
            }
        )

    # 3. shapes
    pairs: list[tuple[str, str]] = []
    for name in target_names:
        key = matched.get(name)
        if key is None:
            if keep is None or keep(name):
                report.missing.append(name)
            continue
        spec = target[name]
        src_shape = _shape(source, key)
        if spec.shape is not None and tuple(spec.shape) != src_shape:
            report.mismatched.append(
                {
                    "name": name,
                    "source": key,
                    "source_shape": src_shape,
                    "target_shape": tuple(spec.shape),
                }
            )
            continue
        pairs.append((name, key))
        report.loaded.append(
            {
                "name": name,
                "source": key,
                "shape": src_shape,
                "source_dtype": _dtype(source, key),
                "dtype": spec.dtype,
            }
        )
        if relative[key] != name:
            report.renamed.append((key, name))
    return _Plan(report, pairs)


def _beside_group(
    keys: list[str],
    candidates: Mapping[str, str],
    shadow_keys: set[str],
    group: str | None,
    source_key: str | None,
) -> list[str]:
    """Tensors of the same flat state dict as an automatically chosen ``model.`` name prefix.

    A ``/`` group is a nested entry of a training state (what lies outside it is optimizer
    state, counters...), but a ``.`` prefix is only part of the names of one flat state dict:
    ``{"model.x", "lm_head.weight"}`` restored into the inner model leaves ``lm_head.weight``
    over, which torch's strict loading refuses too. Naming ``source_key`` says it is meant.
    """
    if group is None or source_key is not None:
        return []
    chosen = set(candidates.values())
    if not any(k.startswith(group + ".") for k in chosen):
        return []
    return [k for k in keys if k not in chosen and k not in shadow_keys]


def _choose_group(
    keys: list[str],
    shadow_keys: set[str],
    target: Mapping[str, TargetSpec],
    source_key: str | None,
    strip_prefixes: Sequence[str],
    exact: Mapping[str, str],
    rules: Sequence[tuple[str, str]],
    path: str,
) -> tuple[dict[str, str], str | None]:
    """``({relative name: key}, group)``: the model weights of a training state, or everything."""
    if source_key is not None:
        for sep in _SEPARATORS:
            prefix = source_key.rstrip("/.") + sep
            found = {k[len(prefix) :]: k for k in keys if k.startswith(prefix)}
            if found:
                return found, source_key.rstrip("/.")
        tops = sorted({re.split(r"[/.]", k, maxsplit=1)[0] for k in keys})
        raise TensorNotFoundError(
            f"no tensors under source_key {source_key!r}; top-level names: {', '.join(tops[:20])}",
            path=path,
            tensor=source_key,
        )
    everything = {k: k for k in keys}
    groups = _groups(keys)
    if not groups:
        return everything, None
    # Pick the group whose names match the model best; a group beats the whole file on a tie (a
    # training state's model group is what a user means), but a model whose own names start with
    # "model." keeps matching directly.
    norm_target = {strip_wrappers(n, strip_prefixes) for n in target} | set(target)

    def score(cands: Mapping[str, str]) -> int:
        hits = 0
        for rel in cands:
            name = exact.get(rel, strip_wrappers(rel, strip_prefixes))
            for pattern, repl in rules:
                name = re.sub(pattern, repl, name)
            hits += name in norm_target or strip_wrappers(name, strip_prefixes) in norm_target
        return hits

    best: tuple[int, dict[str, str], str | None] = (score(everything), everything, None)
    for group, prefix in groups.items():
        cands = {k[len(prefix) :]: k for k in keys if k.startswith(prefix) and k not in shadow_keys}
        s = score(cands)
        if s >= best[0] and (best[2] is None or s > best[0]):
            best = (s, cands, group)
    return best[1], best[2]


# -- targets ------------------------------------------------------------------------------------------


def _module_spec(model: Any) -> dict[str, TargetSpec]:
    from weightvault.frameworks.torch import describe

    out = {}
    for name, value in model.state_dict().items():
        desc = describe(value)
        out[name] = TargetSpec(tuple(int(x) for x in value.shape), desc.dtype)
    return out


def _dict_spec(target: Mapping[str, Any]) -> dict[str, TargetSpec]:
    return {
        str(k): TargetSpec(tuple(int(x) for x in np.shape(v)), _dtype_name(v))
        for k, v in target.items()
    }


def _is_module(model: Any) -> bool:
    return (
        hasattr(model, "state_dict")
        and hasattr(model, "load_state_dict")
        and not isinstance(model, Mapping)
    )


# -- restore ------------------------------------------------------------------------------------------


def restore(
    model: Any,
    path: PathLike | Mapping[str, Any],
    strict: bool = True,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    rename: Rename = None,
    strip_prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES,
    dtype: Any = None,
    device: Any = None,
    use_ema: bool = False,
    allow_shape_mismatch: bool = False,
    source_key: str | None = None,
    rules: str | None = None,
    hints: Mapping[str, str] | None = None,
) -> RestoreReport:
    """Load matching weights from any readable checkpoint into ``model``; return a report.

    Args:
        model: a ``torch.nn.Module`` or a ``dict`` of numpy arrays (updated in place).
        path: any weight file or checkpoint directory ``weightvault.open`` reads (a training
            state saved with :mod:`weightvault.torch` too), or an in-memory state dict.
        strict: raise :class:`StrictRestoreError` if a selected model name has no weight in the
            checkpoint or a checkpoint weight has no place in the model. ``False`` loads what
            matches; the rest keeps its current values and is listed in the report.
        include, exclude: globs over model names (after prefix stripping and renaming); names
            not selected are neither loaded nor reported as missing.
        rename: ``[(regex, replacement), ...]`` applied in order to checkpoint names, a
            ``{checkpoint_name: model_name}`` dict, or a JSON/YAML file with either.
        strip_prefixes: decorations removed (repeatedly) from both sides before matching.
        dtype: also convert the model's floating-point weights to this dtype (``model.to``);
            loaded values are cast to the model's dtype either way.
        device: move the model to this device first (torch).
        use_ema: load the EMA shadow weights (ours, timm's, TensorFlow's) as the model weights.
        allow_shape_mismatch: skip tensors whose shapes differ (reported) instead of raising.
        source_key: the group holding the model weights in a training state (default: found
            automatically among ``model_state_dict``, ``state_dict``, ``model``).
        rules: a conversion rule set (``"tf1-to-torch"``, ``"keras-to-torch"``... as in
            ``convert --rules``) applied in memory first: the model is matched with the names
            and layouts the rule set produces; what it drops (optimizer slots) is reported as
            skipped. With ``use_ema`` the rule set takes the EMA shadows.
        hints: ``{layer glob: kind}`` for the rule set where the file cannot tell.

    Raises:
        ShapeMismatchError: a shape differs and ``allow_shape_mismatch`` is False.
        StrictRestoreError: ``strict`` and names are missing or unexpected.
        TensorNotFoundError: ``use_ema`` without EMA weights, or ``source_key`` not found.
        Nothing is loaded when an error is raised.

    The target may be a dict of numpy arrays, filled in place (a ``torch.nn.Module`` works the
    same way); DDP's ``module.`` prefix is stripped and the model group of a training state found:

    >>> weights = {"module.fc.weight": np.full((2, 2), 3.0, np.float32)}
    >>> path = weightvault.save({"model": weights, "step": 5}, tmp_path / "c.wv")
    >>> target = {"fc.weight": np.zeros((2, 2), np.float32)}
    >>> report = weightvault.restore(target, path)
    >>> report.ok, target["fc.weight"].tolist()
    (True, [[3.0, 3.0], [3.0, 3.0]])
    >>> [(e["name"], e["source"]) for e in report.loaded]
    [('fc.weight', 'model/module.fc.weight')]
    """
    module = _is_module(model)
    if not module and not isinstance(model, dict):
        raise TypeError(
            f"restore() needs a torch.nn.Module or a dict of arrays, not {type(model).__name__}"
        )
    name = "<memory>" if isinstance(path, Mapping) else os.fspath(path)
    source = _open_source(path, rules, hints, use_ema)
    try:
        return _restore_from(
            model, module, source, name, strict, include, exclude, rename, strip_prefixes,
            dtype, device, use_ema, allow_shape_mismatch, source_key,
        )  # fmt: skip
    except (WeightVaultError, OSError) as exc:
        if not isinstance(path, Mapping):
            from weightvault.checkpoint.manager import deleted_step_error

            deleted = deleted_step_error(path)  # a run's step deleted by retention mid-read
            if deleted is not None:
                raise deleted from exc
        raise
    finally:
        source.close()


def _restore_from(
    model: Any,
    module: bool,
    source: Any,
    name: str,
    strict: bool,
    include: Sequence[str] | str | None,
    exclude: Sequence[str] | str | None,
    rename: Rename,
    strip_prefixes: Sequence[str],
    dtype: Any,
    device: Any,
    use_ema: bool,
    allow_shape_mismatch: bool,
    source_key: str | None,
) -> RestoreReport:
    """The body of :func:`restore` once the source is open."""
    if module and (dtype is not None or device is not None):
        model.to(device=device, dtype=_torch_dtype(dtype))
    target = _module_spec(model) if module else _dict_spec(model)
    result = plan(
        source,
        target,
        strict=strict,
        include=include,
        exclude=exclude,
        rename=rename,
        strip_prefixes=strip_prefixes,
        use_ema=use_ema,
        source_key=source_key,
        source_name=name,
    )
    _check(result.report, allow_shape_mismatch, name)
    if module:
        _load_into_module(model, source, result.pairs)
    else:
        _load_into_dict(model, source, result.pairs, dtype)
    if dtype is not None and not module:
        for row in result.report.loaded:
            row["dtype"] = _dtype_name(model[row["name"]])
    return result.report


def _check(report: RestoreReport, allow_shape_mismatch: bool, path: str) -> None:
    if report.mismatched and not allow_shape_mismatch:
        first = report.mismatched[0]
        listing = "; ".join(
            f"{m['name']}: checkpoint {_fmt_shape(m['source_shape'])} vs model {_fmt_shape(m['target_shape'])}"
            for m in report.mismatched[:5]
        )
        more = f" (+{len(report.mismatched) - 5} more)" if len(report.mismatched) > 5 else ""
        err = ShapeMismatchError(
            f"{len(report.mismatched)} shape mismatch(es): {listing}{more}",
            path=path,
            tensor=first["name"],
            hint="pass allow_shape_mismatch=True to skip them (they keep their current values), or exclude them",
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    if report.strict and (report.missing or report.unexpected):
        parts = []
        if report.missing:
            parts.append(f"missing in checkpoint: {_short(report.missing)}")
        if report.unexpected:
            unexpected = [_why(u) for u in report.unexpected]
            parts.append(f"unexpected in checkpoint: {_short(unexpected)}")
        err2 = StrictRestoreError(
            "; ".join(parts),
            path=path,
            hint="strict=False loads what matches; rename=/strip_prefixes=/include=/exclude= map "
            "or select names; source_key= names the part of a training state holding the model",
        )
        err2.report = report
        raise err2


def _why(row: Mapping[str, Any]) -> str:
    return f"{row['name']} ({row['reason']})" if row.get("reason") else str(row["name"])


def _short(names: Sequence[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _torch_dtype(dtype: Any) -> Any:
    if dtype is None or not isinstance(dtype, str):
        return dtype
    from weightvault.frameworks.torch import torch_dtype

    return torch_dtype(dtype)


def _load_into_module(model: Any, source: Any, pairs: list[tuple[str, str]]) -> None:
    """Through ``load_state_dict`` (so module hooks run), a bounded chunk of tensors at a time."""
    from collections import OrderedDict

    from weightvault.frameworks.torch import from_numpy

    # Version metadata keeps modules like BatchNorm from "upgrading" a chunk that happens not to
    # contain their num_batches_tracked.
    metadata = getattr(model.state_dict(), "_metadata", None)
    chunk: OrderedDict[str, Any] = OrderedDict()
    size = 0

    def flush() -> None:
        nonlocal chunk, size
        if chunk:
            if metadata is not None:
                chunk._metadata = metadata  # type: ignore[attr-defined]
            model.load_state_dict(chunk, strict=False)
        chunk, size = OrderedDict(), 0

    for name, key in pairs:
        arr = source.get(key)
        chunk[name] = from_numpy(np.ascontiguousarray(arr))
        size += arr.nbytes
        if size >= _CHUNK_BYTES:
            flush()
    flush()


def _load_into_dict(
    target: dict[str, Any], source: Any, pairs: list[tuple[str, str]], dtype: Any
) -> None:
    from weightvault.core.dtypes import dtype_from_name

    for name, key in pairs:
        value = source.get(key)
        current = target[name]
        if dtype is not None:
            want = dtype_from_name(dtype) if isinstance(dtype, str) else np.dtype(dtype)
            target[name] = np.array(value, dtype=want)
        elif isinstance(current, np.ndarray) and current.flags.writeable:
            np.copyto(current, value, casting="unsafe")
        else:
            target[name] = np.array(value, dtype=np.asarray(current).dtype)


# -- compare (restore-report without a model) ---------------------------------------------------------


def read_target_spec(
    target: PathLike | Mapping[str, Any], *, source_key: str | None = None
) -> dict[str, TargetSpec]:
    """Expected names and shapes from a weight file, or from a JSON/YAML/text list.

    Text lists: one ``name`` or ``name shape`` per line (shape as ``3x4``, ``3,4`` or ``[3, 4]``;
    ``#`` comments). JSON/YAML: ``{name: shape}``, ``{name: {"shape": [...], "dtype": ...}}`` or a
    list of names. A weight file that is a training state contributes its model group.
    """
    if isinstance(target, Mapping):
        return _spec_from_mapping(target, "<memory>")
    p = Path(target)
    suffix = p.suffix.lower()
    if p.is_file() and suffix in (".json", ".yaml", ".yml", ".txt", ".lst"):
        text = p.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith(("{", "[")):
            # A bare-JSON list of names or shapes; a native checkpoint is a directory or .safetensors.
            return _spec_from_mapping(json.loads(text), p)
        if suffix in (".yaml", ".yml"):
            import yaml

            return _spec_from_mapping(yaml.safe_load(text), p)
        if suffix in (".txt", ".lst"):
            return _spec_from_lines(text, p)
    source = _open_source(target)
    try:
        keys = source.keys()
        groups = _groups(keys)
        group = source_key or next(iter(groups), None)
        if group is not None:
            prefix = groups.get(group, group + "/")
            keys = [k for k in keys if k.startswith(prefix)]
            return {k[len(prefix) :]: TargetSpec(_shape(source, k), _dtype(source, k)) for k in keys}
        return {k: TargetSpec(_shape(source, k), _dtype(source, k)) for k in keys}
    finally:
        source.close()


def _spec_from_mapping(data: Any, where: Any) -> dict[str, TargetSpec]:
    if isinstance(data, list):
        return {str(n): TargetSpec(None) for n in data}
    if not isinstance(data, Mapping):
        raise WeightVaultError("expected an object of name -> shape or a list of names", path=where)
    out = {}
    for name, value in data.items():
        if isinstance(value, Mapping):
            shape = value.get("shape")
            out[str(name)] = TargetSpec(
                None if shape is None else tuple(int(x) for x in shape), value.get("dtype")
            )
        elif value is None:
            out[str(name)] = TargetSpec(None)
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            out[str(name)] = TargetSpec(tuple(int(x) for x in value.shape), _dtype_name(value))
        else:
            out[str(name)] = TargetSpec(tuple(int(x) for x in value))
    return out


def _spec_from_lines(text: str, where: Any) -> dict[str, TargetSpec]:
    out = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition(" ")
        rest = rest.strip().strip("[]()")
        try:
            shape = tuple(int(x) for x in re.split(r"[x,\s]+", rest) if x) if rest else None
        except ValueError as exc:
            raise WeightVaultError(
                f"line {lineno}: cannot read shape {rest!r}", path=where
            ) from exc
        out[name] = TargetSpec(shape if rest else None)
    return out


def compare(
    checkpoint: PathLike | Mapping[str, Any],
    target: PathLike | Mapping[str, Any],
    *,
    include: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    rename: Rename = None,
    strip_prefixes: Sequence[str] = DEFAULT_STRIP_PREFIXES,
    use_ema: bool = False,
    source_key: str | None = None,
    target_key: str | None = None,
    rules: str | None = None,
    hints: Mapping[str, str] | None = None,
) -> RestoreReport:
    """What ``restore(model, checkpoint, strict=False, ...)`` would do for a model shaped like ``target``.

    ``target`` is another checkpoint (its names and shapes), or a file/mapping of expected names
    and shapes (see :func:`read_target_spec`). Reads no tensor data.
    """
    spec = read_target_spec(target, source_key=target_key)
    name = "<memory>" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint)
    source = _open_source(checkpoint, rules, hints, use_ema)
    try:
        return plan(
            source,
            spec,
            strict=False,
            include=include,
            exclude=exclude,
            rename=rename,
            strip_prefixes=strip_prefixes,
            use_ema=use_ema,
            source_key=source_key,
            source_name=name,
        ).report
    finally:
        source.close()


# Code written when ``weightvault.restore`` could be the module reads ``weightvault.restore.select``
# and friends; the function carries them as attributes so that keeps working. The documented
# spelling is ``from weightvault.checkpoint.restore import select``.
for _name in __all__:
    if _name != "restore":
        setattr(restore, _name, globals()[_name])
del _name
