"""``torch.export.save`` archives (``.pt2``): the ``torch_export`` format.

Every archive here is written by torch 2.13's own ``torch.export.export`` + ``torch.export.save``;
what weightvault reads is compared bit for bit with what ``torch.export.load`` gives (values,
strides, storage offsets, storage sharing). The hostile cases start from such an archive and
rewrite its zip.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import weightvault
from weightvault.cli import cli as cli_main
from weightvault.errors import WeightVaultError
from weightvault.formats.torch_export import TorchExportReader

torch = pytest.importorskip("torch")
nn = torch.nn


class Net(nn.Module):
    """Linear, Conv, BatchNorm, a transposed (strided) buffer, views of one storage, bf16/fp16
    parameters and a tensor constant that is a view at an offset of a larger storage."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.bn.running_mean.uniform_()
        self.register_buffer("tbuf", torch.arange(6.0).reshape(2, 3).t())
        base = torch.arange(10, dtype=torch.float64)
        self.register_buffer("lo", base[:6])
        self.register_buffer("hi", base[4:])
        self.bf16 = nn.Parameter(torch.randn(3, 5).to(torch.bfloat16))
        self.fp16 = nn.Parameter(torch.randn(2, 2).to(torch.float16))
        self.const = torch.randn(10)[2:7]

    def forward(self, x: Any, y: Any) -> Any:
        z = self.bn(self.conv(y)).sum() + self.tbuf.sum() + (self.lo.sum() + self.hi.sum()).float()
        return self.fc(x) + z + self.bf16.float().sum() + self.fp16.float().sum() + self.const.sum()


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x: Any) -> Any:
        return self.b(self.a(x))


def save_pt2(model: nn.Module, args: tuple[Any, ...], path: Path) -> Path:
    ep = torch.export.export(model.eval(), args)
    with warnings.catch_warnings():
        # views of a storage no tensor covers whole: torch saves the whole storage and says so
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(ep, path)
    return path


def net_pt2(tmp_path: Path, name: str = "net.pt2") -> Path:
    return save_pt2(Net(), (torch.randn(2, 4), torch.randn(1, 2, 5, 5)), tmp_path / name)


def tied_pt2(tmp_path: Path) -> Path:
    return save_pt2(Tied(), (torch.randn(2, 4),), tmp_path / "tied.pt2")


def torch_values(path: Path) -> dict[str, Any]:
    ep = torch.export.load(path)
    return {**{k: v.detach() for k, v in ep.state_dict.items()}, **ep.constants}


def as_bytes(t: Any) -> bytes:
    """A tensor's values in C order as raw bytes (bf16 has no numpy dtype in torch)."""
    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


# -- what torch writes, read back --------------------------------------------------------------------
def test_every_tensor_equals_torch_export_load_bit_for_bit(tmp_path: Path) -> None:
    path = net_pt2(tmp_path)
    expected = torch_values(path)
    with weightvault.open(path) as r:
        assert r.format == "torch_export"
        assert sorted(r.keys()) == sorted(expected)
        for name, t in expected.items():
            arr = r.get(name)
            info = r.info(name)
            assert arr.shape == tuple(t.shape), name
            assert str(t.dtype).removeprefix("torch.") == info.dtype == str(arr.dtype), name
            assert np.ascontiguousarray(arr).tobytes() == as_bytes(t), name
            assert info.extra["storage_offset"] == t.storage_offset(), name
            assert info.extra.get(
                "stride", list(t.stride()) if t.is_contiguous() else None
            ) == list(t.stride())
        kinds = {n: r.info(n).extra["kind"] for n in r}
        assert kinds["fc.weight"] == "parameter" and kinds["bn.running_mean"] == "buffer"
        assert kinds["const"] == "constant"
        assert r.metadata["torch_export"]["programs"] == ["model"]
        assert r.skipped == {}


