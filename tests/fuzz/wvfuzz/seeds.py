"""Seed files for the fuzzer, written by the real libraries (plus the shared fixtures).

Each seed is a file or a directory that the format's real writer produced: torch.save, numpy,
safetensors, onnx, gguf, h5py/Keras, TensorFlow's Saver. What cannot be generated here (OneFlow,
ToadOCR's gob, and the TensorFlow/Keras files when ``quick`` skips the slow TensorFlow import)
comes from ``../shared/fixtures``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()

__all__ = ["FORMATS", "Seed", "make_seeds"]


@dataclass(frozen=True)
class Seed:
    format: str
    name: str
    path: Path  # a file or a directory

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()


def _state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "fc.weight": rng.standard_normal((8, 6)).astype(np.float32),
        "fc.bias": rng.standard_normal(8).astype(np.float32),
        "emb": rng.integers(-50, 50, (5, 4)).astype(np.int64),
        "flag": np.array([True, False, True]),
        "half": rng.standard_normal((3, 2)).astype(np.float16),
    }


def _native(out: Path, rng: np.random.Generator) -> list[Path]:
    import weightvault

    state = {
        "model": _state(rng),
        "optimizer": {"state": {0: {"step": 3, "exp_avg": rng.standard_normal(4).astype(np.float32)}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]},
        "epoch": 7,
        "note": "seed",
    }
    single = weightvault.save(state, out / "native.safetensors")
    sharded = weightvault.save(state, out / "native_dir", shard_size=200)
    return [Path(single), Path(sharded)]


def _safetensors(out: Path, rng: np.random.Generator) -> list[Path]:
    from safetensors.numpy import save_file

    save_file(_state(rng), str(out / "plain.safetensors"), metadata={"format": "pt"})
    return [out / "plain.safetensors"]


def _pytorch(out: Path, rng: np.random.Generator) -> list[Path]:
    import torch

    sd = {k: torch.from_numpy(v.copy()) for k, v in _state(rng).items()}
    view_base = torch.arange(12, dtype=torch.float32)
    sd["view"] = view_base[2:8].view(2, 3)
    sd["tied"] = sd["fc.weight"]
    torch.save({"model": sd, "step": 5, "names": ["a", "b"]}, out / "zip.pt")
    torch.save(sd, out / "legacy.pt", _use_new_zipfile_serialization=False)
    paths = [out / "zip.pt", out / "legacy.pt"]
    for name in ("train_checkpoint.pth", "net_state_dict_legacy.pt"):
        shutil.copy(FIXTURES / "pytorch" / name, out / name)
        paths.append(out / name)
    return paths


def _torch_export(out: Path, rng: np.random.Generator) -> list[Path]:
    import warnings

    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(6, 6)
            self.b = torch.nn.Linear(6, 6)
            self.b.weight = self.a.weight  # tied: one record, two names
            self.register_buffer("t", torch.from_numpy(_state(rng)["emb"]).t())  # strided
            self.c = torch.arange(10.0)[2:7]  # a constant at an offset of its storage

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) + self.t.sum() + self.c.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(Net().eval(), (torch.randn(2, 6),)), out / "net.pt2")
    return [out / "net.pt2"]


def _numpy(out: Path, rng: np.random.Generator) -> list[Path]:
    state = _state(rng)
    np.save(out / "one.npy", state["fc.weight"])
    np.savez(out / "many.npz", **state)
    np.savez_compressed(out / "packed.npz", **state)
    return [out / "one.npy", out / "many.npz", out / "packed.npz"]


def _onnx(out: Path, rng: np.random.Generator) -> list[Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = helper.make_tensor("B", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["X", "W", "B"], ["Y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph)
    onnx.save(model, out / "model.onnx")
    ext_dir = out / "onnx_external"
    ext_dir.mkdir()
    onnx.save(model, ext_dir / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return [out / "model.onnx", ext_dir]


def _gguf(out: Path, rng: np.random.Generator) -> list[Path]:
    import gguf

    writer = gguf.GGUFWriter(str(out / "model.gguf"), "llama")
    writer.add_uint32("seed.count", 3)
    writer.add_string("seed.name", "fuzz")
    for name, arr in _state(rng).items():
        if arr.dtype in (np.float32, np.float16):
            writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [out / "model.gguf"]


def _keras(out: Path, rng: np.random.Generator) -> list[Path]:
    import h5py

    paths = []
    for name in ("model.weights.h5", "model.keras", "legacy.h5"):
        shutil.copy(FIXTURES / "keras" / name, out / name)
        paths.append(out / name)
    # A small file h5py writes here, in the Keras 3 weights layout, so mutants stay quick to read.
    with h5py.File(out / "small.weights.h5", "w") as f:
        group = f.create_group("layers/dense/vars")
        group.create_dataset("0", data=rng.standard_normal((3, 2)).astype(np.float32))
        group.create_dataset("1", data=np.zeros(2, np.float32), chunks=(1,), compression="gzip")
    paths.append(out / "small.weights.h5")
    return paths


def _copy_fixture_dir(out: Path, *parts: str) -> Path:
    dst = out / "-".join(parts)
    shutil.copytree(FIXTURES.joinpath(*parts), dst)
    return dst


def _tf_bundle(out: Path, rng: np.random.Generator) -> list[Path]:
    return [_copy_fixture_dir(out, "tensorflow", "tf1_saver"), _copy_fixture_dir(out, "tensorflow", "tf2_object")]


def _tf_graph(out: Path, rng: np.random.Generator) -> list[Path]:
    shutil.copy(FIXTURES / "tensorflow" / "frozen" / "graph.pb", out / "frozen.pb")
    shutil.copy(FIXTURES / "tensorflow" / "tf1_saver" / "model.ckpt-1000.meta", out / "model.meta")
    return [out / "frozen.pb", out / "model.meta"]


def _tf_v1(out: Path, rng: np.random.Generator) -> list[Path]:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        tf1.Variable(rng.standard_normal((6, 4)).astype(np.float32), name="dense/kernel")
        tf1.Variable(np.arange(3, dtype=np.int64), name="counts")
        tf1.Variable([b"a", b""], name="names")
        tf1.get_variable("part", initializer=tf.constant(rng.standard_normal((10, 3)).astype(np.float32)),
                         partitioner=tf1.fixed_size_partitioner(2))
        saver = tf1.train.Saver(write_version=tf1.train.SaverDef.V1)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)
    return [out / "model.ckpt"]


def _hwexport(out: Path, rng: np.random.Generator) -> list[Path]:
    import weightvault

    state = _state(rng) | {"gru.weight_hh_l0": rng.uniform(-1, 1, (6, 2)).astype(np.float32)}
    folders = []
    for file_format, number in (("coe", "Q1.15"), ("mif", "int8"), ("mem", "Q3.5"), ("c", "float32"),
                                ("txt", "Q1.15"), ("npy", "int8")):
        folder = out / f"fpga-{file_format}"
        weightvault.export_hw(state, folder, file_format=file_format, number=number,
                              include=["fc.*", "gru.*"], split=["gru.weight_hh_l0:0:3"])
        folders.append(folder)
    return folders


def _gob(out: Path, rng: np.random.Generator) -> list[Path]:
    shutil.copy(FIXTURES / "gob" / "toadocr_snn_weights", out / "toad.gob")
    return [out / "toad.gob"]


def _oneflow(out: Path, rng: np.random.Generator) -> list[Path]:
    return [
        _copy_fixture_dir(out, "oneflow", name)
        for name in ("3x3_i3o3_conv2d", "3x3_i3o3_conv2d_params", "graph_affine_with_parameter")
    ]


def _torch_dcp(out: Path, rng: np.random.Generator) -> list[Path]:
    """torch.distributed.checkpoint directories, one process: torch's FileSystemWriter (.metadata
    pickle + .distcp chunks), its HuggingFaceStorageWriter shards, weightvault's DCP backend."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    from weightvault.torch_dcp import WeightVaultWriter

    sd = {k: torch.from_numpy(v.copy()) for k, v in _state(rng).items()}
    state = {"model": {**sd, "bf16": torch.linspace(-1, 1, 6).to(torch.bfloat16)}, "step": 4,
             "groups": [{"lr": 0.1, "betas": (0.9, 0.999)}]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save(state, checkpoint_id=out / "dcp")
        dcp.save(sd, storage_writer=dcp.HuggingFaceStorageWriter(str(out / "hf"), save_distributed=True))
        dcp.save(state, storage_writer=WeightVaultWriter(out / "wv"))
    return [out / "dcp", out / "hf", out / "wv"]


FORMATS: dict[str, Callable[[Path, np.random.Generator], list[Path]]] = {
    "native": _native,
    "safetensors": _safetensors,
    "pytorch": _pytorch,
    "numpy": _numpy,
    "onnx": _onnx,
    "gguf": _gguf,
    "keras": _keras,
    "tf_bundle": _tf_bundle,
    "tf_graph": _tf_graph,
    "tf_v1": _tf_v1,
    "hwexport": _hwexport,
    "gob": _gob,
    "oneflow": _oneflow,
    "torch_dcp": _torch_dcp,
    "torch_export": _torch_export,
}


def make_seeds(out: Path, formats: list[str] | None = None) -> dict[str, list[Seed]]:
    """Write every format's seeds under ``out/<format>/``."""
    seeds: dict[str, list[Seed]] = {}
    for fmt in formats or list(FORMATS):
        d = out / fmt
        d.mkdir(parents=True, exist_ok=True)
        paths = FORMATS[fmt](d, np.random.default_rng(len(fmt)))
        seeds[fmt] = [Seed(fmt, p.name, p) for p in paths]
    return seeds
