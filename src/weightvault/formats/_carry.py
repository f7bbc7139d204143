"""Metadata carried through containers that have no metadata field of their own (.npz, .pt).

``convert`` hands every writer the source reader's ``metadata``. Formats with a metadata field keep
it there (native, safetensors); ``.npz`` and torch ``.pt`` files have none, so facts that only the
source format understands (a gob stream's trailing Go values, a Keras file's HDF5 layout) were lost
on the way, and a later conversion back could not rebuild the original. These helpers store the
*foreign* part of the metadata (every key except the target format's own) as one JSON document in a
place the framework itself ignores: the ``.npz`` archive comment, a record of the ``.pt`` zip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_CARRIED_BYTES", "decode_carried", "encode_carried"]

#: the most carried metadata a reader parses (a Keras model config is the largest usual part)
MAX_CARRIED_BYTES = 16 << 20


def _json(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError):
        return None  # not JSON-able: not carried


def encode_carried(metadata: Mapping[str, Any] | None, own: str, limit: int = MAX_CARRIED_BYTES) -> bytes | None:
    """UTF-8 JSON of ``metadata`` without the key ``own`` (the target format's facts), or None when
    nothing is left. Keys that are not JSON-able are dropped; when the whole does not fit in
    ``limit`` bytes, the largest keys are dropped until it does."""
    parts: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if key == own:
            continue
        text = _json(value)
        if text is not None:
            parts[str(key)] = text
    while parts:
        doc = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in parts.items()) + "}"
        raw = doc.encode("utf-8")
        if len(raw) <= limit:
            return raw
        del parts[max(parts, key=lambda k: len(parts[k]))]
    return None


def decode_carried(raw: bytes | memoryview | None, own: str) -> dict[str, Any]:
    """The carried metadata, or ``{}`` when there is none or it cannot be parsed (it only helps a
    later conversion; a damaged copy must not stop the tensors from being read)."""
    if not raw or len(raw) > MAX_CARRIED_BYTES:
        return {}
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    doc.pop(own, None)
    return doc