def test_strided_and_offset_views_keep_torch_layout(tmp_path: Path) -> None:
    path = net_pt2(tmp_path)
    with weightvault.open(path) as r:
        tbuf = r.info("tbuf")
        assert tbuf.extra["stride"] == [1, 3]  # the transposed buffer stays strided
        assert r.byte_span("tbuf") is None  # not contiguous: no verbatim span
        lo, hi = r.info("lo").extra, r.info("hi").extra
        assert lo["record"] == hi["record"] and (lo["storage_offset"], hi["storage_offset"]) == (
            0,
            4,
        )
        assert np.array_equal(r.get("hi"), np.arange(4, 10, dtype=np.float64))
        assert np.shares_memory(r.get("lo"), r.get("hi"))  # views of one record, as in torch
        assert r.info("const").extra["storage_offset"] == 2


def test_tied_weights_are_aliases_and_stay_tied_in_a_pt(tmp_path: Path) -> None:
    path = tied_pt2(tmp_path)
    with weightvault.open(path) as r:
        assert r.aliases == {"b.weight": "a.weight"}
        assert r.info("a.weight").extra["record"] == r.info("b.weight").extra["record"]
    out = tmp_path / "tied.pt"
    weightvault.convert(path, out)
    sd = torch.load(out)
    assert sd["a.weight"].data_ptr() == sd["b.weight"].data_ptr()
    assert torch.equal(sd["a.weight"], torch_values(path)["a.weight"])
    loaded = weightvault.load(path, framework="torch")
    assert loaded["a.weight"].data_ptr() == loaded["b.weight"].data_ptr()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_convert_carries_every_value(tmp_path: Path, suffix: str) -> None:
    path = net_pt2(tmp_path)
    out = tmp_path / f"out{suffix}"
    weightvault.convert(path, out)
    expected = torch_values(path)
    with weightvault.open(out) as r:
        for name, t in expected.items():
            assert np.ascontiguousarray(r.get(name)).tobytes() == as_bytes(t), name


def test_cli_ls_show_stats_and_convert_to_native(tmp_path: Path) -> None:
    path = net_pt2(tmp_path)
    run = CliRunner().invoke
    listed = run(cli_main, ["ls", str(path)])
    assert listed.exit_code == 0, listed.output
    assert "bn.running_var" in listed.output and "bfloat16" in listed.output
    shown = run(cli_main, ["show", str(path), "hi"])
    assert shown.exit_code == 0 and "9." in shown.output, shown.output
    stats = run(cli_main, ["stats", str(path)])
    assert stats.exit_code == 0 and "conv.weight" in stats.output
    native = tmp_path / "native"
    done = run(cli_main, ["convert", str(path), str(native), "--to", "native"])
    assert done.exit_code == 0, done.output
    with weightvault.open(native) as r:
        assert np.array_equal(r.get("tbuf"), np.arange(6.0, dtype=np.float32).reshape(2, 3).T)


def test_a_deflated_archive_reads_the_same(tmp_path: Path) -> None:
    """torch stores members uncompressed; a re-zipped archive still loads in torch, and here."""
    path = net_pt2(tmp_path)
    zipped = rewrite(path, tmp_path / "deflated.pt2", compress=zipfile.ZIP_DEFLATED)
    with weightvault.open(path) as a, weightvault.open(zipped) as b:
        for name in a:
            assert np.array_equal(a.get(name), b.get(name)), name
            assert b.byte_span(name) is None


def test_detected_by_content_under_another_name(tmp_path: Path) -> None:
    path = net_pt2(tmp_path)
    other = tmp_path / "model.bin"
    other.write_bytes(path.read_bytes())
    with weightvault.open(other) as r:
        assert r.format == "torch_export"


# -- hostile archives ----------------------------------------------------------------------------
def rewrite(
    src: Path,
    dst: Path,
    *,
    edit: dict[str, Any] | None = None,
    add: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    compress: int = zipfile.ZIP_STORED,
) -> Path:
    """Copy an archive member by member; ``edit`` maps a member's path under the root to new bytes
    or to a function of its parsed JSON."""
    edit = edit or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compress) as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel in drop:
                continue
            data = zin.read(info)
            if rel in edit:
                change = edit[rel]
                data = (
                    change
                    if isinstance(change, bytes)
                    else json.dumps(change(json.loads(data))).encode()
                )
            zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(name if name.startswith(("/", root)) else f"{root}/{name}", data)
    return dst


