"""The non-tensor state of a checkpoint: step, epoch, lr, metrics, param_groups, metadata.

``ls`` lists it after the tensors and ``show`` prints one value of it. Values come from the saved
object tree (the tree spec a native checkpoint or a pickled training checkpoint records, so no
tensor is read) and from the reader's ``metadata``; a path is the tree's keys and list indexes
joined with ``/`` (``optimizer/param_groups/0/lr``), ``metadata/...`` for metadata.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from weightvault.abc.format import FormatReader
from weightvault.core.jsonable import NOT_SPECIAL, jsonable
from weightvault.core.limits import check_depth

__all__ = ["StateValue", "find_state", "state_values", "suggest"]

#: metadata keys not listed as state: the object tree itself, and the run directory's checkpoint
#: list, which `ls` prints on its own
_METADATA_SKIPPED = ("tree", "checkpoints")
_SCALARS = (bool, int, float, str, bytes, type(None))
_MAX_TABLE_VALUE = 160  # characters of a value shown in the `ls` table; `show` prints it whole


@dataclass(frozen=True)
class TensorLeaf:
    """A tensor's place in the tree (its data is not read)."""

    name: str


@dataclass(frozen=True)
class StateValue:
    path: str
    value: Any
    source: str  # "structure" or "metadata"

    @property
    def type(self) -> str:
        return "none" if self.value is None else type(self.value).__name__

    def text(self, limit: int | None = None) -> str:
        out = format_value(self.value)
        if limit is not None and len(out) > limit:
            return f"{out[: limit - 1]}… ({len(out)} characters; `show` prints it whole)"
        return out

    def to_dict(self) -> dict[str, Any]:
        value = _jsonable(self.value)
        return {"path": self.path, "type": self.type, "value": value, "source": self.source}


def format_value(value: Any) -> str:
    """A value as `ls` and `show` print it: strings bare, containers as JSON, numbers as repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)) or (isinstance(value, tuple) and not _all_scalars(value)):
        return json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=True)
    return repr(value)


def _jsonable(value: Any) -> Any:
    return jsonable(value, _listing_value)


def _listing_value(value: Any) -> Any:
    """Tensors by name, bytes as (escaped) text, non-JSON leaves as their ``str``."""
    if isinstance(value, TensorLeaf):
        return f"<tensor {value.name}>"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (dict, list, tuple, *_SCALARS)):
        return NOT_SPECIAL
    return str(value)


def _all_scalars(items: list[Any] | tuple[Any, ...]) -> bool:
    return all(isinstance(v, _SCALARS) for v in items)


def saved_tree(reader: FormatReader) -> Any:
    """The checkpoint's object tree with tensors as :class:`TensorLeaf`, or None for a flat file.

    A native manifest and a pickled checkpoint's facts (``metadata[format]["tree"]``) record the
    tree as a spec, rebuilt here without reading a tensor; a format that reports its facts but no
    tree holds a flat state dict. Other readers are asked for ``structure()``.
    """
    from weightvault.core.tree import check_spec, unflatten

    manifest = getattr(reader, "manifest", None)
    spec = manifest.get("tree") if isinstance(manifest, dict) else None
    if spec is None:
        facts = reader.metadata.get(reader.format)
        if isinstance(facts, dict):
            spec = facts.get("tree")
            if spec is None:
                return None
    if isinstance(spec, dict):
        check_spec(spec, path=reader.path)
        return unflatten(spec, TensorLeaf)
    return reader.structure()


def _leaves(node: Any, prefix: str, source: str, path: str, depth: int = 0) -> Iterator[StateValue]:
    """Non-tensor leaves of ``node``; a list or tuple of scalars (betas, params) is one value."""
    check_depth(depth, path=path)
    if isinstance(node, TensorLeaf) or hasattr(node, "dtype") and hasattr(node, "shape"):
        return
    if isinstance(node, dict) and node:
        for key, value in node.items():
            if source == "metadata" and key in _METADATA_SKIPPED:
                continue
            child = f"{prefix}/{key}" if prefix else str(key)
            yield from _leaves(value, child, source, path, depth + 1)
    elif isinstance(node, (list, tuple)) and node and not _all_scalars(node):
        for i, value in enumerate(node):
            child = f"{prefix}/{i}" if prefix else str(i)
            yield from _leaves(value, child, source, path, depth + 1)
    else:
        yield StateValue(prefix, node, source)


def state_values(reader: FormatReader) -> list[StateValue]:
    """Every non-tensor value of the checkpoint, then every metadata value (``metadata/...``)."""
    out = list(_leaves(saved_tree(reader), "", "structure", reader.path))
    out += _leaves(reader.metadata, "metadata", "metadata", reader.path)
    return [v for v in out if v.path]


_MISSING = object()


def _descend(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(node, dict):
            match = [v for k, v in node.items() if str(k) == part]
            if not match:
                return _MISSING
            node = match[0]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def find_state(reader: FormatReader, name: str) -> tuple[str, Any] | None:
    """``(path, value)`` of a non-tensor value or subtree at ``name``, or None.

    Looked up in the object tree, then in the metadata (with or without the ``metadata/`` prefix).
    """
    parts = [p for p in name.strip("/").split("/") if p]
    if not parts:
        return None
    found = _descend(saved_tree(reader), parts)
    if found is not _MISSING and not isinstance(found, TensorLeaf):
        return name, found
    metadata = {k: v for k, v in reader.metadata.items() if k not in _METADATA_SKIPPED}
    meta_parts = parts[1:] if parts[0] == "metadata" else parts
    found = _descend(metadata, meta_parts) if meta_parts else metadata
    if found is not _MISSING:
        return "metadata/" + "/".join(meta_parts) if meta_parts else "metadata", found
    return None


def suggest(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Close matches for a mistyped name: names ending with it first, then difflib's."""
    tail = [c for c in candidates if c.endswith("/" + name) or c.endswith("." + name)]
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    return list(dict.fromkeys(tail + close))[:n]
