"""The tree spec: nested training state stored as JSON, with tensors stored by name.

``flatten(obj)`` walks dicts (any str/int/float/bool/None keys, so optimizer state with int keys
survives), lists, tuples and scalar leaves, and returns a JSON-able spec plus the tensors it found,
each under a readable path name (``optimizer/state/0/exp_avg``). ``unflatten(spec, fetch)`` builds
the same structure back. Anything else is refused with :class:`UnsupportedObjectError`: we never
fall back to pickle, because loading a pickle runs code.

Spec nodes (``t`` is the node type)::

    {"t": "tensor", "name": N}            a tensor stored under N
    {"t": "npscalar", "name": N}          a numpy scalar (restored as np.generic)
    {"t": "dict", "items": [[K, node]...]}   K is an encoded key (see _encode_key)
    {"t": "list" | "tuple", "items": [node, ...]}
    {"t": "int", "v": 3}  {"t": "float", "v": "0x1.8p+0"}  {"t": "str", "v": "x"}
    {"t": "bool", "v": true}  {"t": "none"}
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from typing import Any

from weightvault.core.limits import MAX_NESTING, check_depth
from weightvault.core.tensors import is_tensor
from weightvault.errors import InvalidHeaderError, UnsupportedObjectError

__all__ = ["check_spec", "flatten", "name_filter", "tensor_names", "unflatten"]

SEP = "/"


def _encode_key(key: Any, where: str) -> list[Any]:
    # bool before int: bool is a subclass of int and must come back as bool.
    if isinstance(key, bool):
        return ["b", key]
    if isinstance(key, int):
        return ["i", key]
    if isinstance(key, str):
        return ["s", key]
    if isinstance(key, float):
        return ["f", key.hex()]
    if key is None:
        return ["n", None]
    raise UnsupportedObjectError(
        f"dict key {key!r} of type {type(key).__name__} at {where or '<root>'} cannot be stored; "
        "keys may be str, int, float, bool or None"
    )


class _BadSpec(ValueError):
    """A spec node that does not decode; :func:`check_spec` adds the file and the node's place."""


def _decode_float(text: Any) -> float:
    if not isinstance(text, str):
        raise _BadSpec(f"float value {text!r} is not a string")
    if text in ("nan", "inf", "-inf"):
        return float(text)
    try:
        return float.fromhex(text)
    except (ValueError, OverflowError):
        raise _BadSpec(f"float value {text!r} is not a hex float") from None


# key kind -> (type the JSON value must have, decoder); bool is not an int here
_KEY_KINDS: dict[str, tuple[type | tuple[type, ...], Callable[[Any], Any]]] = {
    "b": (bool, bool),
    "i": (int, int),
    "s": (str, str),
    "f": (str, _decode_float),
    "n": (type(None), lambda _: None),
}


def _decode_key(enc: Any) -> Any:
    if not (isinstance(enc, list) and len(enc) == 2 and isinstance(enc[0], str)) or (
        enc[0] not in _KEY_KINDS
    ):
        raise _BadSpec(f"dict key {enc!r} is not one of [kind, value] with kind in b, i, s, f, n")
    kind, value = enc
    want, decode = _KEY_KINDS[kind]
    if not isinstance(value, want) or (kind == "i" and isinstance(value, bool)):
        raise _BadSpec(f"dict key {enc!r}: value is not of kind {kind!r}")
    return decode(value)


def _float_leaf(x: float) -> dict[str, Any]:
    # float.hex keeps every bit, including nan/inf which plain JSON cannot carry.
    return {"t": "float", "v": float(x).hex() if math.isfinite(x) else repr(float(x))}


# node type -> {field: required JSON type}
_NODE_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "tensor": {"name": str},
    "npscalar": {"name": str},
    "dict": {"items": list},
    "list": {"items": list},
    "tuple": {"items": list},
    "int": {"v": int},
    "float": {"v": str},
    "str": {"v": str},
    "bool": {"v": bool},
    "none": {},
}