WEIGHTS = "data/weights/model_weights_config.json"
CONSTANTS = "data/constants/model_constants_config.json"


def set_meta(fqn: str, **changes: Any) -> Any:
    def change(cfg: dict[str, Any]) -> dict[str, Any]:
        entry = cfg["config"][fqn]
        for key, value in changes.items():
            if key in ("path_name", "use_pickle", "is_param"):
                entry[key] = value
            else:
                entry["tensor_meta"][key] = value
        return cfg

    return change


def refused(path: Path, match: str | None, tensor: str | None = None) -> WeightVaultError:
    with pytest.raises(WeightVaultError, match=match) as info, weightvault.open(path) as r:
        for name in r:
            r.get(name)
    assert info.value.path is not None and Path(info.value.path).name == path.name
    if tensor is not None:
        assert info.value.tensor == tensor
    return info.value


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"storage_offset": {"as_int": 10}}, "reaches element"),
        ({"storage_offset": {"as_int": 1}}, "reaches element 12 of"),  # one element past the end
        ({"sizes": [{"as_int": 4}, {"as_int": 4}]}, "reaches element"),
        ({"strides": [{"as_int": 5}, {"as_int": 1}]}, "reaches element"),
        (
            {
                "sizes": [{"as_int": 1 << 40}, {"as_int": 1 << 40}],
                "strides": [{"as_int": 0}, {"as_int": 0}],
            },
            "would expand",
        ),
        ({"sizes": [{"as_int": 1 << 62}, {"as_int": 1 << 62}]}, "reaches element"),
        ({"strides": [{"as_int": -4}, {"as_int": 1}]}, "not a non-negative integer"),
        ({"sizes": [{"as_expr": {"expr_str": "s0"}}, {"as_int": 4}]}, "not a concrete integer"),
        ({"dtype": 99}, "not a torch ScalarType"),
        (
            {"dtype": 8, "sizes": [{"as_int": 1}, {"as_int": 1}], "path_name": "<fc.bias>"},
            "not a whole",
        ),
        ({"layout": 1}, "not strided"),
        ({"sizes": [{"as_int": 1}] * 65, "strides": [{"as_int": 1}] * 65}, "dimensions"),
        ({"path_name": "../weights/weight_1"}, "not a plain member name"),
        ({"path_name": "weight_99"}, "not in the archive"),
    ],
)
def test_hostile_tensor_meta_is_refused_by_name(
    tmp_path: Path, changes: dict[str, Any], match: str
) -> None:
    src = net_pt2(tmp_path)
    if changes.get("path_name") == "<fc.bias>":  # fc.bias's 12 bytes: 1.5 float64 elements
        with zipfile.ZipFile(src) as z:
            config = json.loads(z.read(f"net/{WEIGHTS}"))["config"]
        changes = {**changes, "path_name": config["fc.bias"]["path_name"]}
    bad = rewrite(src, tmp_path / "bad.pt2", edit={WEIGHTS: set_meta("fc.weight", **changes)})
    refused(bad, match, tensor="fc.weight")


def test_a_record_read_with_two_dtypes_is_refused(tmp_path: Path) -> None:
    src = net_pt2(tmp_path)

    def change(cfg: dict[str, Any]) -> dict[str, Any]:
        cfg["config"]["fc.bias"]["path_name"] = cfg["config"]["fc.weight"]["path_name"]
        cfg["config"]["fc.bias"]["tensor_meta"]["dtype"] = 3  # int16 over float32 bytes
        return cfg

    refused(
        rewrite(src, tmp_path / "bad.pt2", edit={WEIGHTS: change}), "is read as", tensor="fc.bias"
    )


