"""A small protocol-buffer wire-format reader and writer (no generated code, no protobuf package).

TensorFlow bundles, GraphDefs, ONNX models and OneFlow metadata are protobuf messages. We only need a
few fields of each, so instead of compiled schemas this module offers the wire format itself:

Reading::

    for field, wire_type, value in iter_fields(buf):   # value: int for varint/fixed, buffer slice for LEN
        ...
    msg = parse(buf)                                     # {field_number: [value, ...]}
    name = get_str(msg, 1); dims = get_packed(msg, 2, "int64")

* Values of wire type 2 (length-delimited) are slices of the buffer that was passed in: pass a
  ``memoryview`` to get zero-copy views of big payloads (``tensor_content``, ONNX ``raw_data``).
* Every length and every varint is bounds-checked against the buffer; a malformed message raises
  :class:`ProtobufDecodeError` (an :class:`~weightvault.errors.InvalidHeaderError`), never IndexError.
* Repeated scalar fields may arrive packed or unpacked (or both); :func:`get_packed` accepts either.
* int32/int64 varints are two's complement (10 bytes for negatives); :func:`to_int64` converts.

Writing::

    w = Writer()
    w.varint(1, 7).bytes(2, b"x").message(3, Writer().varint(1, 1)).packed_float(4, [1.0, 2.0])
    data = w.tobytes()

The writer emits fields in call order; to match the C++ serializer byte for byte, call it in
ascending field order and skip proto3 defaults yourself (``if value: w.varint(...)``).

A minimal text-format parser (:func:`parse_text`) covers the ``checkpoint`` state file of TensorFlow
and OneFlow's ``meta`` files: ``name: value`` scalars and ``name { ... }`` sub-messages.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any, Union

import numpy as np

from weightvault.core.limits import check_depth
from weightvault.errors import InvalidHeaderError

__all__ = [
    "FIXED32",
    "FIXED64",
    "LEN",
    "VARINT",
    "ProtobufDecodeError",
    "Writer",
    "decode_varint",
    "encode_varint",
    "format_text_string",
    "get_bytes",
    "get_float",
    "get_int",
    "get_message",
    "get_messages",
    "get_packed",
    "get_str",
    "iter_fields",
    "parse",
    "parse_text",
    "to_int32",
    "to_int64",
    "zigzag_decode",
    "zigzag_encode",
]

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_START_GROUP, _END_GROUP = 3, 4

Buffer = Union[bytes, bytearray, memoryview]
Value = Union[int, bytes, memoryview]


class ProtobufDecodeError(InvalidHeaderError):
    """The bytes are not a well-formed protobuf message."""


# -- primitives --------------------------------------------------------------------------------------
def decode_varint(
    buf: Buffer,
    pos: int,
    end: int | None = None,
    *,
    path: Any = None,
    what: str = "protobuf",
    error: type[InvalidHeaderError] | None = None,
) -> tuple[int, int]:
    """Decode an unsigned LEB128 varint at ``pos``; returns ``(value, new_pos)``.

    The one varint decoder (protobuf messages, SSTable blocks). ``what`` starts the error
    message and ``error`` is its class (default :class:`ProtobufDecodeError`).

    >>> decode_varint(bytes([0xAC, 0x02, 0x07]), 0)
    (300, 2)
    """
    error = error or ProtobufDecodeError
    limit = len(buf) if end is None else end
    result = 0
    shift = 0
    while True:
        if pos >= limit:
            raise error(f"{what} varint runs past the end of the message", path=path)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise error(f"{what} varint longer than 10 bytes", path=path)


def encode_varint(value: int) -> bytes:
    """LEB128; negative ints are written as 64-bit two's complement (10 bytes), as protobuf does."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def zigzag_encode(value: int) -> int:
    return (value << 1) ^ (value >> 63)


