"""Every registered format passes the shared conformance suite (issue 15, item 4).

Writable formats run :class:`~weightvault.testing.formats.FormatTests` (their subclasses live in
``tests/formats/test_<name>.py``; ``tf_graph``'s is here); read-only formats run the read-side
suite :class:`~weightvault.testing.formats.ReadFormatTests` on a file their real writer made.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
import numpy as np
import pytest

import weightvault
from weightvault.registry import ROWS
from weightvault.testing.formats import FormatTests, ReadFormatTests

TESTS = Path(__file__).resolve().parent


def _suites() -> dict[str, set[str]]:
    """format name -> the conformance classes that run it, found in the test sources."""
    found: dict[str, set[str]] = {}
    pattern = re.compile(
        r"^class (\w+)\((FormatTests|ReadFormatTests)\):\n(?:    .*\n|\n)*?    format_name = \"(\w+)\"",
        re.M,
    )
    for path in [*TESTS.glob("formats/test_*.py"), Path(__file__)]:
        for cls, _, name in pattern.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(cls)
    return found


@pytest.mark.parametrize("r", ROWS, ids=lambda r: r.name)
def test_every_registered_format_runs_its_conformance_suite(r) -> None:
    suites = _suites()
    suite = "FormatTests" if r.writable else "ReadFormatTests"
    assert r.name in suites, f"add a {suite} subclass for {r.name}"
    if not r.writable:
        here = {name for name, obj in vars(sys.modules[__name__]).items()
                if isinstance(obj, type) and issubclass(obj, ReadFormatTests)}
        assert suites[r.name] & here


# -- writable formats without a suite of their own elsewhere -----------------------------------


class TestTFGraphConformance(FormatTests):
    format_name = "tf_graph"
    suffix = ".pb"
    dtypes = ("float32", "float64", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")


# -- read-only formats: files written by the real tools ------------------------------------------


class TestGGUFReadConformance(ReadFormatTests):
    format_name = "gguf"

    def make_file(self, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
        gguf = pytest.importorskip("gguf")
        values = {
            "tok_embd.weight": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
            "norm.weight": np.array([1.0, -0.5, 2.0], np.float16),
            "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
        }
        path = tmp_path / "tiny.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_uint32("llama.context_length", 16)
        for name, arr in values.items():
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path, values


class TestTFV1ReadConformance(ReadFormatTests):
    format_name = "tf_v1"

    def make_file(self, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
        tf = pytest.importorskip("tensorflow")
        tf1 = tf.compat.v1
        values = {
            "dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
            "dense/bias": np.array([1.5, -2.0, 0.25, 8.0], np.float64),
            "step": np.array([3, -4], np.int64),
        }
        graph = tf.Graph()
        with graph.as_default():
            for name, arr in values.items():
                tf1.get_variable(name, initializer=arr)
            saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
            with tf1.Session(graph=graph) as sess:
                sess.run(tf1.global_variables_initializer())
                path = saver.save(sess, str(tmp_path / "model.ckpt"))
        return Path(path), values


class TestTorchDCPReadConformance(ReadFormatTests):
    format_name = "torch_dcp"

    def make_file(self, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
        torch = pytest.importorskip("torch")
        import torch.distributed.checkpoint as dcp

        values = {
            "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
            "fc.bias": np.array([1.5, -2.0, 0.25], np.float64),
            "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        }
        path = tmp_path / "dcp"
        # one process, no process group: dcp.save writes a one-rank checkpoint (and warns so)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.save({k: torch.from_numpy(v.copy()) for k, v in values.items()}, checkpoint_id=str(path))
        return path, values


class TestTorchExportReadConformance(ReadFormatTests):
    format_name = "torch_export"

    def make_file(self, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
        torch = pytest.importorskip("torch")

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc = torch.nn.Linear(4, 3)
                self.register_buffer("steps", torch.arange(6, dtype=torch.int64).reshape(2, 3))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.fc(x) + self.steps.sum()

        net = Net()
        with torch.no_grad():
            net.fc.weight.copy_(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8)
            net.fc.bias.copy_(torch.tensor([1.5, -2.0, 0.25]))
        path = tmp_path / "net.pt2"
        torch.export.save(torch.export.export(net, (torch.randn(2, 4),)), path)
        values = {
            "fc.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 8,
            "fc.bias": np.array([1.5, -2.0, 0.25], np.float32),
            "steps": np.arange(6, dtype=np.int64).reshape(2, 3),
        }
        return path, values


class TestHWExportReadConformance(ReadFormatTests):
    format_name = "hwexport"

    def make_file(self, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
        # Q1.7 holds every value below exactly: the dequantized read must give them back
        values = {
            "fc.weight": np.array([[0.5, -0.25], [0.125, -1.0]], np.float32),
            "fc.bias": np.array([0.75, -0.5], np.float32),
        }
        src = weightvault.save(values, tmp_path / "net.safetensors")
        out = tmp_path / "out"
        weightvault.export_hw(src, out, file_format="coe", number="q1.7")
        return out, values
