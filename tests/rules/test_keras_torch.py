"""keras-to-torch and torch-to-keras, verified by running both frameworks.

The same network is built in Keras 3 (TensorFlow backend) and PyTorch; weights go through the
``weightvault convert`` CLI, are loaded strictly into the other framework, and both must compute
the same outputs on the same input.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

import weightvault  # noqa: E402
from weightvault.rules import AmbiguousLayoutError  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
IMG = (8, 8, 3)  # NHWC
STEPS, VOCAB = 5, 20


# -- the network in both frameworks ----------------------------------------------------------------


def build_keras(seed: int = 0) -> keras.Model:
    """Image branch conv -> bn -> depthwise -> flatten -> dense; token branch embedding -> lstm -> gru."""
    L = keras.layers
    img = keras.Input(IMG, name="img")
    tok = keras.Input((STEPS,), dtype="int32", name="tok")
    x = L.Conv2D(8, 3, padding="valid", name="conv")(img)  # 6x6x8
    x = L.BatchNormalization(name="bn")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)  # 4x4x16
    x = L.Flatten(name="flat")(x)
    x = L.Dense(6, activation="relu", name="img_fc")(x)
    t = L.Embedding(VOCAB, 4, name="emb")(tok)
    t = L.LSTM(7, return_sequences=True, name="lstm")(t)
    t = L.GRU(5, name="gru")(t)  # reset_after=True
    h = L.Concatenate(name="cat")([x, t])
    h = L.Dense(16, name="fc1")(h)
    h = L.LayerNormalization(name="ln")(h)
    out = L.Dense(3, name="fc2")(h)
    model = keras.Model([img, tok], out)
    _randomise(model, seed)
    return model


def _randomise(model: keras.Model, seed: int) -> None:
    """Non-trivial values everywhere, BN statistics included (they start at 0/1)."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        if "variance" in var.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.3, shape)
        var.assign(value.astype("float32"))


class TorchNet(torch.nn.Module):
    """The PyTorch twin; ``nhwc_flatten`` flattens like Keras (no flatten hint needed then)."""

    def __init__(self, nhwc_flatten: bool) -> None:
        super().__init__()
        nn = torch.nn
        self.nhwc_flatten = nhwc_flatten
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8, eps=1e-3)
        self.dw = nn.Conv2d(8, 16, 3, groups=8)
        self.img_fc = nn.Linear(4 * 4 * 16, 6)
        self.emb = nn.Embedding(VOCAB, 4)
        self.lstm = nn.LSTM(4, 7, batch_first=True)
        self.gru = nn.GRU(7, 5, batch_first=True)
        self.fc1 = nn.Linear(11, 16)
        self.ln = nn.LayerNorm(16, eps=1e-3)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, img_nhwc: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.bn(self.conv(img_nhwc.permute(0, 3, 1, 2))))
        x = x.permute(0, 2, 3, 1).flatten(1) if self.nhwc_flatten else x.flatten(1)
        x = torch.relu(self.img_fc(x))
        t, _ = self.lstm(self.emb(tok))
        _, h = self.gru(t)
        h = torch.cat([x, h[-1]], dim=1)
        return self.fc2(self.ln(self.fc1(h)))


def _inputs(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, *IMG)).astype("float32"), rng.integers(0, VOCAB, (2, STEPS)).astype("int32")


def _torch_out(model: torch.nn.Module, img: np.ndarray, tok: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(img), torch.from_numpy(tok).long()).numpy()


def _load_strict(model: torch.nn.Module, path: Path) -> None:
    state = weightvault.load(path, framework="torch")
    model.load_state_dict(state, strict=True)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("keras")
    model = build_keras()
    img, tok = _inputs()
    expected = np.asarray(model([img, tok], training=False))
    model.save(d / "m.keras")
    model.save_weights(d / "m.weights.h5")
    model.save(d / "m.h5")  # legacy HDF5 with model_config
    # A tf.keras 2 save_weights() file has no model config: strip it to get the same situation.
    shutil.copy(d / "m.h5", d / "noconfig.h5")
    with h5py.File(d / "noconfig.h5", "a") as f:
        del f.attrs["model_config"]
    return {"dir": d, "expected": expected, "img": img, "tok": tok, "model": model}


