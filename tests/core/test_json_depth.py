"""``json_depth``: the Python count (small headers, no numpy) and the vectorised one agree."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from weightvault.core import safetensors_io
from weightvault.core.safetensors_io import _json_depth_small, _json_depth_vectorised, json_depth

_json = st.recursive(
    st.none() | st.integers() | st.text(alphabet='ab"\\[]{}', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet='k"[{\\', max_size=3), inner, max_size=3),
    max_leaves=30,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(_json)
def test_both_counts_equal_the_true_nesting(value: object) -> None:
    raw = json.dumps(value).encode()
    structural = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structural = structural.translate(safetensors_io._IDENTITY, safetensors_io._NOT_STRUCTURAL)
    assert _json_depth_small(structural) == _depth(value)
    assert _json_depth_vectorised(structural) == _depth(value)
    assert json_depth(raw) == _depth(value)


def test_large_headers_take_the_vectorised_path(monkeypatch) -> None:
    raw = json.dumps([[[1]]] * 40000).encode()  # 160,002 brackets: over the Python limit
    monkeypatch.setattr(safetensors_io, "_json_depth_small", None)  # would raise if used
    assert json_depth(raw) == 3