def _check_node(node: Any) -> None:
    if type(node) is not dict:
        raise _BadSpec(f"node is a JSON {type(node).__name__}, not an object")
    kind = node.get("t")
    if type(kind) is not str or kind not in _NODE_FIELDS:
        raise _BadSpec(f"unknown tree-spec node type {kind!r}")
    for field, want in _NODE_FIELDS[kind].items():
        value = node.get(field)
        if type(value) is not want:  # exact JSON types: a bool is not an int here
            raise _BadSpec(
                f"{node['t']} node needs {field!r} of type {want.__name__}, got {value!r}"
            )
    if node["t"] == "float":
        _decode_float(node["v"])


def check_spec(spec: Any, *, path: str | None = None) -> None:
    """Validate a spec read from a file before anything walks it.

    Every node must have a known type and fields of the right JSON types, every dict key must
    decode, and nesting is bounded by :data:`~weightvault.core.limits.MAX_NESTING`, so that
    :func:`unflatten` and :func:`tensor_names` cannot fail on a hostile file. Raises
    :class:`InvalidHeaderError` (or ``ResourceLimitError`` for depth) naming the node's place.
    """
    # Each stack entry carries its place as a linked list (key, parent's place), turned into a
    # "<root>/a/0" string only for an error: this runs on every open.
    Trail = tuple[Any, Any] | None
    stack: list[tuple[Any, int, Trail]] = [(spec, 0, None)]

    def where(trail: Trail) -> str:
        keys = []
        while trail is not None:
            key, trail = trail
            keys.append(str(key))
        return "/".join(["<root>", *reversed(keys)])

    while stack:  # iterative, so depth is checked before Python's own stack could run out
        node, depth, trail = stack.pop()
        if depth > MAX_NESTING:
            check_depth(depth, path=path, what=f"the tree spec at {where(trail)}")
        if type(node) is dict and node.get("t") == "tensor" and type(node.get("name")) is str:
            continue  # the common leaf, checked inline
        try:
            _check_node(node)
            kind = node["t"]
            if kind == "dict":
                for i, item in enumerate(node["items"]):
                    if type(item) is not list or len(item) != 2:
                        raise _BadSpec(f"dict item {i} is not a [key, node] pair")
                    key = item[0]
                    plain = type(key) is list and len(key) == 2 and key[0] == "s"
                    if not (plain and type(key[1]) is str):
                        key = [None, _decode_key(key)]  # the other kinds, checked in full
                    stack.append((item[1], depth + 1, (key[1], trail)))
            elif kind == "list" or kind == "tuple":
                stack.extend((v, depth + 1, (i, trail)) for i, v in enumerate(node["items"]))
        except _BadSpec as exc:
            raise InvalidHeaderError(f"tree spec at {where(trail)}: {exc}", path=path) from None


def name_filter(
    include: Sequence[str] | None, exclude: Sequence[str] | None
) -> Callable[[str], bool] | None:
    """A predicate for tensor names from include/exclude globs (None when both are empty).

    A name is kept when it matches some ``include`` pattern (or there is none) and no ``exclude``
    pattern; partial saves and selective restores share these rules.
    """
    if not include and not exclude:
        return None

    def keep(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        return not (exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude))

    return keep


_DROP = object()  # marks a tensor leaf left out by a partial save


