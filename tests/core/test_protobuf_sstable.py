"""Wire-format helpers against the real protobuf runtime and TF-written tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from weightvault.core.crc32c import crc32c, mask, unmask
from weightvault.core.protobuf import (
    ProtobufDecodeError,
    Writer,
    get_int,
    get_message,
    get_packed,
    get_str,
    parse,
    parse_text,
)
from weightvault.core.sstable import read_table, write_table


def test_writer_matches_protobuf_runtime() -> None:
    tensor_pb2 = pytest.importorskip("tensorflow.core.framework.tensor_pb2")
    proto = tensor_pb2.TensorProto(dtype=3, int_val=[1, -2, 300], string_val=[b"x"])
    proto.tensor_shape.dim.add(size=3)
    shape = Writer().message(2, Writer().varint(1, 3))
    ours = Writer().varint(1, 3).message(2, shape).packed_varint(7, [1, -2, 300]).bytes(8, b"x").tobytes()
    assert ours == proto.SerializeToString()
    msg = parse(ours)
    assert get_packed(msg, 7, "int32").tolist() == [1, -2, 300]
    assert get_int(get_message(get_message(msg, 2), 2), 1) == 3


def test_decoder_bounds_checks() -> None:
    with pytest.raises(ProtobufDecodeError):
        parse(b"\x0a\x05ab")
    with pytest.raises(ProtobufDecodeError):
        parse(b"\x08\xff\xff")
    with pytest.raises(ProtobufDecodeError):
        parse(b"\x0d\x01\x02")


def test_text_format() -> None:
    doc = parse_text('a: "x\\"y\\001"\nb: 1.5\nsub { c: TRUE d: FOO }\nb: 2\n')
    assert doc["a"] == ['x"y\x01'] and doc["b"] == [1.5, 2]
    assert doc["sub"] == [{"c": [True], "d": ["FOO"]}]
    assert get_str(parse(Writer().string(1, "é").tobytes()), 1) == "é"


def test_crc32c_and_mask() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(np.frombuffer(b"123456789", np.uint8).copy()) == 0xE3069283
    assert mask(0) == 0xA282EAD8 and unmask(mask(0xDEADBEEF)) == 0xDEADBEEF


def test_tables_round_trip_byte_identically(fixtures_dir: Path) -> None:
    for index in sorted((fixtures_dir / "tensorflow").glob("*/*.index")):
        data = index.read_bytes()
        assert write_table(read_table(data)) == data, index.name


def test_text_format_nesting_is_bounded() -> None:
    from weightvault.core.limits import MAX_NESTING
    from weightvault.errors import ResourceLimitError

    ok = "a {" * MAX_NESTING + "}" * MAX_NESTING
    assert parse_text(ok)["a"]
    with pytest.raises(ResourceLimitError, match="nested"):
        parse_text("a {" * 100_000, path="deep.txt")
    with pytest.raises(ProtobufDecodeError, match="hex"):
        parse_text('a: "\\x"')


def test_wrong_wire_types_are_decode_errors() -> None:
    """Values wider than their field used to escape as OverflowError."""
    from weightvault.core.protobuf import get_float

    wide = parse(Writer().varint(4, 1 << 40).tobytes())
    with pytest.raises(ProtobufDecodeError, match="wider"):
        get_packed(wide, 4, "float")
    with pytest.raises(ProtobufDecodeError):
        get_float(parse(Writer().varint(1, 1 << 65).tobytes()), 1)
    # a 10-byte varint carries bits past 64; protobuf keeps the low 64 as uint64
    ten = parse(b"\x08" + b"\xff" * 9 + b"\x7f")
    assert get_packed(ten, 1, "uint64").tolist() == [2**64 - 1]
    assert get_packed(parse(Writer().fixed32(4, 0x3F800000).tobytes()), 4, "float").tolist() == [1.0]


def test_snappy_rejects_truncated_and_overlong_blocks() -> None:
    from weightvault.core.sstable import snappy_decompress
    from weightvault.errors import InvalidHeaderError

    assert snappy_decompress(b"\x05\x10hello") == b"hello"
    assert snappy_decompress(b"\x06\x04ab\x01\x02") == b"ababab"  # a copy overlapping its output
    for bad in (b"\x05\x10hel", b"\x09\x04ab\x01", b"\x04\x04ab\x0a\x02", b"\x02\x10hello", b"\x05\xf0"):
        with pytest.raises(InvalidHeaderError):
            snappy_decompress(bad)