def zigzag_decode(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def to_int64(value: int) -> int:
    """Interpret a decoded varint as a signed int64 (two's complement)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def to_int32(value: int) -> int:
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


# -- reading ----------------------------------------------------------------------------------------
def iter_fields(
    buf: Buffer, start: int = 0, end: int | None = None, *, path: Any = None
) -> Iterator[tuple[int, int, Value]]:
    """Yield ``(field_number, wire_type, value)`` for each field of the message in ``buf[start:end]``.

    ``value`` is an ``int`` for varint, fixed32 and fixed64 fields (fixed values unsigned; see
    :func:`get_float`) and a slice of ``buf`` for length-delimited fields. Groups are skipped.
    """
    if isinstance(buf, int):  # a varint or fixed field where the schema has a message
        raise ProtobufDecodeError("protobuf field holds a number where a message belongs", path=path)
    stop = len(buf) if end is None else end
    if stop > len(buf) or start < 0 or start > stop:
        raise ProtobufDecodeError("protobuf message range outside its buffer", path=path)
    pos = start
    while pos < stop:
        tag, pos = decode_varint(buf, pos, stop, path=path)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtobufDecodeError("protobuf field number 0 is invalid", path=path)
        if wire == VARINT:
            value, pos = decode_varint(buf, pos, stop, path=path)
            yield field, wire, value
        elif wire == LEN:
            n, pos = decode_varint(buf, pos, stop, path=path)
            if n > stop - pos:
                raise ProtobufDecodeError(
                    f"protobuf field {field} claims {n} bytes but only {stop - pos} remain", path=path
                )
            yield field, wire, buf[pos : pos + n]
            pos += n
        elif wire == FIXED32:
            if pos + 4 > stop:
                raise ProtobufDecodeError(f"protobuf fixed32 field {field} truncated", path=path)
            yield field, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif wire == FIXED64:
            if pos + 8 > stop:
                raise ProtobufDecodeError(f"protobuf fixed64 field {field} truncated", path=path)
            yield field, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == _START_GROUP:
            pos = _skip_group(buf, pos, stop, field, path)
        else:
            raise ProtobufDecodeError(f"protobuf wire type {wire} (field {field}) is invalid", path=path)


def _skip_group(buf: Buffer, pos: int, stop: int, field: int, path: Any) -> int:
    # Deprecated groups never appear in the protos we read, but skipping them keeps parsing total.
    depth = 1
    while depth:
        tag, pos = decode_varint(buf, pos, stop, path=path)
        wire = tag & 7
        if wire == VARINT:
            _, pos = decode_varint(buf, pos, stop, path=path)
        elif wire == LEN:
            n, pos = decode_varint(buf, pos, stop, path=path)
            pos += n
        elif wire == FIXED32:
            pos += 4
        elif wire == FIXED64:
            pos += 8
        elif wire == _START_GROUP:
            depth += 1
        elif wire == _END_GROUP:
            depth -= 1
        else:
            raise ProtobufDecodeError(f"protobuf wire type {wire} inside group {field}", path=path)
        if pos > stop:
            raise ProtobufDecodeError(f"protobuf group {field} runs past the message", path=path)
    return pos


class Message(dict):  # type: ignore[type-arg]
    """``{field_number: [value, ...]}`` plus the wire type seen for each field."""

    wire_types: dict[int, int]


def parse(buf: Buffer, *, path: Any = None) -> Message:
    """All fields of one message level: ``{field_number: [values in order]}`` (sub-messages unparsed)."""
    msg = Message()
    msg.wire_types = {}
    for field, wire, value in iter_fields(buf, path=path):
        msg.setdefault(field, []).append(value)
        msg.wire_types[field] = wire
    return msg


def get_int(msg: dict[int, list[Value]], field: int, default: int = 0, *, signed: bool = True) -> int:
    """Last value of a scalar varint field (proto3: last one wins), as int64 when ``signed``."""
    values = msg.get(field)
    if not values:
        return default
    v = values[-1]
    if not isinstance(v, int):
        raise ProtobufDecodeError(f"protobuf field {field} should be a number")
    return to_int64(v) if signed else v


def get_bytes(msg: dict[int, list[Value]], field: int, default: bytes = b"") -> bytes:
    values = msg.get(field)
    if not values:
        return default
    v = values[-1]
    if isinstance(v, int):
        raise ProtobufDecodeError(f"protobuf field {field} should be length-delimited")
    return bytes(v)


def get_str(msg: dict[int, list[Value]], field: int, default: str = "") -> str:
    raw = get_bytes(msg, field, b"")
    return raw.decode("utf-8", "replace") if raw else default


def get_float(msg: dict[int, list[Value]], field: int, default: float = 0.0) -> float:
    """A ``float`` (fixed32) or ``double`` (fixed64) scalar field, by the wire type stored."""
    values = msg.get(field)
    if not values:
        return default
    v = values[-1]
    wire = getattr(msg, "wire_types", {}).get(field)
    if not isinstance(v, int) or wire not in (FIXED32, FIXED64, None):
        raise ProtobufDecodeError(f"protobuf field {field} should be a float")
    if wire == FIXED32:
        return float(struct.unpack("<f", v.to_bytes(4, "little"))[0])
    if v >> 64:
        raise ProtobufDecodeError(f"protobuf field {field} should be a float")
    return float(struct.unpack("<d", v.to_bytes(8, "little"))[0])


def get_messages(msg: dict[int, list[Value]], field: int, *, path: Any = None) -> list[Message]:
    """Each occurrence of a repeated sub-message field, parsed."""
    out = []
    for v in msg.get(field, []):
        if isinstance(v, int):
            raise ProtobufDecodeError(f"protobuf field {field} should be a message", path=path)
        out.append(parse(v, path=path))
    return out


def get_message(msg: dict[int, list[Value]], field: int, *, path: Any = None) -> Message | None:
    """A singular sub-message; repeated occurrences are merged, as protobuf specifies."""
    parts = msg.get(field)
    if not parts:
        return None
    if len(parts) == 1:
        return get_messages(msg, field, path=path)[0]
    merged = Message()
    merged.wire_types = {}
    for sub in get_messages(msg, field, path=path):
        for k, vs in sub.items():
            merged.setdefault(k, []).extend(vs)
            merged.wire_types[k] = sub.wire_types[k]
    return merged


_PACKED_FIXED = {"float": "<f4", "double": "<f8", "fixed32": "<u4", "fixed64": "<u8",
                 "sfixed32": "<i4", "sfixed64": "<i8"}
_PACKED_VARINT = {"int32", "int64", "uint32", "uint64", "bool", "enum", "sint32", "sint64"}


def get_packed(msg: dict[int, list[Value]], field: int, kind: str, *, path: Any = None) -> np.ndarray:
    """A repeated scalar field as a numpy array, accepting packed and unpacked encodings.

    ``kind``: float, double, fixed32, fixed64, sfixed32, sfixed64, int32, int64, uint32, uint64,
    sint32, sint64, bool or enum.
    """
    values = msg.get(field, [])
    if kind in _PACKED_FIXED:
        dt = np.dtype(_PACKED_FIXED[kind])
        chunks: list[np.ndarray] = []
        for v in values:
            if isinstance(v, int):  # unpacked: one fixed value per tag
                if v >> (8 * dt.itemsize):  # a varint or fixed64 where a fixed32 belongs
                    raise ProtobufDecodeError(
                        f"{kind} field {field} holds a value wider than {dt.itemsize} bytes", path=path
                    )
                chunks.append(np.frombuffer(v.to_bytes(dt.itemsize, "little"), dtype=dt))
            else:
                if len(v) % dt.itemsize:
                    raise ProtobufDecodeError(
                        f"packed {kind} field {field} has {len(v)} bytes, not a multiple of {dt.itemsize}",
                        path=path,
                    )
                chunks.append(np.frombuffer(v, dtype=dt))
        if not chunks:
            return np.zeros(0, dtype=dt.newbyteorder("="))
        return np.concatenate(chunks).astype(dt.newbyteorder("="), copy=False)
    if kind not in _PACKED_VARINT:
        raise ValueError(f"unknown packed kind {kind!r}")
    ints: list[int] = []
    for v in values:
        if isinstance(v, int):
            ints.append(v)
        else:
            pos, stop = 0, len(v)
            while pos < stop:
                x, pos = decode_varint(v, pos, stop, path=path)
                ints.append(x)
    if kind in ("sint32", "sint64"):
        return np.array([zigzag_decode(x) for x in ints], dtype=np.int64)
    if kind in ("uint32", "uint64"):  # a 10-byte varint may carry bits past 64: protobuf drops them
        return np.array([x & 0xFFFFFFFFFFFFFFFF for x in ints], dtype=np.uint64)
    if kind == "bool":
        return np.array([x != 0 for x in ints], dtype=np.bool_)
    return np.array([to_int64(x) for x in ints], dtype=np.int64)


# -- writing ----------------------------------------------------------------------------------------
def _tag(field: int, wire: int) -> bytes:
    return encode_varint((field << 3) | wire)


class Writer:
    """Builds one message; each method appends a field and returns ``self`` for chaining."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def varint(self, field: int, value: int) -> Writer:
        """int32/int64/uint32/uint64/enum (negatives as 10-byte two's complement)."""
        self._parts.append(_tag(field, VARINT) + encode_varint(int(value)))
        return self

    def bool(self, field: int, value: bool) -> Writer:
        return self.varint(field, 1 if value else 0)

    def sint(self, field: int, value: int) -> Writer:
        """sint32/sint64 (zigzag)."""
        self._parts.append(_tag(field, VARINT) + encode_varint(zigzag_encode(int(value))))
        return self

    def fixed32(self, field: int, value: int) -> Writer:
        self._parts.append(_tag(field, FIXED32) + (int(value) & 0xFFFFFFFF).to_bytes(4, "little"))
        return self

    def fixed64(self, field: int, value: int) -> Writer:
        self._parts.append(_tag(field, FIXED64) + (int(value) & (2**64 - 1)).to_bytes(8, "little"))
        return self

    def float(self, field: int, value: float) -> Writer:
        self._parts.append(_tag(field, FIXED32) + struct.pack("<f", value))
        return self

    def double(self, field: int, value: float) -> Writer:
        self._parts.append(_tag(field, FIXED64) + struct.pack("<d", value))
        return self

    def bytes(self, field: int, value: Buffer) -> Writer:
        data = bytes(value)  # noqa: builtin, not this method (function scope resolves globals)
        self._parts.append(_tag(field, LEN) + encode_varint(len(data)) + data)
        return self

    def string(self, field: int, value: str) -> Writer:
        return self.bytes(field, value.encode("utf-8"))

    def message(self, field: int, sub: Writer | Buffer) -> Writer:
        """A sub-message (always emitted, even when empty, as C++ does for explicitly set messages)."""
        return self.bytes(field, sub.tobytes() if isinstance(sub, Writer) else sub)

    def raw(self, data: Buffer) -> Writer:
        """Already-encoded fields (e.g. copied unchanged from a parsed message)."""
        self._parts.append(bytes(data))
        return self

    def field(self, field: int, wire: int, value: Value) -> Writer:
        """Re-emit a field exactly as :func:`iter_fields` yielded it."""
        if wire == VARINT:
            assert isinstance(value, int)
            return self.varint(field, value)
        if wire == FIXED32:
            assert isinstance(value, int)
            return self.fixed32(field, value)
        if wire == FIXED64:
            assert isinstance(value, int)
            return self.fixed64(field, value)
        assert not isinstance(value, int)
        return self.bytes(field, value)

    def _packed(self, field: int, payload: bytes) -> Writer:
        if payload:  # proto3 omits empty repeated fields
            self._parts.append(_tag(field, LEN) + encode_varint(len(payload)) + payload)
        return self

    def packed_varint(self, field: int, values: Iterable[int]) -> Writer:
        return self._packed(field, b"".join(encode_varint(int(v)) for v in values))

    def packed_sint(self, field: int, values: Iterable[int]) -> Writer:
        return self._packed(field, b"".join(encode_varint(zigzag_encode(int(v))) for v in values))

    def packed_float(self, field: int, values: Iterable[float]) -> Writer:
        return self._packed(field, np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                              dtype="<f4").tobytes())

    def packed_double(self, field: int, values: Iterable[float]) -> Writer:
        return self._packed(field, np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                              dtype="<f8").tobytes())

    def packed_fixed32(self, field: int, values: Iterable[int]) -> Writer:
        return self._packed(field, np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                              dtype="<u4").tobytes())

    def packed_fixed64(self, field: int, values: Iterable[int]) -> Writer:
        return self._packed(field, np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                                              dtype="<u8").tobytes())

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def tobytes(self) -> bytes:
        return b"".join(self._parts)


