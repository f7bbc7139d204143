"""tf1-to-torch: TF1 graph-mode checkpoints (``layer/weights``, slim, ``tf.layers``, RNN cells).

* ``weights``/``kernel`` 2-D: Dense ``[in, out]`` -> ``.weight`` transposed; 3/4/5-D: convolution
  (slim/tf.layers name depthwise kernels ``depthwise_weights``/``depthwise_kernel``, so a plain
  ``weights`` is a convolution; conv and transposed conv share the permutation);
* ``biases``/``bias`` -> ``.bias``; BatchNorm ``gamma/beta/moving_mean/moving_variance`` (slim's
  default ``scale=False`` stores no gamma: filled with ones);
* ``LSTMCell``/``BasicLSTMCell`` fused ``kernel (in+H, 4H)`` = ``[W_x; W_h]`` with gates
  ``i,j,f,o`` and a run-time ``forget_bias`` (1.0 unless hinted ``SCOPE=forget_bias:X``);
  ``MultiRNNCell`` ``cell_N`` become PyTorch layers ``_lN``, ``fw``/``bw`` the ``_reverse`` ones.
  A cell is recognised by its scope name (``lstm_cell``, ``basic_lstm_cell``), or, under any
  name, by its variables' shapes (kernel ``[in+H, 4H]`` + bias ``[4H]``) inside an RNN scope
  (``rnn``, ``*_rnn``, ``while``, ``multi_rnn_cell``, ``cell_N``, ``fw``/``bw``), or by a hint
  ``SCOPE=lstm``; ``SCOPE=dense`` keeps a look-alike a Dense layer. TF 1.0-1.2 names
  (``weights``/``biases``) work as ``kernel``/``bias``. The target module is the cell's scope
  without the cell's own name (``rnn/my_cell`` -> ``rnn``). Peephole cells are refused;
* ``GRUCell`` (recognised by ``gates/`` ``[in+H, 2H]`` + ``candidate/`` ``[in+H, H]`` under any
  name) applies the reset gate before the matmul: refused (not exactly convertible);
* a hint that matches no scope is an error naming it (a typo would otherwise change nothing);
* EMA: with ``use_ema`` the ``X/ExponentialMovingAverage`` shadow replaces ``X``; otherwise shadows
  are dropped and listed. Optimizer slots and ``global_step`` are dropped.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from weightvault.abc.format import FormatReader
from weightvault.errors import UnsupportedOperationError, WeightVaultError
from weightvault.rules import AmbiguousLayoutError, Hints
from weightvault.rules.common import clean_tf_name, is_optimizer_or_bookkeeping, to_dotted
from weightvault.transforms import AddConstant, Full, ReorderGates, Split, Transpose
from weightvault.transforms.plan import Plan, Step

__all__ = ["tf1_to_torch"]

EMA_SUFFIX = "/ExponentialMovingAverage"
_CONV_PERM = {3: (2, 1, 0), 4: (3, 2, 0, 1), 5: (4, 3, 0, 1, 2)}
_RENAME = {
    "weights": "weight",
    "kernel": "weight",
    "biases": "bias",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "embeddings": "weight",
}


def _sources(reader: FormatReader, plan: Plan, use_ema: bool) -> dict[str, str]:
    """Clean variable name -> stored tensor to read (the EMA shadow when asked)."""
    names = {clean_tf_name(n): n for n in reader.keys()}
    chosen: dict[str, str] = {}
    for clean, stored in names.items():
        if clean.endswith(EMA_SUFFIX):
            if not use_ema:
                plan.dropped[stored] = "EMA shadow variable (pass --ema, use_ema=True in Python, to use it)"
            continue
        if is_optimizer_or_bookkeeping(clean):
            plan.dropped[stored] = "optimizer slot or bookkeeping"
            continue
        shadow = names.get(clean + EMA_SUFFIX)
        if use_ema and shadow is not None:
            chosen[clean] = shadow
        else:
            chosen[clean] = stored
    if use_ema:
        used = sum(1 for c, s in chosen.items() if clean_tf_name(s).endswith(EMA_SUFFIX))
        plan.notes.append(f"EMA: {used} of {len(chosen)} variables taken from their shadow")
    return chosen


_KERNELS = ("kernel", "weights")  # TF >= 1.3 / TF 1.0-1.2 spelling
_BIASES = ("bias", "biases")
_PEEPHOLES = ("w_f_diag", "w_i_diag", "w_o_diag")
#: scope components that only RNN code creates (dynamic_rnn's default scope, its while loop, ...)
_RNN_SCOPE = re.compile(r"rnn|\w+_rnn|rnn_\w+|while|multi_rnn_cell|cell_\d+|fw|bw|(basic_)?lstm_cell")
_NAMED_LSTM = re.compile(r"(^|/)(basic_)?lstm_cell$")
_KINDS = ("lstm", "gru", "dense", "forget_bias:X")


def _pick(variables: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((variables[n] for n in names if n in variables), None)


def _rnn_target(scope: str) -> tuple[str, str]:
    """Cell scope -> (PyTorch module, suffix): ``rnn/multi_rnn_cell/cell_1/lstm_cell`` ->
    (``rnn``, ``_l1``); the cell's own name is dropped (``rnn/my_cell`` -> ``rnn``) unless it is
    all there is; ``fw``/``bw`` give ``_l0``/``_l0_reverse``."""
    layer = 0
    reverse = False
    parts = []
    *outer, cell = scope.split("/")
    for part in outer:
        if m := re.fullmatch(r"cell_(\d+)", part):
            layer = int(m.group(1))
        elif part in ("bw", "backward"):
            reverse = True
        elif part not in ("fw", "forward", "multi_rnn_cell"):
            parts.append(part)
    module = "/".join(parts) or cell
    return to_dotted(module), f"_l{layer}" + ("_reverse" if reverse else "")


class _Scopes:
    """Variables grouped by scope, and what kind of layer each scope is."""

    def __init__(self, reader: FormatReader, sources: dict[str, str], hints: Hints) -> None:
        self.reader = reader
        self.hints = hints
        self.vars: dict[str, dict[str, str]] = {}
        for clean, stored in sources.items():
            scope, _, var = clean.rpartition("/")
            self.vars.setdefault(scope, {})[var] = stored
        self.used_hints: set[str] = set()
        self.gru_cells = self._find_gru_cells()

    def shape(self, stored: str) -> tuple[int, ...]:
        return tuple(self.reader.info(stored).shape)

    def hint(self, scope: str) -> str | None:
        value = self.hints.get(scope)
        for pattern, _ in self.hints.items():
            if pattern == scope or fnmatch.fnmatchcase(scope, pattern):
                self.used_hints.add(pattern)
        return value

    def _find_gru_cells(self) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
        """``cell scope -> (gates vars, candidate vars)`` for GRU-shaped scope pairs."""
        cells = {}
        for scope, gates in self.vars.items():
            cell, _, leaf = scope.rpartition("/")
            candidate = self.vars.get(f"{cell}/candidate" if cell else "candidate")
            if leaf != "gates" or candidate is None:
                continue
            gk, ck = _pick(gates, _KERNELS), _pick(candidate, _KERNELS)
            if gk is None or ck is None:
                continue
            (gr, gc), (cr, cc) = (self.shape(gk) + (0, 0))[:2], (self.shape(ck) + (0, 0))[:2]
            if len(self.shape(gk)) == 2 and gr == cr and gc == 2 * cc and gr > cc:
                cells[cell] = (gates, candidate)
        return cells

    def projection(self, scope: str) -> str | None:
        """The projection kernel ``[H, P]`` of an ``LSTMCell(num_proj=P)`` at ``scope``."""
        return _pick(self.vars.get(f"{scope}/projection", {}), _KERNELS)

    def lstm_shaped(self, scope: str, variables: dict[str, str]) -> bool:
        kernel, bias = _pick(variables, _KERNELS), _pick(variables, _BIASES)
        if kernel is None or len(self.shape(kernel)) != 2:
            return False
        rows, cols = self.shape(kernel)
        projection = self.projection(scope)
        recurrent = self.shape(projection)[-1] if projection else cols // 4
        fits = cols % 4 == 0 and cols > 0 and rows > recurrent
        return fits and (bias is None or self.shape(bias) == (cols,))

    def kind(self, scope: str, variables: dict[str, str]) -> tuple[str, str]:
        """(kind, why) of one scope: ``lstm``, ``plain`` (dense/conv/batchnorm/...)."""
        hint = self.hint(scope)
        if hint is not None:
            if hint == "lstm" or hint.startswith("forget_bias:"):
                _forget_bias(hint, scope, self.reader.path)  # a malformed value fails here
                if not self.lstm_shaped(scope, variables):
                    raise AmbiguousLayoutError(
                        f"hint {scope}={hint}: the scope's variables "
                        f"{ {v: list(self.shape(s)) for v, s in variables.items()} } are not an "
                        "LSTM cell's (kernel [in+H, 4H], bias [4H])",
                        path=self.reader.path,
                    )
                return "lstm", f"--hint {hint}"
            if hint == "dense":
                return "plain", "--hint dense"
            if hint == "gru":
                return "gru", "--hint gru"
            raise AmbiguousLayoutError(f"hint {scope}={hint}: unknown kind for tf1-to-torch",
                                       path=self.reader.path, hint=f"kinds: {', '.join(_KINDS)}")
        if any(p in variables for p in _PEEPHOLES):
            return "lstm", "peepholes"
        if _NAMED_LSTM.search(scope) and _pick(variables, _KERNELS):
            return "lstm", "named lstm_cell"
        outer = scope.split("/")[:-1]
        if self.lstm_shaped(scope, variables) and any(_RNN_SCOPE.fullmatch(p) for p in outer):
            return "lstm", "LSTM shapes under an RNN scope"
        return "plain", ""


def tf1_to_torch(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    plan = Plan("tf1-to-torch")
    scopes = _Scopes(reader, _sources(reader, plan, bool(options.get("use_ema"))), hints)
    gru_parts = {f"{c}/{leaf}" if c else leaf for c in scopes.gru_cells for leaf in ("gates", "candidate")}
    kinds: dict[str, tuple[str, str]] = {}
    for cell in scopes.gru_cells:
        scopes.hint(cell)  # a hint naming the cell counts as used; no hint makes a GRU exact
        kinds[cell] = ("gru", "gates [in+H, 2H] + candidate [in+H, H]")
    for scope, variables in scopes.vars.items():
        if scope in gru_parts:
            continue
        if re.search(r"(^|/)gru_cell/(gates|candidate)$", scope):
            kinds[scope] = ("gru", "named gru_cell")
        else:
            kinds[scope] = scopes.kind(scope, variables)
    for scope, (kind, _) in list(kinds.items()):
        if kind == "lstm" and scopes.projection(scope):
            kinds.pop(f"{scope}/projection", None)  # part of the cell (num_proj)
    _check_hints_used(reader, hints, scopes)
    for scope, (kind, why) in kinds.items():
        if kind == "gru":
            gates, _ = scopes.gru_cells.get(scope, (scopes.vars.get(scope, {}), {}))
            raise UnsupportedOperationError(
                f"{scope!r} is a TF1 GRUCell ({why}): it applies the reset gate before the "
                "recurrent matmul, which PyTorch's GRU cannot reproduce exactly",
                path=reader.path,
                tensor=next(iter(gates.values()), None),
            )
        if kind == "lstm":
            projection = scopes.vars.get(f"{scope}/projection", {})
            _lstm_cell(plan, reader, scope, {**scopes.vars[scope], **_prefixed(projection)}, hints, why)
        elif scope in scopes.vars:
            _plain_scope(plan, reader, scope, scopes.vars[scope])
    return plan


def _prefixed(projection: dict[str, str]) -> dict[str, str]:
    return {f"projection/{k}": v for k, v in projection.items()}


def _forget_bias(hint: str, scope: str, path: str) -> float:
    if not hint.startswith("forget_bias:"):
        return 1.0
    try:
        return float(hint.split(":", 1)[1])
    except ValueError:
        raise AmbiguousLayoutError(f"hint {scope}={hint}: forget_bias needs a number",
                                   path=path) from None


def _check_hints_used(reader: FormatReader, hints: Hints, scopes: _Scopes) -> None:
    for pattern, value in hints.items():
        if pattern not in scopes.used_hints:
            known = ", ".join(sorted(s for s in scopes.vars if s)[:8])
            raise WeightVaultError(
                f"hint {pattern}={value} matches no variable scope of the checkpoint",
                path=reader.path,
                hint=f"hints name TF1 scopes (globs allowed), e.g. {known}",
            )


def _plain_scope(plan: Plan, reader: FormatReader, scope: str, variables: dict[str, str]) -> None:
    module = to_dotted(scope)
    prefix = f"{module}." if module else ""
    for var, stored in variables.items():
        shape = reader.info(stored).shape
        if var in ("weights", "kernel") and len(shape) == 2:
            plan.steps.append(Step(f"{prefix}weight", (stored,), (Transpose((1, 0)),), note="[in, out] -> [out, in]"))
        elif var in ("weights", "kernel") and len(shape) in _CONV_PERM:
            plan.steps.append(Step(f"{prefix}weight", (stored,), (Transpose(_CONV_PERM[len(shape)]),), note="conv"))
        elif var in _RENAME:
            plan.steps.append(Step(f"{prefix}{_RENAME[var]}", (stored,)))
        else:
            plan.steps.append(Step(f"{prefix}{var}", (stored,), note="kept as is"))
    if "moving_mean" in variables and "gamma" not in variables:
        shape = reader.info(variables["moving_mean"]).shape
        plan.steps.append(Step(f"{prefix}weight", (), (), Full(shape, 1.0), note="slim batch_norm scale=False"))
    if "moving_mean" in variables:
        plan.steps.append(Step(f"{prefix}num_batches_tracked", (), (), Full((), 0, "int64")))


def _lstm_cell(
    plan: Plan, reader: FormatReader, scope: str, variables: dict[str, str], hints: Hints, why: str
) -> None:
    peepholes = [p for p in _PEEPHOLES if p in variables]
    kernel, bias = _pick(variables, _KERNELS), _pick(variables, _BIASES)
    if peepholes or kernel is None:
        raise UnsupportedOperationError(
            f"{scope!r} is an LSTMCell with peepholes ({', '.join(peepholes)}): PyTorch's LSTM has "
            "none" if peepholes else f"{scope!r}: LSTM cell without a kernel",
            path=reader.path, tensor=variables[peepholes[0]] if peepholes else None,
        )
    module, sfx = _rnn_target(scope)
    rows, cols = reader.info(kernel).shape
    hidden = cols // 4
    recurrent = _projection(plan, reader, scope, variables, module + ".weight_hr" + sfx, hidden)
    inputs = rows - recurrent
    forget_bias = _forget_bias(hints.get(scope) or "", scope, reader.path)
    gates = ReorderGates("ijfo", "ifjo", 0)
    split = (inputs, recurrent)
    plan.steps.append(Step(f"{module}.weight_ih{sfx}", (kernel,), (Split(0, split, 0), Transpose((1, 0)), gates)))
    plan.steps.append(Step(f"{module}.weight_hh{sfx}", (kernel,), (Split(0, split, 1), Transpose((1, 0)), gates)))
    if bias is not None:
        # PyTorch order i,f,g,o: the forget block is rows [H, 2H).
        plan.steps.append(
            Step(f"{module}.bias_ih{sfx}", (bias,), (gates, AddConstant(forget_bias, hidden, 2 * hidden)), note=f"forget_bias {forget_bias} folded in")
        )
        plan.steps.append(Step(f"{module}.bias_hh{sfx}", (), (), Full((4 * hidden,), 0.0, reader.info(bias).dtype)))
    plan.notes.append(f"{scope}: TF1 LSTMCell gates i,j,f,o -> i,f,g,o; forget_bias={forget_bias} added to the forget bias")
    if why == "LSTM shapes under an RNN scope":
        plan.notes.append(
            f"{scope}: recognised as an LSTM cell by its shapes ({rows}x{cols} kernel) under an RNN "
            f"scope; pass --hint {scope}=dense if it is a Dense layer"
        )


def _projection(
    plan: Plan, reader: FormatReader, scope: str, variables: dict[str, str], target: str, hidden: int
) -> int:
    """``LSTMCell(num_proj=P)``: ``projection/kernel [H, P]`` -> ``weight_hr [P, H]`` (PyTorch's
    ``proj_size``); returns the recurrent size (P, or H without a projection)."""
    kernel = _pick({k.removeprefix("projection/"): v for k, v in variables.items()
                    if k.startswith("projection/")}, _KERNELS)
    if kernel is None:
        return hidden
    extra = [v for k, v in variables.items() if k.startswith("projection/") and v != kernel]
    shape = tuple(reader.info(kernel).shape)
    if extra or len(shape) != 2 or shape[0] != hidden:
        raise UnsupportedOperationError(
            f"{scope!r}: projection {shape} with {len(extra)} more variables is not an LSTMCell "
            f"num_proj projection [H={hidden}, P]", path=reader.path, tensor=kernel,
        )
    plan.steps.append(Step(target, (kernel,), (Transpose((1, 0)),), note="num_proj -> proj_size"))
    plan.notes.append(
        f"{scope}: num_proj={shape[1]} -> nn.LSTM(proj_size={shape[1]}); cell_clip/proj_clip are "
        "run-time settings the checkpoint does not record"
    )
    return shape[1]
