"""export_hw's split / transpose / reshape are transform steps, recorded in export.json.

The recorded ``transforms`` of each exported tensor, applied to its source tensor, give the
exported tensor's shape (``resolve_info``, no data) and values (``apply``); the existing
``split`` / ``transpose`` / ``reshape`` keys stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import weightvault
from weightvault.abc.format import TensorInfo
from weightvault.transforms.base import transform_from_dict


def test_export_json_records_each_tensor_s_transforms(tmp_path: Path) -> None:
    w = np.arange(48, dtype=np.float32).reshape(6, 8) / 64
    b = np.linspace(-1, 1, 5, dtype=np.float32)
    weightvault.export_hw(
        {"w": w, "b": b, "skip": np.zeros(3, np.float32)},
        tmp_path / "o",
        file_format="mem",
        number="Q4.12",
        exclude=["skip"],
        split=["w:0:3"],
        transpose=["w.1:1,0"],
        reshape=["w.2:4,-1"],
    )
    doc = json.loads((tmp_path / "o" / "export.json").read_text())
    entries = {e["name"]: e for e in doc["tensors"]}
    assert set(entries) == {"w.0", "w.1", "w.2", "b"}  # include/exclude as name_filter
    assert entries["b"]["transforms"] == []
    assert entries["w.1"]["transforms"] == [
        {"name": "split", "configuration": {"axis": 0, "sections": 3, "index": 1}},
        {"name": "transpose", "configuration": {"perm": [1, 0]}},
    ]
    assert entries["w.2"]["transforms"][-1] == {
        "name": "reshape",
        "configuration": {"shape": [4, -1], "from_shape": [2, 8]},
    }
    exported = weightvault.import_hw(tmp_path / "o", layout="exported")
    for name in ("w.0", "w.1", "w.2"):
        steps = [transform_from_dict(t) for t in entries[name]["transforms"]]
        info = TensorInfo("w", "float32", w.shape)
        x = w
        for step in steps:
            info, x = step.resolve_info(info), step.apply(x)
        assert list(info.shape) == entries[name]["shape"] == list(x.shape)
        np.testing.assert_allclose(exported[name], x, atol=2**-12)
        # the reshape and transpose steps undo themselves (the split part is the rejoin's job)
        for step in reversed(steps[1:]):
            x = step.inverse().apply(x)
        np.testing.assert_array_equal(x, np.split(w, 3)[int(name[-1])])
