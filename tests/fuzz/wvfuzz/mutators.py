"""Mutators: generic byte damage plus structure-aware edits per file kind.

A mutation is ``(mutator name, rng seed)``: applied to the same bytes it gives the same result, so
a mutant is fully described by its seed file and its list of mutations, and a failure can be
replayed and minimised by dropping mutations. Structure-aware mutators parse what they edit (the
safetensors JSON header, zip members, pickle opcodes, npy headers, protobuf fields) and write it
back consistently, so the damage reaches the code behind the framing instead of the first check.
"""

from __future__ import annotations

import io
import json
import pickletools
import random
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable

__all__ = ["MUTATORS", "applicable", "mutate"]

Mutator = Callable[[bytes, random.Random], bytes]

INTERESTING_INTS = [0, 1, 2, 7, 63, 64, 65, 127, 128, 255, 256, 4095, 4096, 65535, 65536,
                    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53, 2**62, 2**63 - 1, 2**64 - 1]


def _interesting(rng: random.Random, size_hint: int = 0) -> int:
    if size_hint and rng.random() < 0.3:
        return max(0, size_hint + rng.choice([-8, -1, 1, 8, 4096, 1 << 20]))
    return rng.choice(INTERESTING_INTS)


# -- generic byte damage ------------------------------------------------------------------------
def bit_flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_set(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    i = rng.randrange(len(out))
    out[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x01])
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 2:
        return b""
    # Favour cuts near the start (headers) and near the end (footers, trailing data).
    choice = rng.random()
    if choice < 0.3:
        cut = rng.randrange(min(len(data), 256))
    elif choice < 0.6:
        cut = len(data) - 1 - rng.randrange(min(len(data) - 1, 256))
    else:
        cut = rng.randrange(len(data))
    return data[:cut]


def splice(data: bytes, rng: random.Random) -> bytes:
    """Delete, duplicate or insert a chunk (moves every later offset)."""
    if len(data) < 4:
        return data + bytes(rng.randrange(256) for _ in range(4))
    i = rng.randrange(len(data))
    n = rng.choice([1, 2, 4, 8, 64, 512])
    action = rng.randrange(3)
    if action == 0:
        return data[:i] + data[i + n:]
    if action == 1:
        return data[:i] + data[i:i + n] + data[i:]
    return data[:i] + bytes(rng.randrange(256) for _ in range(n)) + data[i:]


def lying_int(data: bytes, rng: random.Random) -> bytes:
    """Replace a little-endian integer that looks like a length, offset or count with a lie."""
    if len(data) < 8:
        return bit_flip(data, rng)
    width = rng.choice([2, 4, 8])
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[width]
    limit = len(data)
    candidates = [i for i in range(0, min(len(data), 1 << 16) - width + 1)
                  if 0 < struct.unpack_from(fmt, data, i)[0] <= limit]
    if not candidates:
        i = rng.randrange(len(data) - width + 1)
        original = 0
    else:
        i = rng.choice(candidates)
        original = struct.unpack_from(fmt, data, i)[0]
    value = _interesting(rng, original) % (1 << (8 * width))
    return data[:i] + struct.pack(fmt, value) + data[i + width:]


def _varint_positions(data: bytes, limit: int = 1 << 16) -> list[tuple[int, int]]:
    """(start, end) of byte runs that decode as a varint (continuation bits set, then one clear)."""
    out = []
    i = 0
    n = min(len(data), limit)
    while i < n:
        j = i
        while j < n and data[j] & 0x80 and j - i < 9:
            j += 1
        if j < n:
            out.append((i, j + 1))
        i = j + 1
    return out


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def lying_varint(data: bytes, rng: random.Random) -> bytes:
    """Replace a varint (protobuf lengths and fields, gob counts) with a lie."""
    positions = _varint_positions(data)
    if not positions:
        return bit_flip(data, rng)
    start, end = rng.choice(positions)
    return data[:start] + _encode_varint(_interesting(rng)) + data[end:]


# -- JSON ---------------------------------------------------------------------------------------
def _json_paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    paths = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            paths += _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            paths += _json_paths(v, (*prefix, i))
    return paths


