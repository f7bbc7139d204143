"""keras-to-torch and torch-to-keras (research: embedded-and-layouts.md part B).

Keras side: tensors are named ``layer/var`` (RNN cells add ``lstm_cell``; Bidirectional adds
``forward_x``/``backward_x``). The layer kind comes from the ``.keras``/legacy model config when
the file has one, else from the variable names; a 3/4/5-D ``kernel`` without config could be a
convolution, a transposed convolution or (Keras 3) a depthwise kernel, so it needs a hint.

PyTorch side: ``module.param`` names; the kind comes from the parameter set (``running_mean`` is
BatchNorm, ``weight_ih_l0`` an RNN). 3/4/5-D weights again need a hint (conv vs conv_transpose vs
depthwise), as does a 2-D weight without bias (Linear vs Embedding).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from weightvault.abc.format import FormatReader
from weightvault.errors import WeightVaultError
from weightvault.rules import AmbiguousLayoutError, Hints
from weightvault.rules.common import clean_tf_name, is_optimizer_or_bookkeeping, to_dotted
from weightvault.transforms import Full, ReorderGates, Reshape, Stack, Sum, Take, Transpose
from weightvault.transforms.plan import Plan, Step

__all__ = ["keras_to_torch", "torch_to_keras"]

# Keras class name -> our layer kind
_KERAS_CLASSES = {
    "Dense": "dense",
    "Conv1D": "conv",
    "Conv2D": "conv",
    "Conv3D": "conv",
    "Conv1DTranspose": "conv_transpose",
    "Conv2DTranspose": "conv_transpose",
    "Conv3DTranspose": "conv_transpose",
    "DepthwiseConv2D": "depthwise",
    "DepthwiseConv1D": "depthwise",
    "SeparableConv2D": "separable",
    "SeparableConv1D": "separable",
    "BatchNormalization": "batchnorm",
    "LayerNormalization": "layernorm",
    "Embedding": "embedding",
    "LSTM": "lstm",
    "GRU": "gru",
}
_CONV_PERM_TF_TO_PT = {3: (2, 1, 0), 4: (3, 2, 0, 1), 5: (4, 3, 0, 1, 2)}
_KINDS_HELP = "dense, conv, conv_transpose, depthwise, separable, embedding, flatten:H,W,C"
#: deepest nesting of a Keras config that the rules walk
MAX_CONFIG_DEPTH = 200


@dataclass
class KerasLayer:
    path: str  # Keras layer path (the Bidirectional wrapper for its two directions)
    reverse: bool
    vars: dict[str, str] = field(default_factory=dict)  # short var name -> tensor name


def _keras_layers(reader: FormatReader, plan: Plan) -> list[KerasLayer]:
    groups: dict[tuple[str, bool], KerasLayer] = {}
    for name in reader.keys():
        clean = clean_tf_name(name)
        if is_optimizer_or_bookkeeping(clean):
            plan.dropped[name] = "optimizer state or bookkeeping"
            continue
        parts = clean.split("/")
        var, path = parts[-1], parts[:-1]
        reverse = any(p.startswith("backward_") for p in path)
        path = [p for p in path if not p.endswith("_cell") and not p.startswith(("forward_", "backward_"))]
        key = ("/".join(path), reverse)
        groups.setdefault(key, KerasLayer(key[0], reverse)).vars[var] = name
    return list(groups.values())


def _keras_config_layers(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ``{"class_name", "config": {"name"}}`` found in a Keras model config, by layer name."""
    found: dict[str, dict[str, Any]] = {}
    roots = [metadata]

    def walk(node: Any, depth: int = 0) -> None:
        if depth > MAX_CONFIG_DEPTH:
            return  # deeper than any real model; the layers found so far still help
        if isinstance(node, str) and node.lstrip().startswith("{"):
            try:
                node = json.loads(node)
            except (json.JSONDecodeError, RecursionError):
                return
        if isinstance(node, dict):
            cfg = node.get("config")
            if isinstance(node.get("class_name"), str) and isinstance(cfg, dict) and "name" in cfg:
                found.setdefault(cfg["name"], {"class_name": node["class_name"], **cfg})
            for v in node.values():
                walk(v, depth + 1)
        elif isinstance(node, list):
            for v in node:
                walk(v, depth + 1)

    for root in roots:
        walk(root)
    return found


# -- Dense after Flatten: the order of the flattened features, from the model config ----------------
# Keras flattens channels-last tensors as (H, W, C); a PyTorch model flattens (C, H, W). The rows of
# a Dense kernel after a Flatten follow that order, so they must be re-ordered, and the shape before
# the Flatten is read from the config (Keras 3 records layer input shapes) or computed from the input
# shape through the convolution and pooling layers.

#: layers whose output has their input's shape
_SAME_SHAPE = {
    "BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization", "Activation",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Rescaling", "Identity",
}  # fmt: skip
#: of those, the ones without per-feature weights: a flattened vector passes them unchanged
_PASS_THROUGH = _SAME_SHAPE - {"BatchNormalization", "LayerNormalization", "GroupNormalization", "PReLU"}
_CONVS = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"}
_POOLS = {f"{kind}Pooling{n}D" for kind in ("Max", "Average") for n in (1, 2, 3)}
_GLOBAL_POOLS = {f"Global{kind}Pooling{n}D" for kind in ("Max", "Average") for n in (1, 2, 3)}