# -- keras -> torch --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["m.keras", "m.h5"])
def test_keras_file_converts_without_hints(cli_run, keras_files, tmp_path: Path, source: str) -> None:
    """The config knows every layer kind and the shape before the Flatten (4x4x16), so the Dense
    after it is re-ordered for a PyTorch model that flattens NCHW, with no hint at all."""
    code, out, _ = cli_run("convert", keras_files["dir"] / source, tmp_path / "t.safetensors", "--rules", "keras-to-torch")
    assert code == 0, out
    assert "BatchNorm eps=0.001" in out
    net = TorchNet(nhwc_flatten=False)
    _load_strict(net, tmp_path / "t.safetensors")
    np.testing.assert_allclose(_torch_out(net, keras_files["img"], keras_files["tok"]), keras_files["expected"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("source", ["m.keras", "m.weights.h5", "m.h5"])
def test_flatten_hint_matches_nchw_flatten(cli_run, keras_files, tmp_path: Path, source: str) -> None:
    dst = tmp_path / "t.safetensors"
    code, out, _ = cli_run(
        "convert", keras_files["dir"] / source, dst, "--rules", "keras-to-torch", "--hint", "img_fc=flatten:4,4,16"
    )
    assert code == 0, out
    net = TorchNet(nhwc_flatten=False)
    _load_strict(net, dst)
    np.testing.assert_allclose(_torch_out(net, keras_files["img"], keras_files["tok"]), keras_files["expected"], rtol=RTOL, atol=ATOL)


def test_legacy_h5_without_config_needs_hints(cli_run, keras_files, tmp_path: Path) -> None:
    src = keras_files["dir"] / "noconfig.h5"
    with pytest.raises(AmbiguousLayoutError) as err:
        weightvault.convert(src, tmp_path / "x.safetensors", rules="keras-to-torch", dry_run=True)
    assert "'conv'" in str(err.value) and "4-D kernel" in str(err.value)
    assert "--hint conv=conv" in err.value.hint
    assert not (tmp_path / "x.safetensors").exists()
    dst = tmp_path / "t.safetensors"
    code, out, _ = cli_run(
        "convert", src, dst, "--rules", "keras-to-torch",
        "--hint", "conv=conv", "--hint", "dw=depthwise", "--hint", "img_fc=flatten:4,4,16",
    )  # fmt: skip
    assert code == 0, out
    net = TorchNet(nhwc_flatten=False)
    _load_strict(net, dst)
    np.testing.assert_allclose(_torch_out(net, keras_files["img"], keras_files["tok"]), keras_files["expected"], rtol=RTOL, atol=ATOL)


def test_shared_fixture_keras_files_plan(fixtures_dir: Path) -> None:
    """The committed Keras fixture (written by Keras 3) plans to the same torch names from all three files."""
    targets = []
    for name in ("model.keras", "model.weights.h5", "legacy.h5"):
        report = weightvault.convert(fixtures_dir / "keras" / name, "unused.safetensors", rules="keras-to-torch", dry_run=True)
        targets.append(sorted(r["target"] for r in report.to_dict()["tensors"]))
    assert targets[0] == targets[1] == targets[2]
    assert "gru.bias_hh_l0" in targets[0] and "bn.num_batches_tracked" in targets[0]


def test_gru_reset_before_is_refused(tmp_path: Path) -> None:
    L = keras.layers
    model = keras.Sequential([keras.Input((3, 4)), L.GRU(5, reset_after=False, name="gru")])
    model.save(tmp_path / "g.keras")
    with pytest.raises(AmbiguousLayoutError, match="reset_after=False"):
        weightvault.convert(tmp_path / "g.keras", tmp_path / "g.safetensors", rules="keras-to-torch")
    assert not (tmp_path / "g.safetensors").exists()


# -- torch -> keras --------------------------------------------------------------------------------


def build_keras_rnn() -> keras.Model:
    """Layer names equal Keras' snake_case class paths, so the .weights.h5 groups follow from the names."""
    L = keras.layers
    tok = keras.Input((STEPS,), dtype="int32")
    t = L.Embedding(VOCAB, 4, name="embedding")(tok)
    t = L.LSTM(6, return_sequences=True, name="lstm")(t)
    t = L.GRU(5, return_sequences=True, name="gru")(t)
    t = L.Bidirectional(L.LSTM(3), name="bidirectional")(t)
    t = L.Dense(8, name="dense")(t)
    t = L.LayerNormalization(name="layer_normalization")(t)
    return keras.Model(tok, L.Dense(2, name="dense_1")(t))


class TorchRnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.embedding = nn.Embedding(VOCAB, 4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.gru = nn.GRU(6, 5, batch_first=True)
        self.bidirectional = nn.LSTM(5, 3, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(6, 8)
        self.layer_normalization = nn.LayerNorm(8, eps=1e-3)
        self.dense_1 = nn.Linear(8, 2)

    def forward(self, tok: torch.Tensor) -> torch.Tensor:
        t, _ = self.lstm(self.embedding(tok))
        t, _ = self.gru(t)
        _, (h, _) = self.bidirectional(t)
        t = torch.cat([h[0], h[1]], dim=1)  # Keras Bidirectional concatenates forward, backward
        return self.dense_1(self.layer_normalization(self.dense(t)))


def _random_torch(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_torch_to_keras_rnn_weights_h5(cli_run, tmp_path: Path) -> None:
    net = TorchRnn()
    _random_torch(net, 3)
    src = tmp_path / "net.pt"
    torch.save(net.state_dict(), src)  # read by weightvault's safe (non-executing) PyTorch reader
    dst = tmp_path / "net.weights.h5"
    # The Bidirectional copies (bidirectional/forward_lstm/...) go to Keras 3's
    # forward_layer/backward_layer groups without any path hints.
    code, out, _ = cli_run(
        "convert", src, dst, "--rules", "torch-to-keras", "--to", "keras", "--hint", "embedding=embedding"
    )
    assert code == 0, out
    model = build_keras_rnn()
    model.load_weights(dst)
    tok = np.random.default_rng(4).integers(0, VOCAB, (3, STEPS)).astype("int32")
    expected = _torch_out_rnn(net, tok)
    np.testing.assert_allclose(np.asarray(model(tok, training=False)), expected, rtol=RTOL, atol=ATOL)


def _torch_out_rnn(net: torch.nn.Module, tok: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(tok).long()).numpy()


class TorchConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv2d = nn.Conv2d(3, 8, 3)
        self.batch_normalization = nn.BatchNorm2d(8, eps=1e-3)
        self.depthwise_conv2d = nn.Conv2d(8, 16, 3, groups=8)
        self.dense = nn.Linear(16, 4)

    def forward(self, img_nhwc: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_conv2d(self.batch_normalization(self.conv2d(img_nhwc.permute(0, 3, 1, 2))))
        return self.dense(x.mean(dim=(2, 3)))


def build_keras_conv() -> keras.Model:
    L = keras.layers
    img = keras.Input(IMG)
    x = L.Conv2D(8, 3, name="conv2d")(img)
    x = L.BatchNormalization(name="batch_normalization")(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise_conv2d")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(img, L.Dense(4, name="dense")(x))


@pytest.mark.parametrize("dst_name", ["net.weights.h5", "net.h5"])
def test_torch_to_keras_conv_bn(cli_run, tmp_path: Path, dst_name: str) -> None:
    net = TorchConv()
    _random_torch(net, 5)
    net.batch_normalization.running_mean.copy_(torch.randn(8) * 0.5)
    net.batch_normalization.running_var.copy_(torch.rand(8) + 0.5)
    src = tmp_path / "net.safetensors"
    weightvault.save(net.state_dict(), src)
    dst = tmp_path / dst_name
    code, out, _ = cli_run(
        "convert", src, dst, "--rules", "torch-to-keras", "--to", "keras",
        "--hint", "conv2d=conv", "--hint", "depthwise_conv2d=depthwise:2", "--json",
    )  # fmt: skip
    assert code == 0, out
    doc = json.loads(out)
    assert "batch_normalization.num_batches_tracked" in doc["dropped"]
    model = build_keras_conv()
    model.load_weights(dst)
    img = np.random.default_rng(6).normal(size=(2, *IMG)).astype("float32")
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(np.asarray(model(img, training=False)), expected, rtol=RTOL, atol=ATOL)


def test_torch_4d_weight_without_hint_is_ambiguous(tmp_path: Path) -> None:
    src = tmp_path / "net.safetensors"
    weightvault.save(TorchConv().state_dict(), src)
    with pytest.raises(AmbiguousLayoutError) as err:
        weightvault.convert(src, tmp_path / "x.weights.h5", rules="torch-to-keras", dry_run=True)
    assert "'conv2d'" in str(err.value)
    assert "--hint conv2d=conv" in err.value.hint


def test_keras_torch_round_trip_is_exact(keras_files, tmp_path: Path) -> None:
    """keras -> torch -> keras reproduces every variable bit for bit (LSTM bias_hh is zero)."""
    src = keras_files["dir"] / "m.keras"
    weightvault.convert(src, tmp_path / "t.safetensors", rules="keras-to-torch")
    weightvault.convert(
        tmp_path / "t.safetensors",
        tmp_path / "back.safetensors",
        rules="torch-to-keras",
        hints={"conv": "conv", "dw": "depthwise:2", "emb": "embedding", "img_fc": "flatten:4,4,16"},
    )
    with weightvault.open(src) as a, weightvault.open(tmp_path / "back.safetensors") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for name in a.keys():
            np.testing.assert_array_equal(a.get(name), b.get(name), err_msg=name)


# -- separable and transposed convolutions -----------------------------------------------------------


class TorchSepUp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.sep = nn.Module()
        self.sep.depthwise = nn.Conv2d(3, 6, 3, groups=3, bias=False)  # depth_multiplier 2
        self.sep.pointwise = nn.Conv2d(6, 5, 1)
        self.up = nn.ConvTranspose2d(5, 4, 3, stride=2)
        self.conv1 = nn.Conv1d(4, 2, 2)

    def forward(self, img_nhwc: torch.Tensor) -> torch.Tensor:
        x = self.up(self.sep.pointwise(self.sep.depthwise(img_nhwc.permute(0, 3, 1, 2))))
        x = x.mean(dim=3)  # (B, C, H): a 1-D signal over H
        return self.conv1(x).permute(0, 2, 1)


def test_separable_transposed_and_1d_convolutions(cli_run, tmp_path: Path) -> None:
    L = keras.layers
    img = keras.Input(IMG)
    x = L.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(img)
    x = L.Conv2DTranspose(4, 3, strides=2, name="up")(x)
    x = L.Lambda(lambda t: keras.ops.mean(t, axis=2))(x)  # (B, H, C)
    model = keras.Model(img, L.Conv1D(2, 2, name="conv1")(x))
    _randomise(model, 7)
    model.save(tmp_path / "m.keras")
    dst = tmp_path / "t.safetensors"
    code, out, _ = cli_run("convert", tmp_path / "m.keras", dst, "--rules", "keras-to-torch")
    assert code == 0, out
    net = TorchSepUp()
    _load_strict(net, dst)
    img_in = np.random.default_rng(8).normal(size=(2, *IMG)).astype("float32")
    net.eval()
    with torch.no_grad():
        got = net(torch.from_numpy(img_in)).numpy()
    np.testing.assert_allclose(got, np.asarray(model(img_in)), rtol=RTOL, atol=ATOL)


def test_torch_stacked_gru_to_two_keras_layers(cli_run, tmp_path: Path) -> None:
    """nn.GRU(num_layers=2) becomes Keras layers gru and gru_1 (Keras' own names for two GRUs)."""
    gru = torch.nn.GRU(4, 5, num_layers=2, batch_first=True)
    holder = torch.nn.Module()
    holder.gru = gru
    _random_torch(holder, 9)
    src = tmp_path / "gru.pt"
    torch.save(holder.state_dict(), src)
    dst = tmp_path / "gru.weights.h5"
    code, out, _ = cli_run("convert", src, dst, "--rules", "torch-to-keras")
    assert code == 0, out
    L = keras.layers
    inp = keras.Input((STEPS, 4))
    model = keras.Model(inp, L.GRU(5, name="gru_1")(L.GRU(5, return_sequences=True, name="gru")(inp)))
    model.load_weights(dst)
    x = np.random.default_rng(10).normal(size=(2, STEPS, 4)).astype("float32")
    with torch.no_grad():
        expected = gru(torch.from_numpy(x))[0][:, -1].numpy()
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=RTOL, atol=ATOL)


# -- Dense after Flatten, inferred from the model config ----------------------------------------------


def _flatten_model(variant: str) -> tuple[keras.Model, torch.nn.Module]:
    """A Keras Sequential Conv2D -> pool -> Flatten -> Dense and its NCHW PyTorch twin."""
    L, nn = keras.layers, torch.nn
    if variant == "valid":
        layers = [L.Conv2D(4, 3, name="conv"), L.MaxPooling2D(2, name="pool"), L.Flatten(name="flat"), L.Dense(5, name="fc")]
        body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2))
        features = 3 * 3 * 4
    else:  # "same" padding, a pooling stride of its own and a Dropout after the Flatten
        layers = [
            L.Conv2D(6, 3, padding="same", name="conv"),  # 8x8x6
            L.MaxPooling2D(3, strides=2, name="pool"),  # 3x3x6
            L.Flatten(name="flat"),
            L.Dropout(0.5, name="drop"),
            L.Dense(5, name="fc"),
        ]
        body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(3, stride=2))
        features = 3 * 3 * 6
    model = keras.Sequential([keras.Input(IMG), *layers], name="net")
    _randomise(model, 11)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = body[0]
            self.pool = body[1]
            self.fc = nn.Linear(features, 5)

        def forward(self, img_nhwc: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.conv(img_nhwc.permute(0, 3, 1, 2))).flatten(1))

    return model, Net()


@pytest.mark.parametrize("variant", ["valid", "same-strided"])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_dense_after_flatten_needs_no_hint_with_a_config(cli_run, tmp_path: Path, variant: str, suffix: str) -> None:
    model, net = _flatten_model(variant)
    src = tmp_path / f"m{suffix}"
    model.save(src)  # .h5: legacy file whose config records no layer shapes: computed from the input
    img = np.random.default_rng(12).normal(size=(3, *IMG)).astype("float32")
    expected = np.asarray(model(img, training=False))
    mid = tmp_path / "t.safetensors"
    # legacy files name Sequential variables net/conv/kernel
    code, out, _ = cli_run("convert", src, mid, "--rules", "keras-to-torch", "--rename", r"^net\.=")
    assert code == 0, out
    _load_strict(net, mid)
    net.eval()
    with torch.no_grad():
        got = net(torch.from_numpy(img)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # and back: torch-to-keras takes the same flatten:H,W,C hint (the shape before the Flatten)
    shape = model.get_layer("flat").input.shape[1:]
    # .keras: the Keras 3 group layout travelled in the metadata; .h5: legacy files load by layer order
    back = tmp_path / ("back.weights.h5" if suffix == ".keras" else "back.h5")
    code, out, _ = cli_run(
        "convert", mid, back, "--rules", "torch-to-keras", "--hint", "conv=conv", "--hint", f"fc=flatten:{','.join(map(str, shape))}"
    )
    assert code == 0, out
    fresh, _ = _flatten_model(variant)
    fresh.load_weights(back)
    np.testing.assert_allclose(np.asarray(fresh(img, training=False)), expected, rtol=1e-5, atol=1e-5)


def test_weights_h5_without_config_keeps_keras_order_unless_hinted(tmp_path: Path) -> None:
    """No config, no shape: the kernel is copied as Keras stores it (a PyTorch model flattening
    channels-last matches); the NCHW twin needs the hint."""
    model, net = _flatten_model("valid")
    model.save_weights(tmp_path / "m.weights.h5")
    plain = weightvault.convert(tmp_path / "m.weights.h5", tmp_path / "p.safetensors", rules="keras-to-torch", hints={"conv": "conv"})
    assert [r["transforms"] for r in plain.to_dict()["tensors"] if r["target"] == "fc.weight"] == ["transpose(perm=[1, 0])"]
    weightvault.convert(tmp_path / "m.weights.h5", tmp_path / "h.safetensors", rules="keras-to-torch", hints={"conv": "conv", "fc": "flatten:3,3,4"})
    _load_strict(net, tmp_path / "h.safetensors")
    img = np.random.default_rng(13).normal(size=(2, *IMG)).astype("float32")
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(img)).numpy(), np.asarray(model(img)), rtol=1e-5, atol=1e-5)


def test_flatten_of_unknown_shape_asks_for_a_hint(tmp_path: Path) -> None:
    L = keras.layers
    # Reshape: a layer whose output shape the rules do not compute (the legacy config has no shapes)
    model = keras.Sequential(
        [keras.Input(IMG), L.Conv2D(4, 3, name="conv"), L.Reshape((6, 6, 4), name="same"), L.Flatten(name="flat"), L.Dense(2, name="fc")],
        name="net",
    )
    model.save(tmp_path / "m.h5")
    with pytest.raises(AmbiguousLayoutError) as err:
        weightvault.convert(tmp_path / "m.h5", tmp_path / "x.safetensors", rules="keras-to-torch", dry_run=True)
    assert "net/fc=flatten:H,W,C" in err.value.hint and "net/fc=dense" in err.value.hint
    report = weightvault.convert(
        tmp_path / "m.h5", tmp_path / "x.safetensors", rules="keras-to-torch", hints={"net/fc": "flatten:6,6,4"}, dry_run=True
    )
    assert any(r["target"] == "net.fc.weight" for r in report.to_dict()["tensors"])


def test_torch_to_keras_flatten_hint_checks_the_size(tmp_path: Path) -> None:
    src = tmp_path / "l.safetensors"
    weightvault.save({"fc.weight": np.zeros((5, 36), np.float32), "fc.bias": np.zeros(5, np.float32)}, src)
    with pytest.raises(AmbiguousLayoutError, match="36"):
        weightvault.convert(src, tmp_path / "x.weights.h5", rules="torch-to-keras", hints={"fc": "flatten:4,4,4"}, dry_run=True)


# -- BatchNormalization with center=False / scale=False -----------------------------------------------


def _bn_model() -> keras.Model:
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input(IMG),
            L.Conv2D(4, 3, name="conv"),
            L.BatchNormalization(center=False, name="bn1"),
            L.BatchNormalization(scale=False, name="bn2"),
            L.BatchNormalization(center=False, scale=False, name="bn3"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(3, name="fc"),
        ],
        name="net",
    )
    _randomise(model, 21)
    return model