def _json_replacement(rng: random.Random, old: object) -> object:
    options: list[object] = [
        None, True, False, -1, 0, 2**64, -(2**63) - 1, 1e308, "x", "", "../../etc/passwd", "\x00",
        [], {}, [2**40, 2**40], [1] * 70, {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "NaN", "U8", "F64", "BOOL", [0, 2**62], {"kind": "nope"},
    ]
    if isinstance(old, int) and not isinstance(old, bool):
        options += [old + 1, old - 1, old * 1000, -old]
    if isinstance(old, list):
        options += [old[::-1], old + old, old[:-1]]
    if isinstance(old, str):
        options += [old + "x", old[:-1], old.upper()]
    return rng.choice(options)


def _set_path(obj: object, path: tuple, value: object) -> object:
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]  # type: ignore[index]
    parent[path[-1]] = value  # type: ignore[index]
    return obj


def mutate_json_value(obj: object, rng: random.Random) -> object:
    """Edit one value somewhere in a JSON document (recursing into JSON held in strings)."""
    paths = _json_paths(obj)
    path = rng.choice(paths)
    current = obj
    for key in path:
        current = current[key]  # type: ignore[index]
    if isinstance(current, str) and current[:1] in "{[" and rng.random() < 0.8:
        try:
            inner = json.loads(current)
        except ValueError:
            inner = None
        if inner is not None:
            return _set_path(obj, path, json.dumps(mutate_json_value(inner, rng)))
    action = rng.random()
    if action < 0.1 and isinstance(current, dict) and current:
        current.pop(rng.choice(list(current)))
        return obj
    if action < 0.15:  # json.dumps cannot write it: a placeholder that dumps_json expands
        return _set_path(obj, path, f"{DEEP_MARK}{rng.choice([500, 5000, 50000])}")
    return _set_path(obj, path, _json_replacement(rng, current))


DEEP_MARK = "__wvfuzz_deep_"


def dumps_json(doc: object) -> str:
    """json.dumps, with deep-nesting placeholders expanded (also inside JSON held in strings)."""
    text = json.dumps(doc)
    while DEEP_MARK in text:
        start = text.index(DEEP_MARK)
        end = start + len(DEEP_MARK)
        while text[end].isdigit():
            end += 1
        depth = int(text[start + len(DEEP_MARK):end])
        quoted = text[start - 1] == '"'
        escaped = text[start - 2:start] == '\\"'
        lo = start - (2 if escaped else 1 if quoted else 0)
        hi = end + (2 if escaped else 1 if quoted else 0)
        text = text[:lo] + "[" * depth + "0" + "]" * depth + text[hi:]
    return text