# -- text format ------------------------------------------------------------------------------------
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "?": "?"}


def _unescape(s: str, *, path: Any) -> bytes:
    out = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(s):
            raise ProtobufDecodeError("text proto string ends with a backslash", path=path)
        e = s[i + 1]
        if e in _ESCAPES:
            out += _ESCAPES[e].encode()
            i += 2
        elif e in "01234567":
            j = i + 1
            while j < len(s) and j < i + 4 and s[j] in "01234567":
                j += 1
            out.append(int(s[i + 1 : j], 8) & 0xFF)
            i = j
        elif e in "xX":
            j = i + 2
            while j < len(s) and j < i + 4 and s[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i + 2:
                raise ProtobufDecodeError("text proto string has \\x without hex digits", path=path)
            out.append(int(s[i + 2 : j], 16))
            i = j
        else:
            raise ProtobufDecodeError(f"text proto string has unknown escape \\{e}", path=path)
    return bytes(out)


def format_text_string(value: str | bytes) -> str:
    """Quote a string the way protobuf's text format prints it (C escapes, octal for non-ASCII bytes)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    out = []
    for b in raw:
        ch = chr(b)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "'":
            out.append("\\'")
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tokenize(text: str, path: Any) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{}:;,<>[]":
            yield c
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ProtobufDecodeError("unterminated string in text proto", path=path)
            yield text[i : j + 1]
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{}:;,<>[]\"'#":
                j += 1
            yield text[i:j]
            i = j


def _scalar(token: str, path: Any) -> Any:
    if token[0] in "\"'":
        raw = _unescape(token[1:-1], path=path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw
    low = token.lower()
    if low in ("true", "t"):
        return True
    if low in ("false", "f"):
        return False
    try:
        return int(token, 0)
    except ValueError:
        pass
    try:
        return float(token.rstrip("fF"))
    except ValueError:
        return token  # an enum name


def parse_text(text: str, *, path: Any = None) -> dict[str, list[Any]]:
    """Parse protobuf text format into ``{field_name: [value, ...]}``; sub-messages are nested dicts.

    Adjacent string literals are concatenated, as in the real text format.
    """
    tokens = list(_tokenize(text, path))
    pos = 0

    def parse_block(closing: str | None, depth: int = 0) -> dict[str, list[Any]]:
        nonlocal pos
        check_depth(depth, path=path, what="text proto sub-message")
        out: dict[str, list[Any]] = {}
        while pos < len(tokens):
            tok = tokens[pos]
            if closing is not None and tok == closing:
                pos += 1
                return out
            if tok in (";", ","):
                pos += 1
                continue
            name = tok
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise ProtobufDecodeError(f"text proto field {name!r} has no value", path=path)
            tok = tokens[pos]
            if tok in ("{", "<"):
                pos += 1
                out.setdefault(name, []).append(parse_block("}" if tok == "{" else ">", depth + 1))
            elif tok == "[":
                pos += 1
                while pos < len(tokens) and tokens[pos] != "]":
                    if tokens[pos] != ",":
                        out.setdefault(name, []).append(_scalar(tokens[pos], path))
                    pos += 1
                pos += 1
            else:
                value = _scalar(tok, path)
                pos += 1
                while (isinstance(value, (str, bytes)) and tok[0] in "\"'" and pos < len(tokens)
                       and tokens[pos][:1] in ("\"", "'")):
                    more = _scalar(tokens[pos], path)
                    value = value + more if type(value) is type(more) else str(value) + str(more)
                    pos += 1
                out.setdefault(name, []).append(value)
        if closing is not None:
            raise ProtobufDecodeError("text proto ends inside a sub-message", path=path)
        return out

    return parse_block(None)