def flatten(
    obj: Any,
    keep: Callable[[str], bool] | None = None,
    *,
    is_leaf: Callable[[Any], bool] = is_tensor,
    lenient: bool = False,
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Return ``(spec, tensors)``; ``tensors`` maps unique names to the tensor objects as found.

    A bare mapping of names to tensors (a state dict) keeps its keys as the tensor names, so the
    file reads naturally in any safetensors tool. ``keep(name)`` selects tensors for a partial
    save: a tensor it rejects is left out of its dict (in a list or tuple it becomes None, so
    positions stay meaningful); non-tensor leaves are always kept.

    ``is_leaf`` says what counts as a tensor (a reader passes its own lazy tensor type).
    ``lenient`` is for readers naming the tensors of a foreign file: instead of raising on an
    object or key the spec cannot hold, every tensor is still named (also inside sets) and the
    spec comes back as None.
    """
    tensors: dict[str, Any] = {}
    spec_ok = True

    def unsupported(node: Any, path: str) -> dict[str, Any]:
        nonlocal spec_ok
        if not lenient:
            raise UnsupportedObjectError(
                f"object of type {type(node).__module__}.{type(node).__qualname__} at "
                f"{path or '<root>'} cannot be stored; weightvault stores tensors, dicts, lists, "
                "tuples, int, float, str, bool and None (never pickles)",
                hint="convert it to one of these first (e.g. model.state_dict(), or a dict of its fields)",
            )
        spec_ok = False
        if isinstance(node, (set, frozenset, list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}{SEP}{i}" if path else str(i))
        return {"t": "none"}

    def key_of(key: Any, path: str) -> list[Any] | None:
        nonlocal spec_ok
        try:
            return _encode_key(key, path)
        except UnsupportedObjectError:
            if not lenient:
                raise
            spec_ok = False
            return None

    def unique(name: str) -> str:
        candidate, n = name or "tensor", 1
        while candidate in tensors:
            candidate = f"{name}~{n}"
            n += 1
        return candidate

    import numpy as np  # here, not at import: reading headers (``ls``) needs no numpy

    def walk(node: Any, path: str) -> Any:
        if keep is not None and (is_leaf(node) or isinstance(node, np.generic)) and not keep(path):
            return _DROP
        if is_leaf(node):
            name = unique(path)
            tensors[name] = node
            return {"t": "tensor", "name": name}
        if isinstance(node, np.generic):
            name = unique(path)
            tensors[name] = np.asarray(node)
            return {"t": "npscalar", "name": name}
        if node is None:
            return {"t": "none"}
        if isinstance(node, bool):
            return {"t": "bool", "v": node}
        if isinstance(node, int):
            return {"t": "int", "v": node}
        if isinstance(node, float):
            return _float_leaf(node)
        if isinstance(node, str):
            return {"t": "str", "v": node}
        if isinstance(node, dict):
            items = []
            for key, value in node.items():
                child = f"{path}{SEP}{key}" if path else str(key)
                sub = walk(value, child)
                encoded = key_of(key, path)
                if sub is not _DROP and encoded is not None:
                    items.append([encoded, sub])
            return {"t": "dict", "items": items}
        if isinstance(node, (list, tuple)) and type(node) in (list, tuple):
            kind = "list" if isinstance(node, list) else "tuple"
            subs = [walk(v, f"{path}{SEP}{i}" if path else str(i)) for i, v in enumerate(node)]
            return {"t": kind, "items": [{"t": "none"} if x is _DROP else x for x in subs]}
        return unsupported(node, path)

    spec = walk(obj, "")
    return (spec if spec_ok else None), tensors


def unflatten(spec: dict[str, Any], fetch: Callable[[str], Any]) -> Any:
    """Rebuild the object described by ``spec``; ``fetch(name)`` returns each stored tensor.

    A spec read from a file must pass :func:`check_spec` first."""
    t = spec["t"]
    if t == "tensor":
        return fetch(spec["name"])
    if t == "npscalar":
        import numpy as np

        return np.asarray(fetch(spec["name"]))[()]
    if t == "dict":
        return {_decode_key(k): unflatten(v, fetch) for k, v in spec["items"]}
    if t == "list":
        return [unflatten(v, fetch) for v in spec["items"]]
    if t == "tuple":
        return tuple(unflatten(v, fetch) for v in spec["items"])
    if t == "int":
        return int(spec["v"])
    if t == "float":
        return _decode_float(spec["v"])
    if t == "str":
        return str(spec["v"])
    if t == "bool":
        return bool(spec["v"])
    if t == "none":
        return None
    raise _BadSpec(f"unknown tree-spec node type {t!r}")


def tensor_names(spec: dict[str, Any]) -> list[str]:
    """Names of every tensor referenced by a spec, in tree order."""
    out: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node["t"] in ("tensor", "npscalar"):
            out.append(node["name"])
        elif node["t"] == "dict":
            for _, v in node["items"]:
                walk(v)
        elif node["t"] in ("list", "tuple"):
            for v in node["items"]:
                walk(v)

    walk(spec)
    return out
