"""``weightvault.core.memory.MemoryReader``: the one reader over in-memory tensors (used by
restore for a model state, export_hw for a mapping, a plan applied to a mapping)."""

from __future__ import annotations

import numpy as np
import pytest

from weightvault.abc.format import DescribedTensors, FormatReader, LazyTensors, TensorInfo
from weightvault.core.limits import MAX_NESTING
from weightvault.core.memory import MemoryReader
from weightvault.errors import ResourceLimitError, TensorNotFoundError
from weightvault.transforms import Plan
from weightvault.transforms.base import Transpose
from weightvault.transforms.plan import Step

torch = pytest.importorskip("torch")


def test_nested_state_names_tensors_by_path_and_skips_other_leaves() -> None:
    state = {
        "model": {"w": torch.ones(2, 3, dtype=torch.bfloat16), "b": np.zeros(3, np.float32)},
        "optimizer": {"state": {0: {"step": 4, "exp_avg": torch.zeros(2)}}, "lr": 0.1},
        "buffers": [np.arange(4, dtype=np.int64), (torch.zeros(1), "note")],
    }
    reader = MemoryReader(state)
    assert reader.keys() == [
        "model/w",
        "model/b",
        "optimizer/state/0/exp_avg",
        "buffers/0",
        "buffers/1/0",
    ]
    assert reader.format == "memory" and isinstance(reader, FormatReader)
    assert reader.info("model/w") == TensorInfo("model/w", "bfloat16", (2, 3))
    assert reader.info("buffers/0") == TensorInfo("buffers/0", "int64", (4,))
    w = reader.get("model/w")
    assert isinstance(w, np.ndarray) and w.dtype.name == "bfloat16" and w.shape == (2, 3)
    assert reader.get("model/w", framework="torch").dtype == torch.bfloat16


def test_info_does_not_convert_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    import weightvault.core.memory as memory

    def no_conversion(obj: object) -> np.ndarray:
        raise AssertionError("info converted a tensor")

    monkeypatch.setattr(memory, "to_numpy", no_conversion)
    reader = MemoryReader({"w": torch.zeros(5, 2, dtype=torch.float16)})
    assert reader.info("w") == TensorInfo("w", "float16", (5, 2))


def test_flat_mapping_keeps_keys_and_takes_any_array_like() -> None:
    reader = MemoryReader({"a/b": [1.0, 2.0], "c": np.float32(3)}, nested=False, path="<mapping>")
    assert reader.keys() == ["a/b", "c"]
    assert reader.info("a/b") == TensorInfo("a/b", "float64", (2,))
    assert reader.get("c").shape == () and reader.path == "<mapping>"


def test_missing_name_is_our_error_naming_it() -> None:
    reader = MemoryReader({"w": np.zeros(2)})
    with pytest.raises(TensorNotFoundError) as err:
        reader.get("v")
    assert err.value.tensor == "v"
    with pytest.raises(TensorNotFoundError):
        reader.info("v")


def test_nesting_is_bounded() -> None:
    state: dict[str, object] = {"w": np.zeros(1)}
    for _ in range(MAX_NESTING + 5):
        state = {"x": state}
    with pytest.raises(ResourceLimitError):
        MemoryReader(state)


def test_readers_and_their_views_are_described_tensors_dicts_are_not() -> None:
    reader = MemoryReader({"w": np.zeros((2, 3), np.float32)})
    assert isinstance(reader, DescribedTensors)
    assert isinstance(LazyTensors(reader), DescribedTensors)
    planned = Plan("t", [Step("w.t", ("w",), (Transpose((1, 0)),))]).apply(reader)
    assert isinstance(planned, DescribedTensors)
    assert not isinstance({"w": np.zeros(2)}, DescribedTensors)


def test_a_plan_over_a_plain_dict_goes_through_the_memory_reader() -> None:
    plan = Plan("t", [Step("w.t", ("w",), (Transpose((1, 0)),))])
    planned = plan.apply({"w": torch.arange(6.0).reshape(2, 3)})
    assert isinstance(planned.source, MemoryReader)
    assert planned.info("w.t") == TensorInfo("w.t", "float32", (3, 2))
    np.testing.assert_array_equal(planned["w.t"], np.arange(6.0, dtype=np.float32).reshape(2, 3).T)


def test_default_read_jobs_fill_the_array_from_get() -> None:
    # Optional hooks with defaults: a reader that cannot promise its bytes gives no checked_info
    # (weightvault.load then copies get()); its read_jobs still fill an array when asked.
    reader = MemoryReader({"w": np.arange(6, dtype=np.int16).reshape(2, 3)})
    assert reader.checked_info("w") is None and reader.tree_spec() is None and reader.aliases == {}
    out = np.empty((2, 3), np.int16)
    for job in reader.read_jobs("w", out):
        job()
    np.testing.assert_array_equal(out, reader.get("w"))


def test_a_flat_mapping_is_read_on_access_only() -> None:
    reads: list[str] = []

    class Lazy(dict):
        def __getitem__(self, name: str) -> np.ndarray:
            reads.append(name)
            return super().__getitem__(name)

        def items(self):  # noqa: ANN202 - would read everything; the reader must not call it
            raise AssertionError("items() read every value")

    reader = MemoryReader(Lazy(a=np.zeros(2), b=np.ones(3)), nested=False)
    assert reader.keys() == ["a", "b"] and reads == []
    assert reader.get("b").shape == (3,) and reads == ["b"]