@pytest.mark.parametrize("name", ["m/../evil", "/etc/passwd", "m/a\\..\\b"])
def test_member_names_leaving_the_archive_are_refused(tmp_path: Path, name: str) -> None:
    src = net_pt2(tmp_path)
    bad = rewrite(src, tmp_path / "bad.pt2", add={name: b"x"})
    refused(bad, "outside the archive")


def test_truncated_and_damaged_zips_are_refused(tmp_path: Path) -> None:
    src = net_pt2(tmp_path)
    data = src.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 100):
        p = tmp_path / f"cut{cut}.pt2"
        p.write_bytes(data[:cut])
        refused(p, None)
    # a central directory that points past a member's bytes
    short = tmp_path / "short.pt2"
    blob = bytearray(data)
    eocd = blob.rindex(b"PK\x05\x06")
    first = int.from_bytes(blob[eocd + 16 : eocd + 20], "little")  # the first central entry
    assert blob[first : first + 4] == b"PK\x01\x02"
    blob[first + 20 : first + 24] = (1 << 30).to_bytes(4, "little")
    blob[first + 24 : first + 28] = (1 << 30).to_bytes(4, "little")
    short.write_bytes(bytes(blob))
    refused(short, None)


def test_json_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = net_pt2(tmp_path)
    deep = rewrite(src, tmp_path / "deep.pt2", edit={WEIGHTS: b"[" * 200_000 + b"]" * 200_000})
    refused(deep, "nested too deeply")
    notjson = rewrite(src, tmp_path / "notjson.pt2", edit={WEIGHTS: b'{"config": '})
    refused(notjson, "not JSON")
    import weightvault.formats.torch_export as te

    monkeypatch.setattr(te, "MAX_CONFIG_BYTES", 1000)
    refused(src, "over the 1,000 cap")


def test_not_a_torch_export_archive(tmp_path: Path) -> None:
    src = net_pt2(tmp_path)
    refused(rewrite(src, tmp_path / "nofmt.pt2", drop=("archive_format",)), "archive_format")
    refused(
        rewrite(src, tmp_path / "nomodel.pt2", drop=("models/model.json",)), "no exported program"
    )
    refused(rewrite(src, tmp_path / "noconfig.pt2", drop=(WEIGHTS,)), "weights_config")
    refused(rewrite(src, tmp_path / "root.pt2", add={"/other/x": b"1"}), None)


def _payload(marker: Path) -> bytes:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Boom())


def test_pickled_payloads_are_never_run(tmp_path: Path) -> None:
    """A tensor subclass (use_pickle), a TorchScript object and an opaque object are pickles that
    torch.export.load would run: here they are listed as skipped, and convert refuses them by name."""
    src = net_pt2(tmp_path)
    marker = tmp_path / "ran"
    payload = _payload(marker)

    def constants(cfg: dict[str, Any]) -> dict[str, Any]:
        cfg["config"]["obj"] = {
            "path_name": "custom_obj_0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        cfg["config"]["opaque"] = {
            "path_name": "opaque_obj_0",
            "is_param": False,
            "use_pickle": True,
            "tensor_meta": None,
        }
        return cfg

    bad = rewrite(
        src,
        tmp_path / "pickles.pt2",
        edit={
            WEIGHTS: set_meta("fc.weight", use_pickle=True, path_name="weight_99"),
            CONSTANTS: constants,
        },
        add={
            "data/weights/weight_99": payload,
            "data/constants/custom_obj_0": payload,
            "data/constants/opaque_obj_0": payload,
        },
    )
    with weightvault.open(bad) as r:
        assert set(r.skipped) == {"fc.weight", "obj", "opaque"}
        assert "pickled tensor subclass" in r.skipped["fc.weight"]
        assert "TorchScript" in r.skipped["obj"]
        assert "fc.weight" not in r
        for name in r:
            r.get(name)
    with pytest.raises(WeightVaultError, match=r"fc\.weight"):
        weightvault.convert(bad, tmp_path / "out.safetensors")
    report = weightvault.convert(bad, tmp_path / "out2.safetensors", skip_unsupported=True)
    assert "fc.weight" in str(report.skipped)
    assert not marker.exists()
    # the payload really runs when unpickled: the marker proves the test would see it
    import pickle

    pickle.loads(payload)
    assert marker.exists()


