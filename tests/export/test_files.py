"""Each output format against its syntax rules (COE, MIF, $readmem, C via gcc, text, npy),
packing bit by bit, BRAM depth checks and the memory map."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import weightvault
from weightvault.errors import CheckpointExistsError, UnsupportedOperationError
from weightvault.export.layout import pack, unpack
from weightvault.export.numbers import quantize, to_stored

RESEARCH = {"dense_1.kernel": np.array([0.5, -0.5, -0.3984375, 0.99], np.float32)}


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "fc.weight": rng.uniform(-1, 1, (6, 5)).astype(np.float32),
        "fc.bias": rng.uniform(-1, 1, (6,)).astype(np.float32),
        "conv.weight": rng.uniform(-1, 1, (4, 1, 1, 3)).astype(np.float32),
    }


# -- COE ------------------------------------------------------------------------------------------
def _coe_check(text: str, radix: int) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(";")]
    assert lines[0] == f"memory_initialization_radix={radix};"
    assert lines[1] == "memory_initialization_vector="
    values = lines[2:]
    assert values[-1].endswith(";") and values[-1].count(";") == 1
    assert all(v.endswith(",") and ";" not in v for v in values[:-1])  # no early terminator
    return [v.rstrip(",;") for v in values]


def test_coe_matches_research_example(tmp_path: Path) -> None:
    weightvault.export_hw(RESEARCH, tmp_path / "o", file_format="coe", number="ap_fixed<8,1>")
    values = _coe_check((tmp_path / "o" / "dense_1.kernel.coe").read_text(), 16)
    assert values == ["40", "C0", "CD", "7F"]


@pytest.mark.parametrize(
    ("radix", "pattern"), [(2, r"[01]{16}"), (10, r"\d+"), (16, r"[0-9A-F]{4}")]
)
def test_coe_radixes(tmp_path: Path, radix: int, pattern: str) -> None:
    rep = weightvault.export_hw(
        _tensors(), tmp_path / "o", file_format="coe", number="Q1.15", radix=radix, one_memory="w"
    )
    values = _coe_check((tmp_path / "o" / "w.coe").read_text(), radix)
    assert len(values) == sum(t["count"] for t in rep.tensors)
    assert all(re.fullmatch(pattern, v) for v in values)
    assert all(0 <= int(v, radix) < 2**16 for v in values)  # unsigned patterns, no minus signs


# -- MIF ------------------------------------------------------------------------------------------
def test_mif_syntax_and_fill(tmp_path: Path) -> None:
    weightvault.export_hw(RESEARCH, tmp_path / "o", file_format="mif", number="Q1.7", bram_depth=8)
    text = (tmp_path / "o" / "dense_1.kernel.mif").read_text()
    body = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("--")]
    assert body[:5] == [
        "WIDTH=8;",
        "DEPTH=8;",
        "ADDRESS_RADIX=HEX;",
        "DATA_RADIX=HEX;",
        "CONTENT BEGIN",
    ]
    assert body[-1] == "END;"
    entries = body[5:-1]
    assert entries[:4] == ["0 : 40;", "1 : C0;", "2 : CD;", "3 : 7F;"]
    assert entries[4] == "[4..7] : 0;"
    assert all(
        re.fullmatch(r"(\[[0-9A-F]+\.\.[0-9A-F]+\]|[0-9A-F]+) : [0-9A-F]+;", e) for e in entries
    )


def test_mif_radixes(tmp_path: Path) -> None:
    for radix, name in [(2, "BIN"), (8, "OCT"), (10, "UNS")]:
        out = tmp_path / f"o{radix}"
        weightvault.export_hw(RESEARCH, out, file_format="mif", number="Q1.7", radix=radix)
        text = (out / "dense_1.kernel.mif").read_text()
        assert f"DATA_RADIX={name};" in text
        back = weightvault.import_hw(out, values="codes")["dense_1.kernel"]
        assert back.tolist() == [64, -64, -51, 127]


# -- $readmemh / $readmemb ------------------------------------------------------------------------
def test_readmemh_addresses_are_hex_word_indices(tmp_path: Path) -> None:
    rep = weightvault.export_hw(
        _tensors(),
        tmp_path / "o",
        file_format="mem",
        number="Q1.15",
        one_memory="weights",
        align=16,
    )
    text = (tmp_path / "o" / "weights.mem").read_text()
    assert "0x" not in text
    addrs = [int(m, 16) for m in re.findall(r"^@([0-9A-F]+)$", text, re.MULTILINE)]
    assert addrs == [t["base"] for t in rep.tensors]
    assert [t["base"] for t in rep.tensors] == [0, 32, 48]  # 30 words, aligned to 16
    data = [ln for ln in text.splitlines() if ln and not ln.startswith(("//", "@"))]
    assert all(re.fullmatch(r"[0-9A-F]{4}", d) for d in data)


def test_readmemb_binary_with_hex_addresses(tmp_path: Path) -> None:
    weightvault.export_hw(
        _tensors(), tmp_path / "o", file_format="hex", number="Q1.7", radix=2, one_memory="w"
    )
    text = (tmp_path / "o" / "w.hex").read_text()
    assert "$readmemb" in text
    data = [ln for ln in text.splitlines() if ln and not ln.startswith("//")]
    assert any(d.startswith("@") for d in data)
    assert all(re.fullmatch(r"@[0-9A-F]+|[01]{8}", d) for d in data)


# -- packing --------------------------------------------------------------------------------------
def test_packing_research_example(tmp_path: Path) -> None:
    x = {"v": np.array([1, -2, 3, -4], np.float32)}
    for order, word in [("lsb", "FC03FE01"), ("msb", "01FE03FC")]:
        out = tmp_path / order
        weightvault.export_hw(
            x, out, file_format="coe", number="ap_fixed<8,8>", lanes=4, lane_order=order
        )
        assert _coe_check((out / "v.coe").read_text(), 16) == [word]


@pytest.mark.parametrize("lane_order", ["lsb", "msb"])
@pytest.mark.parametrize(
    ("bits", "lanes", "width"), [(4, 2, 8), (5, 3, 16), (16, 5, 80), (12, 4, 48)]
)
def test_packing_bit_by_bit(bits: int, lanes: int, width: int, lane_order: str) -> None:
    rng = np.random.default_rng(bits * lanes)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), 23)
    stored = to_stored(codes, bits)
    words = pack(stored, bits, lanes, width, lane_order)
    assert len(words) == -(-23 // lanes)
    for k, word in enumerate(words):
        assert word < 2**width and word >> (lanes * bits) == 0  # unused high bits are zero
        for lane in range(lanes):
            i = k * lanes + lane
            slot = lane if lane_order == "lsb" else lanes - 1 - lane
            for b in range(bits):
                bit = (word >> (slot * bits + b)) & 1
                want = (int(stored[i]) >> b) & 1 if i < 23 else 0  # padding lanes are zero
                assert bit == want
    assert unpack(words, bits, lanes, 23, lane_order).tolist() == stored.tolist()


def test_int4_two_per_byte_like_cmsis(tmp_path: Path) -> None:
    # CMSIS-NN packs [1,-2,7,-8] as bytes E1 87 (element 2k in the low nibble)
    weightvault.export_hw(
        {"w": np.array([1, -2, 7, -8], np.float32)},
        tmp_path / "o",
        file_format="npy",
        number="ap_fixed<4,4>",
        lanes=2,
    )
    assert np.load(tmp_path / "o" / "w.npy").tolist() == [0xE1, 0x87]


def test_word_width_alone_packs_as_many_as_fit(tmp_path: Path) -> None:
    rep = weightvault.export_hw(
        {"w": np.zeros(10, np.float32)},
        tmp_path / "o",
        file_format="coe",
        number="Q1.7",
        word_width=32,
    )
    assert rep.tensors[0]["lanes"] == 4 and rep.tensors[0]["words"] == 3


def test_lanes_wider_than_word_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperationError, match="48-bit word"):
        weightvault.export_hw(_tensors(), tmp_path / "o", number="Q1.15", lanes=3, word_width=32)


# -- depth, memory map ----------------------------------------------------------------------------
def test_bram_depth_exceeded(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOperationError, match="needs 30 words but the BRAM depth is 16"):
        weightvault.export_hw(
            _tensors(), tmp_path / "o", file_format="coe", number="Q1.15", bram_depth=16
        )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt", ["coe", "mif", "mem"])
def test_a_memory_that_exactly_fills_the_bram_depth_is_accepted_one_more_word_is_not(
    tmp_path: Path, fmt: str
) -> None:
    # 48 words in one memory: depth 48 fits exactly (no padding), depth 47 is one short.
    weightvault.export_hw(
        _tensors(), tmp_path / "o", file_format=fmt, number="Q1.15", one_memory="w", bram_depth=48
    )
    back = weightvault.import_hw(tmp_path / "o")
    for name, value in _tensors().items():
        np.testing.assert_allclose(back[name], value, atol=2**-15)
    mmap = json.loads((tmp_path / "o" / "memory_map.json").read_text())
    assert [(m["depth"], m["used_words"]) for m in mmap["memories"]] == [(48, 48)]
    with pytest.raises(UnsupportedOperationError, match="needs 48 words but the BRAM depth is 47"):
        weightvault.export_hw(
            _tensors(),
            tmp_path / "p",
            file_format=fmt,
            number="Q1.15",
            one_memory="w",
            bram_depth=47,
        )


def test_bram_depth_pads_coe(tmp_path: Path) -> None:
    weightvault.export_hw(RESEARCH, tmp_path / "o", file_format="coe", number="Q1.7", bram_depth=16)
    values = _coe_check((tmp_path / "o" / "dense_1.kernel.coe").read_text(), 16)
    assert len(values) == 16 and values[4:] == ["00"] * 12


def test_memory_map_files(tmp_path: Path) -> None:
    rep = weightvault.export_hw(
        _tensors(),
        tmp_path / "o",
        file_format="coe",
        number="Q1.15",
        one_memory="weights",
        bram_depth=64,
    )
    mmap = json.loads((tmp_path / "o" / "memory_map.json").read_text())
    (mem,) = mmap["memories"]
    assert (mem["name"], mem["width"], mem["depth"], mem["used_words"]) == ("weights", 16, 64, 48)
    assert [(m["name"], m["base"], m["words"], m["shape"]) for m in mem["map"]] == [
        ("fc.weight", 0, 30, [6, 5]),
        ("fc.bias", 30, 6, [6]),
        ("conv.weight", 36, 12, [4, 1, 1, 3]),
    ]
    assert all(m["format"] == "Q1.15" for m in mem["map"])
    vh = (tmp_path / "o" / "memory_map.vh").read_text()
    assert "localparam integer FC_BIAS_BASE = 30;" in vh
    h = (tmp_path / "o" / "memory_map.h").read_text()
    assert "#define CONV_WEIGHT_BASE 0x24u" in h
    assert rep.memories[0]["map"] == mem["map"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointExistsError):
        weightvault.export_hw(RESEARCH, tmp_path / "o", number="Q1.7")
    assert (tmp_path / "o" / "precious.txt").read_text() == "keep me"
    # an earlier export is replaced
    weightvault.export_hw(RESEARCH, tmp_path / "e", number="Q1.7")
    weightvault.export_hw(RESEARCH, tmp_path / "e", number="Q1.15", file_format="mif")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "dense_1.kernel.mif",
        "export.json",
    ]


# -- C headers ------------------------------------------------------------------------------------
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def _compile_and_run(tmp_path: Path, header: Path, body: str, std: str = "") -> str:
    src = tmp_path / "main.c"
    src.write_text(
        f'#include <stdio.h>\n#include "{header.name}"\nint main(void) {{\n{body}\nreturn 0;\n}}\n'
    )
    exe = tmp_path / "main"
    cmd = [
        "gcc",
        "-Wall",
        "-Werror",
        "-I",
        str(header.parent),
        *([std] if std else []),
        str(src),
        "-o",
        str(exe),
        "-lm",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout


@needs_gcc
@pytest.mark.parametrize("number", ["Q1.15", "ap_fixed<12,3>", "int8", "int4", "UQ4.4", "float16"])
def test_c_header_compiles_and_holds_codes(tmp_path: Path, number: str) -> None:
    x = {"fc.weight": _tensors()["fc.weight"] * 3}
    affine = number.startswith("int")  # --per-channel is refused for fixed and float formats
    weightvault.export_hw(
        x,
        tmp_path / "o",
        file_format="c",
        number=number,
        per_channel=0 if affine else None,
        c_typedefs=True,
    )
    header = tmp_path / "o" / "fc.weight.h"
    subprocess.run(
        ["gcc", "-c", "-Wall", "-Werror", "-x", "c", str(header), "-o", str(tmp_path / "h.o")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    text = header.read_text()
    assert "WV_ALIGN(16) static const" in text
    assert "#define FC_WEIGHT_SIZE 30" in text
    printed = _compile_and_run(
        tmp_path,
        header,
        'for (unsigned i = 0; i < FC_WEIGHT_SIZE; i++) printf("%ld\\n", (long)fc_weight[i]);',
    )
    want = quantize(x["fc.weight"], number, axis=0).codes.ravel()
    assert [int(v) for v in printed.split()] == want.tolist()
    if number == "int8":
        scales = _compile_and_run(
            tmp_path, header, 'for (int i = 0; i < 6; i++) printf("%.9g\\n", fc_weight_scale[i]);'
        )
        np.testing.assert_array_equal(
            np.array(scales.split(), np.float32),
            quantize(x["fc.weight"], "int8", axis=0).scale.astype(np.float32),
        )
    if number.startswith("ap_fixed"):
        assert "typedef ap_fixed<12,3> fc_weight_t;" in text
        assert "12 bits signed two's complement, 9 fraction bits" in text


@needs_gcc
def test_c_header_float32_and_c99(tmp_path: Path) -> None:
    x = {"w": np.array([1.5, -0.1, np.inf, 3e-39], np.float32)}
    weightvault.export_hw(x, tmp_path / "o", file_format="c", number="float32")
    printed = _compile_and_run(
        tmp_path,
        tmp_path / "o" / "w.h",
        "union { float f; unsigned u; } v; for (int i = 0; i < 4; i++) "
        '{ v.f = w[i]; printf("%u\\n", v.u); }',
        std="-std=c99",
    )
    assert [int(v) for v in printed.split()] == x["w"].view(np.uint32).tolist()


@needs_gcc
def test_c_header_packed_memory_with_bases(tmp_path: Path) -> None:
    rep = weightvault.export_hw(
        _tensors(), tmp_path / "o", file_format="c", number="Q1.7", lanes=4, one_memory="rom"
    )
    header = tmp_path / "o" / "rom.h"
    printed = _compile_and_run(
        tmp_path,
        header,
        'printf("%d %d %d\\n", FC_BIAS_BASE, CONV_WEIGHT_BASE, ROM_WIDTH);\n'
        'for (int i = 0; i < ROM_DEPTH; i++) printf("%lu\\n", (unsigned long)rom[i]);',
    )
    first, *words = printed.splitlines()
    assert first == f"{rep.tensors[1]['base']} {rep.tensors[2]['base']} 32"
    codes = np.concatenate([quantize(v, "Q1.7").codes.ravel() for v in _tensors().values()])
    # every tensor starts a new word: rebuild the expected words per tensor
    expected = []
    for v in _tensors().values():
        expected += pack(to_stored(quantize(v, "Q1.7").codes.ravel(), 8), 8, 4, 32, "lsb")
    assert [int(w) for w in words] == expected
    assert codes.size == 30 + 6 + 12
    # and g++ accepts it too
    if shutil.which("g++"):
        subprocess.run(
            ["g++", "-std=c++11", "-c", "-x", "c++", str(header), "-o", str(tmp_path / "h.o")],
            check=True,
            capture_output=True,
            timeout=60,
        )


@needs_gcc
def test_memory_map_header_compiles(tmp_path: Path) -> None:
    weightvault.export_hw(
        _tensors(), tmp_path / "o", file_format="mem", number="Q1.15", one_memory="weights"
    )
    printed = _compile_and_run(
        tmp_path,
        tmp_path / "o" / "memory_map.h",
        'printf("%u %u\\n", FC_BIAS_BASE, CONV_WEIGHT_WORDS);',
    )
    assert printed.split() == ["30", "12"]


# -- text -----------------------------------------------------------------------------------------
def test_text_print_options(tmp_path: Path) -> None:
    x = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 16}
    weightvault.export_hw(x, tmp_path / "a", file_format="txt", number="Q4.12", precision=2)
    text = (tmp_path / "a" / "w.txt").read_text()
    assert "0.06" in text and "0.0625" not in text
    side = json.loads((tmp_path / "a" / "export.json").read_text())
    assert side["tensors"][0]["text_exact"] is False
    weightvault.export_hw(x, tmp_path / "b", file_format="txt", number="Q4.12")
    assert "0.0625" in (tmp_path / "b" / "w.txt").read_text()
    assert json.loads((tmp_path / "b" / "export.json").read_text())["tensors"][0]["text_exact"]
    weightvault.export_hw(
        {"w": np.zeros(2000, np.float32)},
        tmp_path / "c",
        file_format="txt",
        number="Q1.7",
        threshold=10,
        edgeitems=2,
    )
    assert "..." in (tmp_path / "c" / "w.txt").read_text()
    weightvault.export_hw(
        x, tmp_path / "d", file_format="txt", number="float32", sci=True, precision=3
    )
    assert "6.250e-02" in (tmp_path / "d" / "w.txt").read_text()