@dataclass
class _KerasTensor:
    """What the config tells about one tensor: its shape without the batch axis (None where
    unknown), whether it is channels-first, and, for a Flatten output, the shape it flattened."""

    shape: tuple[int | None, ...] | None
    channels_first: bool = False
    #: (shape before the Flatten, that tensor channels-first, Flatten(data_format="channels_first"))
    flattened: tuple[tuple[int | None, ...] | None, bool, bool] | None = None


def _tuple(value: Any, n: int) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _window(n: int | None, size: int, stride: int, padding: str, dilation: int = 1) -> int | None:
    if n is None:
        return None
    if padding in ("same", "causal"):
        return -(-n // stride)
    if padding == "valid":
        return (n - dilation * (size - 1) - 1) // stride + 1
    return None


def _spatial_out(cls: str, cfg: dict[str, Any], t: _KerasTensor) -> _KerasTensor:
    """Output of a convolution or pooling layer; unknown when the config is not understood."""
    first = cfg.get("data_format") == "channels_first"
    shape = t.shape
    if shape is None or len(shape) < 2:
        return _KerasTensor(None, first)
    spatial = shape[1:] if first else shape[:-1]
    channels = shape[0] if first else shape[-1]
    n = len(spatial)
    if cls in _POOLS:
        size = _tuple(cfg.get("pool_size"), n)
        strides = _tuple(cfg.get("strides") or cfg.get("pool_size"), n)
        dilation: tuple[int, ...] | None = (1,) * n
        out_c = channels
    else:
        size = _tuple(cfg.get("kernel_size"), n)
        strides = _tuple(cfg.get("strides", 1), n)
        dilation = _tuple(cfg.get("dilation_rate", 1), n)
        if cls.startswith("Depthwise"):
            out_c = channels * cfg.get("depth_multiplier", 1) if channels is not None else None
        else:
            out_c = cfg.get("filters")
    if size is None or strides is None or dilation is None:
        return _KerasTensor(None, first)
    padding = str(cfg.get("padding", "valid")).lower()
    dims = tuple(_window(d, k, st, padding, dl) for d, k, st, dl in zip(spatial, size, strides, dilation))
    return _KerasTensor((out_c, *dims) if first else (*dims, out_c), first)


def _layer_out(cls: str, cfg: dict[str, Any], inputs: list[_KerasTensor]) -> _KerasTensor:
    t = inputs[0] if len(inputs) == 1 else None
    if t is None:
        return _KerasTensor(None)
    if cls in _PASS_THROUGH:
        return t
    if cls in _SAME_SHAPE:
        return _KerasTensor(t.shape, t.channels_first)
    if cls in _CONVS or cls in _POOLS:
        return _spatial_out(cls, cfg, t)
    if cls in _GLOBAL_POOLS and t.shape is not None and not cfg.get("keepdims"):
        first = cfg.get("data_format") == "channels_first"
        return _KerasTensor((t.shape[0] if first else t.shape[-1],))
    if cls == "Flatten":
        size = None if t.shape is None or None in t.shape else math.prod(t.shape)  # type: ignore[arg-type]
        return _KerasTensor((size,), flattened=(t.shape, t.channels_first, cfg.get("data_format") == "channels_first"))
    if cls == "Dense" and t.shape is not None:
        return _KerasTensor((*t.shape[:-1], cfg.get("units")))
    return _KerasTensor(None)


def _inbound(layer: dict[str, Any]) -> tuple[list[str], list[tuple[int | None, ...] | None]]:
    """(producer layer names, input shapes where recorded) of a Functional layer's first call."""
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return [], []
    node = nodes[0]
    names: list[str] = []
    shapes: list[tuple[int | None, ...] | None] = []

    def visit(item: Any, depth: int = 0) -> None:
        if depth > 8:
            return
        if isinstance(item, dict):
            cfg = item.get("config")
            if item.get("class_name") == "__keras_tensor__" and isinstance(cfg, dict):
                history = cfg.get("keras_history") or [None]
                names.append(str(history[0]))
                shape = cfg.get("shape")
                shapes.append(tuple(shape[1:]) if isinstance(shape, list) and shape else None)
                return
            for v in item.values():
                visit(v, depth + 1)
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                names.append(item[0])  # Keras 2: [layer, node index, tensor index, kwargs]
                shapes.append(None)
                return
            for v in item:
                visit(v, depth + 1)

    visit(node.get("args", node) if isinstance(node, dict) else node)
    return names, shapes


def _input_shape(cfg: dict[str, Any], layer: dict[str, Any]) -> tuple[int | None, ...] | None:
    for key in ("batch_shape", "batch_input_shape"):
        shape = cfg.get(key)
        if isinstance(shape, list) and shape:
            return tuple(shape[1:])
    built = (layer.get("build_config") or {}).get("input_shape")
    if isinstance(built, list) and built and not isinstance(built[0], list):
        return tuple(built[1:])
    return None


def _find_models(node: Any, depth: int = 0) -> list[dict[str, Any]]:
    """Sequential/Functional model configs in a Keras config (outermost first)."""
    found: list[dict[str, Any]] = []
    if depth > MAX_CONFIG_DEPTH:
        return found
    if isinstance(node, dict):
        cfg = node.get("config")
        if isinstance(cfg, dict) and isinstance(cfg.get("layers"), list):
            found.append(node)
        for v in node.values():
            found.extend(_find_models(v, depth + 1))
    elif isinstance(node, list):
        for v in node:
            found.extend(_find_models(v, depth + 1))
    return found


def _flatten_feeds(config: Any) -> dict[str, _KerasTensor]:
    """Dense layer name -> the Flatten output it reads (with the shape that was flattened), for
    every Dense that a Flatten feeds, directly or through layers without weights (Dropout...)."""
    feeds: dict[str, _KerasTensor] = {}
    for model in _find_models(config):
        sequential = model.get("class_name") == "Sequential"
        tensors: dict[str, _KerasTensor] = {}
        previous: _KerasTensor | None = None
        for layer in model["config"]["layers"]:
            if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
                previous = _KerasTensor(None)
                continue
            cls, cfg = str(layer.get("class_name")), layer["config"]
            name = str(cfg.get("name"))
            if cls == "InputLayer":
                out = _KerasTensor(_input_shape(cfg, layer))
            else:
                if sequential:
                    recorded = _input_shape(cfg, layer)
                    inputs = [previous] if previous is not None else [_KerasTensor(recorded)]
                else:
                    producers, shapes = _inbound(layer)
                    inputs = [tensors.get(p, _KerasTensor(None)) for p in producers]
                    recorded = shapes[0] if len(shapes) == 1 else None
                if len(inputs) == 1 and recorded is not None and inputs[0].shape != recorded:
                    inputs = [_KerasTensor(recorded, inputs[0].channels_first, inputs[0].flattened)]
                if cls == "Dense" and len(inputs) == 1 and inputs[0].flattened is not None:
                    feeds[name] = inputs[0]
                out = _layer_out(cls, cfg, inputs)
            tensors[name] = out
            previous = out
    return feeds


def _flatten_kind(layer: str, feed: _KerasTensor, rows: int, path: str, tensor: str) -> str:
    """``dense`` when Keras' flattened order is already PyTorch's (C, spatial...), else the
    ``flatten:S1,...,C`` kind that re-orders the kernel rows; ambiguous when unknown."""
    assert feed.flattened is not None
    shape, channels_first, flatten_first = feed.flattened
    hint = (
        f"pass --hint {layer}=flatten:H,W,C (the shape before the Flatten; PyTorch flattens NCHW) "
        f"or --hint {layer}=dense (the PyTorch model flattens channels-last like Keras)"
    )
    if shape is None or None in shape or math.prod(shape) != rows:  # type: ignore[arg-type]
        raise AmbiguousLayoutError(
            f"Dense {layer!r} follows a Flatten of a tensor whose shape the model config does not give "
            f"(got {list(shape) if shape else 'nothing'} for {rows} kernel rows)",
            path=path,
            tensor=tensor,
            hint=hint,
        )
    if len(shape) < 2:
        return "dense"
    axes = list(range(len(shape)))  # Keras' tensor axes, batch left out
    if flatten_first:  # Flatten(data_format="channels_first") moves axis 1 last before flattening
        axes = [*axes[1:], axes[0]]
    channel_axis = 0 if channels_first else len(shape) - 1
    spatial = [a for a in range(len(shape)) if a != channel_axis]
    if axes == [channel_axis, *spatial]:
        return "dense"  # already PyTorch's order
    if axes == [*spatial, channel_axis]:
        return "flatten:" + ",".join(str(shape[a]) for a in axes)
    raise AmbiguousLayoutError(
        f"Dense {layer!r}: the Flatten before it mixes axes in an unusual order", path=path, tensor=tensor, hint=hint
    )


# Keras 3 .weights.h5 groups are named after the layer class: layers/depthwise_conv2d_1/vars/0.
_H5_GROUP_KINDS = {
    "dense": "dense",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "conv1d_transpose": "conv_transpose",
    "conv2d_transpose": "conv_transpose",
    "conv3d_transpose": "conv_transpose",
    "depthwise_conv1d": "depthwise",
    "depthwise_conv2d": "depthwise",
    "separable_conv1d": "separable",
    "separable_conv2d": "separable",
}


def _h5_group_kind(layer: KerasLayer, metadata: dict[str, Any]) -> str | None:
    h5_paths = (metadata.get("keras") or {}).get("h5_paths") or {}
    for tensor in layer.vars.values():
        m = re.search(r"(?:^|/)layers/([a-z0-9_]+?)(?:_\d+)?/vars/", h5_paths.get(tensor, ""))
        if m and m.group(1) in _H5_GROUP_KINDS:
            return _H5_GROUP_KINDS[m.group(1)]
    return None


def _keras_kind(
    layer: KerasLayer,
    shapes: dict[str, tuple[int, ...]],
    config: dict[str, Any] | None,
    hints: Hints,
    path: str,
    metadata: dict[str, Any],
) -> str:
    hint = hints.get(layer.path)
    if hint:
        return hint
    v = layer.vars
    if "recurrent_kernel" in v:
        gates = shapes[v["kernel"]][-1] // shapes[v["recurrent_kernel"]][0]
        return {4: "lstm", 3: "gru"}.get(gates, "unknown_rnn")
    if config and config.get("class_name") in _KERAS_CLASSES:
        return _KERAS_CLASSES[config["class_name"]]
    from_h5 = _h5_group_kind(layer, metadata)
    if from_h5:
        return from_h5
    if "moving_mean" in v or "moving_variance" in v:
        return "batchnorm"
    if "embeddings" in v:
        return "embedding"
    if "depthwise_kernel" in v:
        return "separable" if "pointwise_kernel" in v else "depthwise"
    if ("gamma" in v or "beta" in v) and "kernel" not in v:
        return "layernorm"
    if "kernel" in v:
        rank = len(shapes[v["kernel"]])
        if rank == 2:
            return "dense"
        raise AmbiguousLayoutError(
            f"layer {layer.path!r} has a {rank}-D kernel {shapes[v['kernel']]}: a convolution, a transposed "
            "convolution or a depthwise kernel, and the file has no model config to tell",
            path=path,
            tensor=v["kernel"],
            hint=f"pass --hint {layer.path}=conv (or conv_transpose, depthwise), or convert the .keras file",
        )
    raise AmbiguousLayoutError(f"layer {layer.path!r} has variables {sorted(v)} that no rule knows", path=path, hint=f"kinds: {_KINDS_HELP}")


def keras_to_torch(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    plan = Plan("keras-to-torch")
    infos = {n: reader.info(n) for n in reader.keys()}
    shapes = {n: i.shape for n, i in infos.items()}
    dtypes = {n: i.dtype for n, i in infos.items()}
    metadata = reader.metadata
    configs = _keras_config_layers(metadata)
    keras_meta = metadata.get("keras") if isinstance(metadata.get("keras"), dict) else {}
    keras_config = keras_meta.get("config")
    feeds = _flatten_feeds(keras_config) if keras_config is not None else {}
    # a Keras 3 file without a config stores variables by position only: the reader guessed names
    names_guessed = keras_config is None and keras_meta.get("layout") == "keras3"
    for layer in _keras_layers(reader, plan):
        short = layer.path.split("/")[-1]
        config = configs.get(short) or configs.get(layer.path)
        kind = _keras_kind(layer, shapes, config, hints, reader.path, metadata)
        if kind == "dense" and not hints.get(layer.path) and short in feeds and "kernel" in layer.vars:
            kernel = layer.vars["kernel"]
            kind = _flatten_kind(layer.path, feeds[short], shapes[kernel][0], reader.path, kernel)
        _keras_layer_steps(plan, layer, kind, shapes, dtypes, config or {}, reader.path, names_guessed)
    return plan


def _keras_layer_steps(
    plan: Plan,
    layer: KerasLayer,
    kind: str,
    shapes: dict[str, tuple[int, ...]],
    dtypes: dict[str, str],
    config: dict[str, Any],
    path: str,
    names_guessed: bool = False,
) -> None:
    v, t = layer.vars, to_dotted(layer.path)
    suffix = "_reverse" if layer.reverse else ""
    if kind == "dense" or kind.startswith("flatten:"):
        steps: list[Any] = [Transpose((1, 0))]
        if kind.startswith("flatten:"):
            *spatial, c = _flatten_dims(kind, layer.path, path)
            out = shapes[v["kernel"]][1]
            n = len(spatial)
            _check_flatten_rows(spatial, c, shapes[v["kernel"]][0], layer.path, path)
            # channels-last flatten order to PyTorch's: kernel rows are (spatial..., c); PyTorch
            # wants columns (c, spatial...).
            steps = [
                Reshape((*spatial, c, out), shapes[v["kernel"]]),
                Transpose((n + 1, n, *range(n))),
                Reshape((out, c * math.prod(spatial)), (out, c, *spatial)),
            ]
            plan.notes.append(f"{layer.path}: kernel rows re-ordered from channels-last flatten {(*spatial, c)} to channels-first")
        plan.steps.append(Step(f"{t}.weight", (v["kernel"],), tuple(steps)))
        _copy(plan, v, "bias", f"{t}.bias")
    elif kind in ("conv", "conv_transpose"):
        perm = _CONV_PERM_TF_TO_PT[len(shapes[v["kernel"]])]
        plan.steps.append(Step(f"{t}.weight", (v["kernel"],), (Transpose(perm),), note=kind))
        _copy(plan, v, "bias", f"{t}.bias")
    elif kind == "depthwise":
        key = v.get("depthwise_kernel", v.get("kernel"))
        plan.steps.append(Step(f"{t}.weight", (key,), _depthwise_tf_to_pt(shapes[key]), note="depthwise: Conv2d(groups=C)"))
        _copy(plan, v, "bias", f"{t}.bias")
    elif kind == "separable":
        dk = v["depthwise_kernel"]
        plan.steps.append(Step(f"{t}.depthwise.weight", (dk,), _depthwise_tf_to_pt(shapes[dk])))
        pk = v["pointwise_kernel"]
        plan.steps.append(Step(f"{t}.pointwise.weight", (pk,), (Transpose((3, 2, 0, 1)),)))
        _copy(plan, v, "bias", f"{t}.pointwise.bias")
    elif kind.partition(":")[0] == "batchnorm":
        v = _batchnorm_vars(layer, kind, config, names_guessed, path)
        stat = v.get("moving_mean") or v.get("beta") or v["gamma"]
        channels, dtype = shapes[stat], dtypes[stat]
        _copy_or_fill(plan, v, "gamma", f"{t}.weight", channels, 1.0, dtype)
        _copy_or_fill(plan, v, "beta", f"{t}.bias", channels, 0.0, dtype)
        _copy(plan, v, "moving_mean", f"{t}.running_mean")
        _copy(plan, v, "moving_variance", f"{t}.running_var")
        plan.steps.append(Step(f"{t}.num_batches_tracked", (), (), Full((), 0, "int64")))
        eps = config.get("epsilon", 1e-3)
        momentum = config.get("momentum", 0.99)
        plan.notes.append(f"{layer.path}: BatchNorm eps={eps} (PyTorch default 1e-5), momentum_pt={1 - momentum:.4g}")
    elif kind == "layernorm":
        _copy(plan, v, "gamma", f"{t}.weight")
        _copy(plan, v, "beta", f"{t}.bias")
        plan.notes.append(f"{layer.path}: LayerNorm eps={config.get('epsilon', 1e-3)} (PyTorch default 1e-5)")
    elif kind == "embedding":
        _copy(plan, v, "embeddings", f"{t}.weight")
    elif kind == "lstm":
        hidden = shapes[v["recurrent_kernel"]][0]
        plan.steps.append(Step(f"{t}.weight_ih_l0{suffix}", (v["kernel"],), (Transpose((1, 0)),), note="gates i,f,c,o = i,f,g,o"))
        plan.steps.append(Step(f"{t}.weight_hh_l0{suffix}", (v["recurrent_kernel"],), (Transpose((1, 0)),)))
        if "bias" in v:
            _copy(plan, v, "bias", f"{t}.bias_ih_l0{suffix}")
            plan.steps.append(Step(f"{t}.bias_hh_l0{suffix}", (), (), Full((4 * hidden,), 0.0, dtypes[v["bias"]])))
    elif kind == "gru":
        if "bias" in v and len(shapes[v["bias"]]) == 1:
            raise AmbiguousLayoutError(
                f"GRU {layer.path!r} was built with reset_after=False: PyTorch applies the reset gate after "
                "the recurrent matmul, so no weights reproduce it exactly",
                path=path,
                tensor=v["bias"],
                hint="retrain or rebuild the Keras GRU with reset_after=True (the Keras 2+ default)",
            )
        gates = ReorderGates("zrh", "rzh", 0)
        plan.steps.append(Step(f"{t}.weight_ih_l0{suffix}", (v["kernel"],), (Transpose((1, 0)), gates), note="gates z,r,h -> r,z,n"))
        plan.steps.append(Step(f"{t}.weight_hh_l0{suffix}", (v["recurrent_kernel"],), (Transpose((1, 0)), gates)))
        if "bias" in v:
            plan.steps.append(Step(f"{t}.bias_ih_l0{suffix}", (v["bias"],), (Take(0, 0), gates)))
            plan.steps.append(Step(f"{t}.bias_hh_l0{suffix}", (v["bias"],), (Take(0, 1), gates)))
    else:
        raise AmbiguousLayoutError(f"layer {layer.path!r}: unknown kind {kind!r}", path=path, hint=f"kinds: {_KINDS_HELP}")


def _flatten_dims(kind: str, layer: str, path: str) -> list[int]:
    """The ``S1,...,C`` of a ``flatten:S1,...,C`` kind (H,W,C for images)."""
    try:
        dims = [int(x) for x in kind.split(":", 1)[1].split(",")]
    except ValueError:
        dims = []
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise AmbiguousLayoutError(
            f"layer {layer!r}: {kind!r} is not flatten:H,W,C (positive sizes, channels last)", path=path, hint=f"kinds: {_KINDS_HELP}"
        )
    return dims


def _check_flatten_rows(spatial: list[int], c: int, rows: int, layer: str, path: str) -> None:
    if math.prod(spatial) * c != rows:
        raise AmbiguousLayoutError(
            f"layer {layer!r}: flatten:{','.join(map(str, [*spatial, c]))} gives {math.prod(spatial) * c} features "
            f"but the weight has {rows}",
            path=path,
            hint="give the shape of the tensor before the Flatten, channels last",
        )


def _depthwise_tf_to_pt(shape: tuple[int, ...]) -> tuple[Any, ...]:
    kh, kw, c, m = shape
    return (Transpose((2, 3, 0, 1)), Reshape((c * m, 1, kh, kw), (c, m, kh, kw)))


def _copy(plan: Plan, v: dict[str, str], var: str, target: str) -> None:
    if var in v:
        plan.steps.append(Step(target, (v[var],)))


def _copy_or_fill(
    plan: Plan, v: dict[str, str], var: str, target: str, shape: tuple[int, ...], value: float, dtype: str = "float32"
) -> None:
    if var in v:
        plan.steps.append(Step(target, (v[var],)))
    else:
        plan.steps.append(Step(target, (), (), Full(shape, value, dtype), note=f"{var} not stored (scale/center=False)"))


def _batchnorm_flags(kind: str, config: dict[str, Any] | None, layer: str, path: str) -> dict[str, bool]:
    """``center`` / ``scale`` of a Keras BatchNormalization: from a ``batchnorm:center=false``
    hint, else from the model config; absent keys are unknown."""
    flags: dict[str, bool] = {}
    for item in filter(None, (x.strip() for x in kind.partition(":")[2].split(","))):
        key, _, value = item.partition("=")
        if key not in ("center", "scale") or value.lower() not in ("true", "false"):
            raise AmbiguousLayoutError(
                f"layer {layer!r}: {kind!r} is not batchnorm[:center=true|false][,scale=true|false]", path=path
            )
        flags[key] = value.lower() == "true"
    for key in ("center", "scale"):
        if key not in flags and config and isinstance(config.get(key), bool):
            flags[key] = config[key]
    return flags


def _batchnorm_vars(
    layer: KerasLayer, kind: str, config: dict[str, Any], names_guessed: bool, path: str
) -> dict[str, str]:
    """The BatchNorm's variables by their true names. A Keras 3 file stores them by position
    only: with one of gamma/beta missing and no config, it could be either, so a hint is needed."""
    v = dict(layer.vars)
    flags = _batchnorm_flags(kind, config, layer.path, path)
    if ("gamma" in v) == ("beta" in v):
        return v
    if "center" not in flags and "scale" not in flags:
        if names_guessed:
            raise AmbiguousLayoutError(
                f"BatchNorm {layer.path!r} stores 3 variables: built with center=False (no beta) or "
                "scale=False (no gamma), and the file has no model config to tell",
                path=path,
                tensor=v.get("gamma") or v.get("beta"),
                hint=f"pass --hint {layer.path}=batchnorm:center=false (or batchnorm:scale=false), or convert the .keras file",
            )
        return v
    if flags.get("scale") is False and "gamma" in v:
        v["beta"] = v.pop("gamma")  # the one stored scale-less variable is the offset
    elif flags.get("center") is False and "beta" in v:
        v["gamma"] = v.pop("beta")
    return v


def _drop_constant(plan: Plan, reader: FormatReader, tensor: str, value: float, why: str, module: str) -> None:
    """Drop a PyTorch BatchNorm weight/bias that the Keras layer does not have, only when it holds
    exactly the value Keras implies (ones for scale=False, zeros for center=False)."""
    import numpy as np

    arr = np.asarray(reader.get(tensor))
    if arr.size and not np.all(arr == value):
        raise AmbiguousLayoutError(
            f"BatchNorm {module!r}: the Keras layer has {why}, but {tensor} is not all {value:g}; "
            "dropping it would change the model's output",
            path=reader.path,
            tensor=tensor,
            hint=f"build the Keras layer with {why.split('=')[0]}=True (and pass --hint {module}=batchnorm)",
        )
    plan.dropped[tensor] = f"all {value:g}: Keras BatchNormalization({why}) has no such variable"


# -- torch -> keras --------------------------------------------------------------------------------


def _torch_modules(reader: FormatReader, plan: Plan) -> dict[str, dict[str, str]]:
    modules: dict[str, dict[str, str]] = defaultdict(dict)
    for name in reader.keys():
        module, _, param = name.rpartition(".")
        modules[module][param] = name
    return modules


def _torch_kind(module: str, params: dict[str, str], shapes: dict[str, tuple[int, ...]], hints: Hints, path: str) -> str:
    hint = hints.get(module)
    if hint:
        return hint
    if "running_mean" in params:
        return "batchnorm"
    if any(p.startswith("weight_ih_l") for p in params):
        first = next(p for p in params if p.startswith("weight_ih_l"))
        hh = params[first.replace("_ih_", "_hh_")]
        gates = shapes[params[first]][0] // shapes[hh][1]
        return {4: "lstm", 3: "gru"}.get(gates, "unknown_rnn")
    weight = params.get("weight")
    if weight is None:
        raise AmbiguousLayoutError(f"module {module!r} has parameters {sorted(params)} that no rule knows", path=path)
    rank = len(shapes[weight])
    if rank == 1:
        return "layernorm"
    if rank == 2:
        if "bias" in params:
            return "dense"
        raise AmbiguousLayoutError(
            f"module {module!r} has a 2-D weight and no bias: a Linear(bias=False) or an Embedding",
            path=path,
            tensor=weight,
            hint=f"pass --hint {module}=dense or --hint {module}=embedding",
        )
    raise AmbiguousLayoutError(
        f"module {module!r} has a {rank}-D weight {shapes[weight]}: Conv, ConvTranspose or a depthwise Conv",
        path=path,
        tensor=weight,
        hint=f"pass --hint {module}=conv (or conv_transpose, depthwise)",
    )


def torch_to_keras(reader: FormatReader, hints: Hints, options: dict[str, Any]) -> Plan:
    if options.get("template"):
        return _torch_to_keras_template(reader, hints, str(options["template"]))
    plan = Plan("torch-to-keras")
    shapes = {n: reader.info(n).shape for n in reader.keys()}
    # a file converted from Keras carries the Keras config in its metadata (center/scale...)
    configs = _keras_config_layers(reader.metadata)
    for module, params in _torch_modules(reader, plan).items():
        kind = _torch_kind(module, params, shapes, hints, reader.path)
        config = configs.get(module.split(".")[-1]) or configs.get(module.replace(".", "/"))
        _torch_module_steps(plan, module, params, kind, shapes, reader.path, reader, config)
    return plan


def _torch_module_steps(
    plan: Plan,
    module: str,
    p: dict[str, str],
    kind: str,
    shapes: dict[str, tuple[int, ...]],
    path: str,
    reader: FormatReader | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    k = module.replace(".", "/")
    if kind == "dense":
        plan.steps.append(Step(f"{k}/kernel", (p["weight"],), (Transpose((1, 0)),)))
        _copy(plan, p, "bias", f"{k}/bias")
    elif kind.startswith("flatten:"):
        # the inverse of keras-to-torch's: PyTorch columns (c, spatial...) -> Keras rows (spatial..., c)
        *spatial, c = _flatten_dims(kind, module, path)
        out, cols = shapes[p["weight"]]
        _check_flatten_rows(spatial, c, cols, module, path)
        n = len(spatial)
        steps = (
            Reshape((out, c, *spatial), (out, cols)),
            Transpose((*range(2, n + 2), 1, 0)),
            Reshape((cols, out), (*spatial, c, out)),
        )
        plan.steps.append(Step(f"{k}/kernel", (p["weight"],), steps, note=f"NCHW flatten to channels-last {(*spatial, c)}"))
        _copy(plan, p, "bias", f"{k}/bias")
    elif kind in ("conv", "conv_transpose"):
        rank = len(shapes[p["weight"]])
        inverse = Transpose(_CONV_PERM_TF_TO_PT[rank]).inverse()
        plan.steps.append(Step(f"{k}/kernel", (p["weight"],), (inverse,), note=kind))
        _copy(plan, p, "bias", f"{k}/bias")
    elif kind.partition(":")[0] == "depthwise":
        # PyTorch stores (C*M, 1, kh, kw); the multiplier M is not in the weight: "depthwise:M".
        cm, _, kh, kw = shapes[p["weight"]]
        multiplier = int(kind.partition(":")[2] or 1)
        channels = cm // multiplier
        plan.steps.append(
            Step(
                f"{k}/kernel",
                (p["weight"],),
                (Reshape((channels, multiplier, kh, kw), (cm, 1, kh, kw)), Transpose((2, 3, 0, 1))),
                note=f"depthwise, multiplier {multiplier}",
            )
        )
        _copy(plan, p, "bias", f"{k}/bias")
    elif kind.partition(":")[0] == "batchnorm":
        flags = _batchnorm_flags(kind, config, module, path)
        for param, var, flag, value in (("weight", "gamma", "scale", 1.0), ("bias", "beta", "center", 0.0)):
            if param not in p:
                continue
            if flags.get(flag, True):
                _copy(plan, p, param, f"{k}/{var}")
            else:
                assert reader is not None
                _drop_constant(plan, reader, p[param], value, f"{flag}=False", module)
        _copy(plan, p, "running_mean", f"{k}/moving_mean")
        _copy(plan, p, "running_var", f"{k}/moving_variance")
        if "num_batches_tracked" in p:
            plan.dropped[p["num_batches_tracked"]] = "PyTorch BatchNorm counter; Keras has none"
    elif kind == "layernorm":
        _copy(plan, p, "weight", f"{k}/gamma")
        _copy(plan, p, "bias", f"{k}/beta")
    elif kind == "embedding":
        _copy(plan, p, "weight", f"{k}/embeddings")
    elif kind in ("lstm", "gru"):
        _torch_rnn_steps(plan, k, p, kind, shapes, path)
    else:
        raise AmbiguousLayoutError(f"module {module!r}: unknown kind {kind!r}", path=path, hint=f"kinds: {_KINDS_HELP}")


def _torch_rnn_steps(plan: Plan, k: str, p: dict[str, str], kind: str, shapes: dict[str, tuple[int, ...]], path: str) -> None:
    layers = sorted({int(n.split("_l")[1].split("_")[0]) for n in p if n.startswith("weight_ih_l")})
    cell = f"{kind}_cell"
    for layer in layers:
        for reverse in (False, True):
            sfx = f"_l{layer}" + ("_reverse" if reverse else "")
            if f"weight_ih{sfx}" not in p:
                continue
            base = k if layer == 0 else f"{k}_{layer}"
            if any(f"weight_ih_l{layer}_reverse" == n for n in p):
                # Keras' Bidirectional names its copies forward_<inner layer>/backward_<inner
                # layer>; the inner layer's default name is its kind (lstm, gru).
                base = f"{base}/{'backward' if reverse else 'forward'}_{kind}"
            prefix = f"{base}/{cell}"
            if kind == "lstm":
                plan.steps.append(Step(f"{prefix}/kernel", (p[f"weight_ih{sfx}"],), (Transpose((1, 0)),)))
                plan.steps.append(Step(f"{prefix}/recurrent_kernel", (p[f"weight_hh{sfx}"],), (Transpose((1, 0)),)))
                biases = tuple(p[n] for n in (f"bias_ih{sfx}", f"bias_hh{sfx}") if n in p)
                if biases:
                    plan.steps.append(Step(f"{prefix}/bias", biases, (), Sum(), note="bias_ih + bias_hh"))
            else:
                gates = ReorderGates("rzh", "zrh", 1)
                plan.steps.append(Step(f"{prefix}/kernel", (p[f"weight_ih{sfx}"],), (Transpose((1, 0)), gates)))
                plan.steps.append(Step(f"{prefix}/recurrent_kernel", (p[f"weight_hh{sfx}"],), (Transpose((1, 0)), gates)))
                if f"bias_ih{sfx}" in p:
                    plan.steps.append(
                        Step(f"{prefix}/bias", (p[f"bias_ih{sfx}"], p[f"bias_hh{sfx}"]), (gates,), Stack(0), note="reset_after=True")
                    )


# -- torch -> keras with a Keras-written template (--template model.weights.h5) ----------------------

_H5_CLASS_KINDS = {
    **_H5_GROUP_KINDS,
    "batch_normalization": "batchnorm",
    "layer_normalization": "layernorm",
    "embedding": "embedding",
    "lstm": "lstm",
    "gru": "gru",
}


@dataclass
class _TemplateLayer:
    group: str  # layers/dense_1
    kind: str | None
    vars: dict[str, tuple[str, tuple[int, ...]]]  # variable (kernel) -> (template tensor, shape)


def _template_layers(template: str) -> dict[str, list[_TemplateLayer]]:
    """The template's layers per Keras class, in creation order (``dense``, ``dense_1``, ...)."""
    from weightvault.formats.keras_h5 import KerasReader

    with KerasReader(template) as t:
        h5_paths = (t.metadata.get("keras") or {}).get("h5_paths") or {}
        layers: dict[str, _TemplateLayer] = {}
        for name in t.keys():
            path = h5_paths.get(name, "")
            if not path.startswith("layers/"):
                continue  # optimizer or model-level variables
            group = "/".join(path.split("/")[:2])
            cls = re.sub(r"_\d+$", "", group.split("/")[1])
            layer = layers.setdefault(group, _TemplateLayer(group, _H5_CLASS_KINDS.get(cls), {}))
            layer.vars[name.rsplit("/", 1)[-1]] = (name, tuple(t.info(name).shape))
    by_class: dict[str, list[_TemplateLayer]] = defaultdict(list)
    for group, layer in layers.items():
        by_class[re.sub(r"_\d+$", "", group.split("/")[1])].append(layer)
    for queue in by_class.values():  # Keras numbers a class's layers in creation order
        queue.sort(key=lambda lay: int(m.group(1)) if (m := re.search(r"_(\d+)$", lay.group)) else 0)
    return by_class


def _template_kind(layer: _TemplateLayer) -> str:
    """The layer's kind; a depthwise kernel ``(kh, kw, C, M)`` also gives the multiplier."""
    kernel = layer.vars.get("kernel") or layer.vars.get("depthwise_kernel")
    if layer.kind == "depthwise" and kernel is not None:
        return f"depthwise:{kernel[1][-1]}"
    return str(layer.kind)


def _steps_for(module: str, params: dict[str, str], kind: str, reader: FormatReader, shapes: dict[str, tuple[int, ...]]) -> Plan:
    trial = Plan("torch-to-keras")
    _torch_module_steps(trial, module, params, kind, shapes, reader.path, reader, None)
    return trial


def _fits(trial: Plan, layer: _TemplateLayer, reader: FormatReader) -> bool:
    """Every target of the module's steps has a template variable of the same name and shape."""
    if {st.target.rsplit("/", 1)[-1] for st in trial.steps} != set(layer.vars):
        return False
    for step in trial.steps:
        _, shape = layer.vars[step.target.rsplit("/", 1)[-1]]
        if tuple(step.run(reader.get).shape) != shape:
            return False
    return True


def _torch_to_keras_template(reader: FormatReader, hints: Hints, template: str) -> Plan:
    """Names, HDF5 groups and layer kinds from a ``.weights.h5`` Keras wrote for the target model.

    Torch modules are taken in state-dict order (the model's order); each goes to the first unused
    layer of the Keras class whose variables it fits (names and shapes after the layout transforms).
    Within a class Keras numbers layers in creation order, so only the interleaving of classes is
    chosen by fit; two classes that both fit are an ambiguity, never a guess.
    """
    plan = Plan("torch-to-keras (template)")
    shapes = {n: reader.info(n).shape for n in reader.keys()}
    queues = _template_layers(template)
    for module, params in _torch_modules(reader, plan).items():
        fits: list[tuple[str, Plan]] = []
        for cls, queue in queues.items():
            if not queue or queue[0].kind is None:
                continue
            kind = hints.get(module) or _template_kind(queue[0])
            try:
                trial = _steps_for(module, params, kind, reader, shapes)
                if _fits(trial, queue[0], reader):
                    fits.append((cls, trial))
            except (WeightVaultError, KeyError, ValueError, IndexError):
                continue  # the module is not of this layer's kind
        if len(fits) != 1:
            heads = ", ".join(q[0].group for q in queues.values() if q) or "none left"
            raise AmbiguousLayoutError(
                f"torch module {module!r} ({', '.join(f'{p} {list(shapes[n])}' for p, n in params.items())}) "
                + ("fits no" if not fits else f"fits {len(fits)}")
                + f" of the template's next layers ({heads})",
                path=reader.path,
                tensor=next(iter(params.values())),
                hint=f"check that {template} is the weights file of the same model"
                + ("" if not fits else f", or pass --hint {module}=KIND"),
            )
        cls, trial = fits[0]
        layer = queues[cls].pop(0)
        for step in trial.steps:
            target = layer.vars[step.target.rsplit("/", 1)[-1]][0]
            plan.steps.append(Step(target, step.sources, step.transforms, step.combine, step.note))
        plan.dropped.update(trial.dropped)
    left = [q[0].group for q in queues.values() if q]
    if left:
        raise AmbiguousLayoutError(
            f"template layers with no torch module: {', '.join(left)}", path=reader.path,
            hint=f"check that {template} is the weights file of the same model",
        )  # fmt: skip
    plan.notes.append(f"layout, names and kinds from the template {template}")
    return plan