def test_reader_closes_on_error_and_names_its_file(tmp_path: Path) -> None:
    src = net_pt2(tmp_path)
    bad = rewrite(src, tmp_path / "bad.pt2", edit={WEIGHTS: set_meta("conv.bias", dtype=99)})
    with pytest.raises(WeightVaultError) as info:
        TorchExportReader(bad)
    assert "bad.pt2" in str(info.value) and "conv.bias" in str(info.value)


def test_verify_checks_each_records_crc(tmp_path: Path) -> None:
    path = net_pt2(tmp_path)
    with weightvault.open(path) as r:
        result = r.verify()
        assert result.ok and result.checked == len(r.keys()) and result.unchecked == 0
        span = r.byte_span("fc.bias")
        assert span is not None
    blob = bytearray(path.read_bytes())
    blob[span.offset] ^= 0xFF  # one flipped byte inside fc.bias's record
    flipped = tmp_path / "flipped.pt2"
    flipped.write_bytes(bytes(blob))
    with weightvault.open(flipped) as r:
        result = r.verify()
    assert not result.ok and len(result.failures) == 1
    assert result.failures[0].startswith("fc.bias: CRC-32 of net/data/weights/")


def test_a_big_endian_archive_is_byte_swapped(tmp_path: Path) -> None:
    """torch writes each storage's bytes in the machine's order and says which in ``byteorder``;
    a big-endian archive (every record swapped element by element) reads the same values."""
    path = net_pt2(tmp_path)
    sizes: dict[str, int] = {}
    for folder, config in (("weights", WEIGHTS), ("constants", CONSTANTS)):
        with zipfile.ZipFile(path) as z:
            entries = json.loads(z.read(f"net/{config}"))["config"]
        for meta in entries.values():
            dtype = {7: 4, 8: 8, 5: 8, 6: 2, 13: 2}[meta["tensor_meta"]["dtype"]]
            sizes[f"data/{folder}/{meta['path_name']}"] = dtype
    edit: dict[str, Any] = {"byteorder": b"big"}
    with zipfile.ZipFile(path) as z:
        for rel, itemsize in sizes.items():
            raw = np.frombuffer(z.read(f"net/{rel}"), f"<u{itemsize}")
            edit[rel] = raw.astype(f">u{itemsize}").tobytes()
    big = rewrite(path, tmp_path / "big.pt2", edit=edit)
    with weightvault.open(path) as little, weightvault.open(big) as r:
        assert r.metadata["torch_export"]["byteorder"] == "big"
        for name in little:
            assert np.array_equal(r.get(name), little.get(name)), name
            assert r.get(name).dtype.byteorder in ("=", "|", "<"), name
        assert r.byte_span("fc.weight") is None  # the file's bytes are not the values' bytes


def test_an_archive_of_two_programs_names_the_second_by_its_program(tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import load_pt2, package_pt2

    body, head = nn.Linear(2, 2), nn.Linear(3, 1)
    path = tmp_path / "multi.pt2"
    package_pt2(
        path,
        exported_programs={
            "model": torch.export.export(body, (torch.randn(1, 2),)),
            "head": torch.export.export(head, (torch.randn(1, 3),)),
        },
    )
    loaded = load_pt2(path).exported_programs
    with weightvault.open(path) as r:
        assert r.keys() == ["weight", "bias", "head/weight", "head/bias"]
        assert r.metadata["torch_export"]["programs"] == ["model", "head"]
        assert r.info("head/weight").extra["model"] == "head"
        for program, prefix in (("model", ""), ("head", "head/")):
            for fqn, t in loaded[program].state_dict.items():
                assert r.get(prefix + fqn).tobytes() == as_bytes(t.detach()), fqn