class TorchBn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4, eps=1e-3)
        self.bn2 = nn.BatchNorm2d(4, eps=1e-3)
        self.bn3 = nn.BatchNorm2d(4, eps=1e-3)
        self.fc = nn.Linear(4, 3)

    def forward(self, img_nhwc: torch.Tensor) -> torch.Tensor:
        x = self.bn3(self.bn2(self.bn1(self.conv(img_nhwc.permute(0, 3, 1, 2)))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def bn_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("bn")
    model = _bn_model()
    model.save(d / "m.keras")
    model.save(d / "m.h5")
    model.save_weights(d / "m.weights.h5")
    img = np.random.default_rng(22).normal(size=(2, *IMG)).astype("float32")
    return {"dir": d, "img": img, "expected": np.asarray(model(img, training=False))}


def _torch_bn_out(net: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(img)).numpy()


@pytest.mark.parametrize("source", ["m.keras", "m.h5"])
def test_batchnorm_without_center_or_scale_to_torch(bn_files, tmp_path: Path, source: str) -> None:
    dst = tmp_path / "t.safetensors"
    report = weightvault.convert(bn_files["dir"] / source, dst, rules="keras-to-torch", rename=[(r"^net\.", "")])
    notes = {r["target"]: r["note"] for r in report.to_dict()["tensors"]}
    assert "beta not stored" in notes["bn1.bias"] and "gamma not stored" in notes["bn2.weight"]
    net = TorchBn()
    _load_strict(net, dst)
    assert torch.equal(net.bn1.bias, torch.zeros(4)) and torch.equal(net.bn2.weight, torch.ones(4))
    assert torch.equal(net.bn3.weight, torch.ones(4)) and torch.equal(net.bn3.bias, torch.zeros(4))
    np.testing.assert_allclose(_torch_bn_out(net, bn_files["img"]), bn_files["expected"], rtol=1e-5, atol=1e-5)


def test_batchnorm_weights_h5_needs_the_flag_hint(bn_files, tmp_path: Path) -> None:
    """A Keras 3 .weights.h5 stores a 3-variable BatchNorm by position: center=False and
    scale=False cannot be told apart without the config, so the rules ask."""
    src = bn_files["dir"] / "m.weights.h5"
    with pytest.raises(AmbiguousLayoutError, match="center=False") as err:
        weightvault.convert(src, tmp_path / "x.safetensors", rules="keras-to-torch", hints={"conv": "conv"}, dry_run=True)
    assert "batchnorm:center=false" in err.value.hint
    hints = {"conv": "conv", "bn1": "batchnorm:center=false", "bn2": "batchnorm:scale=false"}
    weightvault.convert(src, tmp_path / "t.safetensors", rules="keras-to-torch", hints=hints)
    net = TorchBn()
    _load_strict(net, tmp_path / "t.safetensors")
    np.testing.assert_allclose(_torch_bn_out(net, bn_files["img"]), bn_files["expected"], rtol=1e-5, atol=1e-5)


def test_batchnorm_without_center_or_scale_round_trips(bn_files, tmp_path: Path) -> None:
    """keras -> torch -> keras: the Keras config travels in the metadata, so torch-to-keras knows
    which of PyTorch's weight/bias the Keras layers lack and drops them (they are ones/zeros)."""
    mid = tmp_path / "t.safetensors"
    weightvault.convert(bn_files["dir"] / "m.keras", mid, rules="keras-to-torch")
    back = tmp_path / "back.weights.h5"
    report = weightvault.convert(mid, back, rules="torch-to-keras", hints={"conv": "conv"})
    dropped = report.to_dict()["dropped"]
    assert {"bn1.bias", "bn2.weight", "bn3.weight", "bn3.bias"} <= set(dropped)
    model = _bn_model()
    for v in model.weights:
        v.assign(np.zeros(v.shape, "float32"))
    model.load_weights(back)
    np.testing.assert_allclose(np.asarray(model(bn_files["img"], training=False)), bn_files["expected"], rtol=1e-6, atol=1e-6)


def test_torch_batchnorm_to_keras_without_center_refuses_a_real_bias(bn_files, tmp_path: Path) -> None:
    net = TorchBn()
    _random_torch(net, 23)
    src = tmp_path / "net.safetensors"
    weightvault.save(net.state_dict(), src)
    hints = {"conv": "conv", "bn1": "batchnorm:center=false", "bn2": "batchnorm:scale=false", "bn3": "batchnorm:center=false,scale=false"}
    with pytest.raises(AmbiguousLayoutError, match="bn1.bias"):
        weightvault.convert(src, tmp_path / "x.weights.h5", rules="torch-to-keras", hints=hints)
    assert not (tmp_path / "x.weights.h5").exists()
    with torch.no_grad():  # now the weights are exactly what the Keras layers imply
        net.bn1.bias.zero_()
        net.bn2.weight.fill_(1.0)
        net.bn3.weight.fill_(1.0)
        net.bn3.bias.zero_()
        for bn in (net.bn1, net.bn2, net.bn3):
            bn.running_mean.copy_(torch.randn(4) * 0.3)
            bn.running_var.copy_(torch.rand(4) + 0.5)
    weightvault.save(net.state_dict(), src)
    dst = tmp_path / "net.h5"  # legacy layout: loaded by layer order
    weightvault.convert(src, dst, rules="torch-to-keras", hints=hints)
    model = _bn_model()
    model.load_weights(dst)
    img = bn_files["img"]
    np.testing.assert_allclose(np.asarray(model(img, training=False)), _torch_bn_out(net, img), rtol=1e-5, atol=1e-5)


# -- torch-to-keras --template model.weights.h5: layout and kinds from a Keras-written file ----------


class _TorchNet(torch.nn.Module):
    """Interleaved classes (conv, depthwise, batchnorm, dense): only the template tells a
    depthwise kernel from a conv one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.dw = torch.nn.Conv2d(4, 8, 3, groups=4)
        self.head = torch.nn.Linear(8, 5)
        self.out = torch.nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(torch.relu(self.bn(self.stem(x))))
        return self.out(torch.relu(self.head(h.mean(dim=(2, 3)))))


def _keras_net():  # noqa: ANN202
    return keras.Sequential(
        [
            keras.Input((9, 9, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(epsilon=1e-5),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="relu"),
            keras.layers.Dense(2),
        ]
    )


def test_torch_to_keras_with_template(cli_run, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _TorchNet()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    net.eval()
    src = tmp_path / "net.pt"
    torch.save(net.state_dict(), src)
    template = tmp_path / "template.weights.h5"
    _keras_net().save_weights(template)
    dst = tmp_path / "out.weights.h5"
    code, out, err = cli_run("convert", src, dst, "--rules", "torch-to-keras", "--template", template)
    assert code == 0, err
    model = _keras_net()
    model.load_weights(dst)
    x = np.random.default_rng(1).normal(size=(2, 3, 9, 9)).astype("float32")
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = model.predict(x.transpose(0, 2, 3, 1), verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_torch_to_keras_template_of_another_model(cli_run, tmp_path: Path) -> None:
    src = tmp_path / "net.pt"
    torch.save(_TorchNet().state_dict(), src)
    template = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save_weights(template)
    code, _, err = cli_run("convert", src, tmp_path / "o.weights.h5", "--rules", "torch-to-keras", "--template", template)
    assert code != 0 and "stem" in err and "same model" in err