def json_text(data: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(data)
    except ValueError:
        return bit_flip(data, rng)
    text = dumps_json(mutate_json_value(doc, rng))
    if rng.random() < 0.1:  # NaN, Infinity and duplicate keys are not JSON, but Python accepts them
        text = text.replace("0", "NaN", 1) if rng.random() < 0.5 else text.replace("{", '{"a":1,"a":2,', 1)
    return text.encode()


# -- safetensors header ---------------------------------------------------------------------------
def safetensors_header(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 8:
        return bit_flip(data, rng)
    (n,) = struct.unpack_from("<Q", data)
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return lying_int(data, rng)
    header = mutate_json_value(header, rng)
    raw = dumps_json(header).encode()
    pad = (-len(raw)) % 8 if rng.random() < 0.8 else 0
    raw += b" " * pad
    length = len(raw) if rng.random() < 0.9 else _interesting(rng, len(raw))
    return struct.pack("<Q", length % (1 << 64)) + raw + data[8 + n:]


# -- npy header -----------------------------------------------------------------------------------
NPY_DESCRS = ["'<f4'", "'<U3'", "'|O'", "'>f8'", "'x'", "'<f16'", "'<c8'", "'|V4'", "'<M8[s]'",
              "[('a', '<f4')]", "'<i8'", "'|b1'", "'<f2'"]
NPY_SHAPES = ["()", "(0,)", "(2L,)", "(-1,)", "(2**40,)", "(4294967296, 4294967296)",
              "(" + "1, " * 70 + ")", "(3,)", "(1, 1, 1)", "('a',)", "(3.5,)"]


def npy_header(data: bytes, rng: random.Random) -> bytes:
    if not data.startswith(b"\x93NUMPY") or len(data) < 10:
        return bit_flip(data, rng)
    major = data[6]
    hlen_size = 2 if major == 1 else 4
    start = 8 + hlen_size
    (hlen,) = struct.unpack_from("<H" if hlen_size == 2 else "<I", data, 8)
    header = data[start:start + hlen].decode("latin1")
    body = data[start + hlen:]
    choice = rng.randrange(4)
    if choice == 0:
        header = _replace_field(header, "descr", rng.choice(NPY_DESCRS))
    elif choice == 1:
        header = _replace_field(header, "shape", rng.choice(NPY_SHAPES))
    elif choice == 2:
        header = _replace_field(header, "fortran_order", rng.choice(["True", "1", "'x'", "None"]))
    else:
        header = "{" + "[" * rng.choice([100, 10000]) + "}"
    raw = header.encode("latin1")
    raw += b" " * ((-(start + len(raw) + 1)) % 64) + b"\n"
    if rng.random() < 0.1:
        return data[:8] + struct.pack("<H", _interesting(rng) % 65536) + raw + body
    if len(raw) > 65535:
        return data[:6] + b"\x02\x00" + struct.pack("<I", len(raw)) + raw + body
    return data[:8] + struct.pack("<H", len(raw)) + raw + body


def _replace_field(header: str, key: str, value: str) -> str:
    marker = f"'{key}':"
    i = header.find(marker)
    if i < 0:
        return header
    j = i + len(marker)
    depth, k = 0, j
    while k < len(header):
        c = header[k]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c in ",}" and depth == 0:
            break
        k += 1
    return header[:j] + " " + value + header[k:]


# -- pickle opcodes -------------------------------------------------------------------------------
_INT_ARGS = {"BININT": "<i", "BININT1": "<B", "BININT2": "<H", "BINPUT": "<B", "LONG_BINPUT": "<I",
             "BINGET": "<B", "LONG_BINGET": "<I"}


def pickle_ops(data: bytes, rng: random.Random) -> bytes:
    try:
        ops = list(pickletools.genops(data))
    except Exception:
        return bit_flip(data, rng)
    if not ops:
        return data
    action = rng.random()
    if action < 0.12:  # deep nesting just before the end
        pos = ops[-1][2] or 0
        depth = rng.choice([1000, 100000])
        return data[:pos] + b"(" * depth + b"]" + b"e" * depth + data[pos:]
    if action < 0.2:  # delete or duplicate one opcode
        idx = rng.randrange(len(ops))
        start = ops[idx][2] or 0
        end = ops[idx + 1][2] if idx + 1 < len(ops) else len(data)
        chunk = data[start:end]
        return data[:start] + (chunk * 2 if rng.random() < 0.5 else b"") + data[end:]
    int_ops = [(op, arg, pos) for op, arg, pos in ops if op.name in _INT_ARGS]
    str_ops = [(op, arg, pos) for op, arg, pos in ops if op.name in ("SHORT_BINUNICODE", "BINUNICODE")]
    if int_ops and (action < 0.7 or not str_ops):
        op, arg, pos = rng.choice(int_ops)
        fmt = _INT_ARGS[op.name]
        size = struct.calcsize(fmt)
        bits = 8 * size
        value = _interesting(rng, arg if isinstance(arg, int) else 0)
        value = value % (1 << bits)
        if fmt == "<i" and value >= 1 << 31:
            value -= 1 << 32
        return data[:pos + 1] + struct.pack(fmt, value) + data[pos + 1 + size:]
    if str_ops:
        op, arg, pos = rng.choice(str_ops)
        new = rng.choice(["", "..", "../../../etc/passwd", "os", "system", "torch", "FloatStorage",
                          "HalfStorage", "cpu", "0" * 300, "\x00", "collections", "OrderedDict",
                          "__setstate__", "_rebuild_tensor_v2", "99999", "storage"])
        raw = new.encode("utf-8", "surrogatepass")
        old_len_size = 1 if op.name == "SHORT_BINUNICODE" else 4
        old_len = data[pos + 1] if old_len_size == 1 else struct.unpack_from("<I", data, pos + 1)[0]
        end = pos + 1 + old_len_size + old_len
        encoded = (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + struct.pack("<I", len(raw))) + raw
        return data[:pos] + encoded + data[end:]
    return bit_flip(data, rng)


# -- zip archives -----------------------------------------------------------------------------------
def _inner_mutator(name: str, data: bytes, rng: random.Random) -> bytes:
    lower = name.lower()
    if lower.endswith(".pkl") or lower.endswith("data.pkl"):
        return pickle_ops(data, rng)
    if lower.endswith(".npy"):
        return npy_header(data, rng)
    if lower.endswith(".json"):
        return json_text(data, rng)
    return rng.choice([bit_flip, truncate, lying_int, splice])(data, rng)


def zip_member(data: bytes, rng: random.Random) -> bytes:
    """Rewrite the archive with one member's content (or name, or count) changed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            members = [(info, zf.read(info)) for info in infos]
    except Exception:
        return lying_int(data, rng)
    if not members:
        return data
    idx = rng.randrange(len(members))
    info, content = members[idx]
    action = rng.random()
    name = info.filename
    extra: list[tuple[str, bytes]] = []
    if action < 0.6:
        content = _inner_mutator(name, content, rng)
    elif action < 0.7:
        name = rng.choice(["../" + name, "/" + name, name + "\x00", name.replace("/", "\\"), "a/../../x"])
    elif action < 0.8:
        extra.append((name, _inner_mutator(name, content, rng)))  # a duplicate member name
    elif action < 0.9:
        members.pop(idx)
        idx = -1
    else:
        # A bomb: a member that inflates far beyond its stored size.
        content = b"\x00" * rng.choice([1 << 20, 64 << 20, 300 << 20])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zw:
        for i, (inf, body) in enumerate(members):
            method = inf.compress_type
            if i == idx:
                if action >= 0.9:
                    method = zipfile.ZIP_DEFLATED
                zi = zipfile.ZipInfo(name, date_time=inf.date_time)
            else:
                zi = zipfile.ZipInfo(inf.filename, date_time=inf.date_time)
            zi.compress_type = method
            zw.writestr(zi, body if i != idx else content)
        for n, body in extra:
            zw.writestr(zipfile.ZipInfo(n), body)
    return out.getvalue()


def zip_framing(data: bytes, rng: random.Random) -> bytes:
    """Lie in the zip's own records: sizes, methods, versions, offsets (local or central)."""
    sigs = [b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"]
    positions = [i for sig in sigs for i in _find_all(data, sig)]
    if not positions:
        return lying_int(data, rng)
    pos = rng.choice(positions)
    sig = data[pos:pos + 4]
    if sig == b"PK\x03\x04":  # local header: version@4 method@8 crc@14 csize@18 usize@22
        field = rng.choice([(4, "<H"), (8, "<H"), (14, "<I"), (18, "<I"), (22, "<I"), (26, "<H")])
    elif sig == b"PK\x01\x02":  # central: method@10 csize@20 usize@24 namelen@28 offset@42
        field = rng.choice([(6, "<H"), (10, "<H"), (20, "<I"), (24, "<I"), (28, "<H"), (42, "<I")])
    else:  # end of central directory: entries@10 size@12 offset@16
        field = rng.choice([(8, "<H"), (10, "<H"), (12, "<I"), (16, "<I")])
    off, fmt = field
    at = pos + off
    if at + struct.calcsize(fmt) > len(data):
        return data
    value = rng.choice([0, 1, 8, 12, 14, 93, 99, 0xFFFF, 0xFFFFFFFF, 100, 2**31]) % (1 << (8 * struct.calcsize(fmt)))
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


def _find_all(data: bytes, sig: bytes) -> list[int]:
    out, i = [], data.find(sig)
    while i >= 0 and len(out) < 1000:
        out.append(i)
        i = data.find(sig, i + 1)
    return out


def deflate_stream(data: bytes, rng: random.Random) -> bytes:
    """Damage a compressed member's deflate stream in place (sizes and CRC left as they were)."""
    positions = _find_all(data, b"PK\x03\x04")
    if not positions:
        return bit_flip(data, rng)
    pos = rng.choice(positions)
    namelen, extralen = struct.unpack_from("<HH", data, pos + 26)
    start = pos + 30 + namelen + extralen
    (csize,) = struct.unpack_from("<I", data, pos + 18)
    if csize == 0 or start + csize > len(data):
        return bit_flip(data, rng)
    out = bytearray(data)
    for _ in range(rng.choice([1, 3, 8])):
        out[start + rng.randrange(csize)] ^= 1 << rng.randrange(8)
    return bytes(out)


# -- protobuf ---------------------------------------------------------------------------------------
def protobuf_nest(data: bytes, rng: random.Random) -> bytes:
    """Append a field nested thousands deep (length-delimited inside length-delimited)."""
    inner = b""
    field = rng.choice([1, 2, 7, 10])
    for _ in range(rng.choice([200, 2000, 20000])):
        inner = _encode_varint((field << 3) | 2) + _encode_varint(len(inner)) + inner
    return data + inner


def text_edit(data: bytes, rng: random.Random) -> bytes:
    """Edits for text files (TF ``checkpoint`` state, OneFlow ``meta``): paths, numbers, nesting."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return bit_flip(data, rng)
    choice = rng.randrange(5)
    if choice == 0 and '"' in text:
        first = text.index('"')
        end = text.index('"', first + 1) if '"' in text[first + 1:] else len(text)
        value = rng.choice(["../../../../etc/passwd", "/etc/passwd", "a\\x00b", "", "..", "x" * 5000])
        return (text[:first + 1] + value + text[end:]).encode()
    if choice == 1:
        return "".join(c if not c.isdigit() else rng.choice("09") * rng.choice([1, 20]) for c in text).encode()
    if choice == 2:
        return (text + "shape {" * 10000 + "}" * 10000).encode()
    if choice == 3:
        return text.replace("kFloat", rng.choice(["kDouble", "kInt8", "kNope", "kChar", "7"])).encode()
    return (text + "dim: -5\n").encode()


# -- registry of mutators per file kind -------------------------------------------------------------
GENERIC: list[tuple[str, Mutator]] = [
    ("bit_flip", bit_flip), ("byte_set", byte_set), ("truncate", truncate), ("splice", splice),
    ("lying_int", lying_int),
]
MUTATORS: dict[str, Mutator] = dict(GENERIC)
MUTATORS.update({
    "lying_varint": lying_varint, "json_text": json_text, "safetensors_header": safetensors_header,
    "npy_header": npy_header, "pickle_ops": pickle_ops, "zip_member": zip_member,
    "zip_framing": zip_framing, "deflate_stream": deflate_stream, "protobuf_nest": protobuf_nest,
    "text_edit": text_edit,
})


def file_kind(name: str, data: bytes) -> str:
    lower = name.lower()
    if data.startswith(b"PK\x03\x04"):
        return "zip"
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".npy"):
        return "npy"
    if data[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") or lower.endswith(("pickled_data", ".pkl")):
        return "pickle"
    if lower.endswith((".onnx", ".pb", ".meta")):
        return "protobuf"
    if lower in ("checkpoint", "meta") or lower.endswith(".txt"):
        return "text"
    if lower.endswith((".gob",)) or "weights" in lower and not lower.endswith(".h5"):
        return "varint"
    return "binary"


#: structure-aware mutators by file kind (generic ones are always available too)
BY_KIND: dict[str, list[str]] = {
    "zip": ["zip_member", "zip_member", "zip_member", "zip_framing", "deflate_stream"],
    "safetensors": ["safetensors_header", "safetensors_header", "safetensors_header"],
    "json": ["json_text", "json_text", "json_text"],
    "npy": ["npy_header", "npy_header"],
    "pickle": ["pickle_ops", "pickle_ops", "pickle_ops"],
    "protobuf": ["lying_varint", "lying_varint", "protobuf_nest"],
    "text": ["text_edit", "text_edit", "text_edit"],
    "varint": ["lying_varint", "lying_varint"],
    "binary": [],
}


def applicable(name: str, data: bytes) -> list[str]:
    return BY_KIND[file_kind(name, data)] + [n for n, _ in GENERIC]


def mutate(name: str, data: bytes, mutator: str, seed: int) -> bytes:
    rng = random.Random(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we write
            return MUTATORS[mutator](data, rng)
    except (ValueError, IndexError, struct.error, zipfile.BadZipFile, zlib.error, UnicodeError,
            OverflowError, RecursionError):
        return bit_flip(data, rng)  # a mutator that cannot parse its input still damages it
