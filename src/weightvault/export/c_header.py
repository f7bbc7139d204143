"""C/C++ headers: ``const`` arrays with alignment, sizes, shapes, scales and the number format.

One tensor in its own memory without packing becomes a typed array of its codes
(``int8_t``/``int16_t``/``int32_t`` for signed fixed point and affine integers, sign-extended;
``uint16_t`` bit patterns for float16/bfloat16; ``float`` for float32). Packed or shared memories
become an array of ``uintW_t`` words (W = 8, 16, 32 or 64) with ``<NAME>_BASE``/``<NAME>_WORDS``
macros for every tensor in it. Arrays are ``static const`` (the header may be included by several
translation units) and aligned with ``WV_ALIGN(16)``: C11 ``_Alignas``, C++11 ``alignas``, or the
GNU attribute. With ``typedefs=True`` an ``ap_fixed`` typedef per fixed-point tensor is emitted in
the style of hls4ml's ``defines.h``, guarded by ``WV_USE_AP_FIXED`` so plain C still compiles.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weightvault.errors import InvalidHeaderError, UnsupportedOperationError
from weightvault.export.files import MemoryFile, read_text
from weightvault.export.layout import Memory

if TYPE_CHECKING:
    from weightvault.export.api import ExportItem

__all__ = ["c_identifier", "parse_c_array", "write_c_header", "write_map_header"]

_ALIGN_MACRO = """\
#ifndef WV_ALIGN
#if defined(__cplusplus) && __cplusplus >= 201103L
#define WV_ALIGN(n) alignas(n)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define WV_ALIGN(n) _Alignas(n)
#else
#define WV_ALIGN(n) __attribute__((aligned(n)))
#endif
#endif
#ifndef WV_UNUSED
#if defined(__GNUC__) || defined(__clang__)
#define WV_UNUSED __attribute__((unused))
#else
#define WV_UNUSED
#endif
#endif
"""

_PER_LINE = 12


def c_identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)
    return f"t_{ident}" if not ident or ident[0].isdigit() else ident


def _guard(name: str) -> str:
    return f"WV_{c_identifier(name).upper()}_H_"


def is_typed(memory: Memory, items: Sequence[ExportItem]) -> bool:
    """Whether the memory is written as one typed array of codes (not as packed words)."""
    return len(items) == 1 and items[0].lanes == 1 and memory.width == items[0].quant.fmt.bits


def _word_type(width: int) -> str:
    for size in (8, 16, 32, 64):
        if width <= size:
            return f"uint{size}_t"
    raise UnsupportedOperationError(f"C arrays hold words of at most 64 bits, not {width}")


def _float_literal(bits: int) -> str:
    v = np.array([bits], np.uint32).view(np.float32)[0]
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return np.format_float_scientific(v, unique=True) + "f"


def _rows(values: list[str], indent: str = "    ") -> str:
    lines = [", ".join(values[i : i + _PER_LINE]) for i in range(0, len(values), _PER_LINE)]
    return ",\n".join(indent + line for line in lines)


def _tensor_comment(item: ExportItem) -> list[str]:
    q = item.quant
    err = q.error()
    out = [
        f"{item.name}: shape {list(item.shape)}, flattened in {item.order} order "
        + f"({'row-major' if item.order == 'C' else 'column-major'})",
        q.fmt.comment(),
        f"rounding {q.describe()['rounding']}, overflow {q.describe()['overflow']}",
        f"max abs error {err['max_abs']:.6g}, rms error {err['rms']:.6g}, saturated {err['saturated']}",
    ]
    if item.split:
        out.append(
            f"split from {item.source} along axis {item.split['axis']} (part {item.split['part']})"
        )
    if item.lanes > 1:
        out.append(
            f"{item.lanes} values per word, lane 0 in the {'least' if item.lane_order == 'lsb' else 'most'} significant bits"
        )
    if q.fmt.kind == "fixed":
        out.append(f"with ap_fixed: {q.fmt.ap_type} v; v.range() = code;")
    return out


def _meta(ident: str, item: ExportItem, typedefs: bool) -> list[str]:
    q = item.quant
    macro = ident.upper()
    lines = [
        f"#define {macro}_SIZE {int(math.prod(item.shape))}",
        f"#define {macro}_NDIM {len(item.shape)}",
    ]
    if item.shape:
        dims = ", ".join(str(d) for d in item.shape)
        lines.append(
            f"static const uint32_t {ident}_shape[{len(item.shape)}] WV_UNUSED = {{{dims}}};"
        )
    if q.fmt.kind == "fixed":
        lines.append(f"#define {macro}_TOTAL_BITS {q.fmt.bits}")
        lines.append(f"#define {macro}_FRAC_BITS {q.fmt.frac_bits}")
        if typedefs:
            lines += ["#ifdef WV_USE_AP_FIXED", f"typedef {q.fmt.ap_type} {ident}_t;", "#endif"]
    if q.fmt.kind == "affine" and q.scale is not None and q.zero_point is not None:
        scales = [
            np.format_float_scientific(np.float32(s), unique=True) + "f" for s in q.scale.ravel()
        ]
        zps = [str(int(z)) for z in q.zero_point.ravel()]
        axis = "per tensor" if q.axis is None else f"per channel along axis {q.axis}"
        lines.append(f"/* {ident}: real = ({ident}[i] - zero_point) * scale, {axis} */")
        lines.append(f"#define {macro}_SCALE_COUNT {len(scales)}")
        lines.append(
            f"static const float {ident}_scale[{len(scales)}] WV_UNUSED = {{\n{_rows(scales)}\n}};"
        )
        lines.append(
            f"static const int32_t {ident}_zero_point[{len(zps)}] WV_UNUSED = {{\n{_rows(zps)}\n}};"
        )
    return lines


def write_c_header(
    memory: Memory,
    items: Sequence[ExportItem],
    *,
    comments: Sequence[str] = (),
    align: int = 16,
    typedefs: bool = False,
) -> str:
    guard = _guard(memory.file.rsplit(".", 1)[0] if memory.file else memory.name)
    parts = ["/* " + "\n * ".join(comments) + "\n */"] if comments else []
    parts += [f"#ifndef {guard}", f"#define {guard}", "", "#include <stdint.h>"]
    kinds = {it.quant.fmt.name for it in items}
    if "float32" in kinds:
        parts.append("#include <math.h>")
    if typedefs and any(it.quant.fmt.kind == "fixed" for it in items):
        parts += ["#ifdef WV_USE_AP_FIXED", '#include "ap_fixed.h"', "#endif"]
    parts += ["", _ALIGN_MACRO]
    if is_typed(memory, items):
        item = items[0]
        ident = item.ident
        fmt = item.quant.fmt
        parts.append("/* " + "\n * ".join(_tensor_comment(item)) + "\n */")
        parts += _meta(ident, item, typedefs)
        codes = [int(c) for c in item.flat_codes]
        if fmt.name == "float32":
            ctype, values = "float", [_float_literal(c) for c in codes]
        else:
            ctype, values = str(fmt.container()) + "_t", [str(c) for c in codes]
        n = max(len(values), 1)
        body = _rows(values) if values else "    0"
        parts.append(
            f"WV_ALIGN({align}) static const {ctype} {ident}[{n}] WV_UNUSED = {{\n{body}\n}};"
        )
    else:
        wtype = _word_type(memory.width)
        mident = c_identifier(memory.name)
        digits = max(1, -(-memory.width // 4))
        for item, seg in zip(items, memory.segments, strict=True):
            parts.append("/* " + "\n * ".join(_tensor_comment(item)) + "\n */")
            parts.append(f"#define {item.ident.upper()}_BASE {seg.base}")
            parts.append(f"#define {item.ident.upper()}_WORDS {seg.words}")
            parts += _meta(item.ident, item, typedefs)
            parts.append("")
        words = memory.padded_words()
        values = [f"0x{w:0{digits}X}u" for w in words] or ["0x0u"]
        parts.append(f"/* memory {memory.name}: {memory.width}-bit words */")
        parts.append(f"#define {mident.upper()}_DEPTH {max(len(words), 1)}")
        parts.append(f"#define {mident.upper()}_WIDTH {memory.width}")
        parts.append(
            f"WV_ALIGN({align}) static const {wtype} {mident}[{len(values)}] WV_UNUSED = {{\n{_rows(values)}\n}};"
        )
    parts += ["", f"#endif /* {guard} */", ""]
    return "\n".join(parts)


def write_map_header(memories: Sequence[Memory], comments: Sequence[str] = ()) -> tuple[str, str]:
    """Base addresses as a C header and as a Verilog header (``localparam``)."""
    c_lines = ["/* " + "\n * ".join(comments) + "\n */"] if comments else []
    c_lines += ["#ifndef WV_MEMORY_MAP_H_", "#define WV_MEMORY_MAP_H_", ""]
    v_lines = [f"// {c}" for c in comments]
    for mem in memories:
        mid = c_identifier(mem.name).upper()
        c_lines += [
            f"/* memory {mem.name}: {mem.width}-bit words, depth {mem.declared_depth} */",
            f"#define {mid}_WIDTH {mem.width}",
            f"#define {mid}_DEPTH {mem.declared_depth}",
        ]
        v_lines += [
            f"// memory {mem.name}",
            f"localparam integer {mid}_WIDTH = {mem.width};",
            f"localparam integer {mid}_DEPTH = {mem.declared_depth};",
        ]
        for seg in mem.segments:
            sid = c_identifier(seg.name).upper()
            c_lines.append(
                f"#define {sid}_BASE 0x{seg.base:X}u /* {seg.words} words, "
                f"shape {list(seg.shape)}, {seg.number} */"
            )
            c_lines.append(f"#define {sid}_WORDS {seg.words}u")
            v_lines.append(
                f"localparam integer {sid}_BASE = {seg.base}; // {seg.words} words, "
                f"shape {list(seg.shape)}, {seg.number}"
            )
            v_lines.append(f"localparam integer {sid}_WORDS = {seg.words};")
        c_lines.append("")
    c_lines.append("#endif /* WV_MEMORY_MAP_H_ */")
    return "\n".join(c_lines) + "\n", "\n".join(v_lines) + "\n"


_NUM = r"[-+]?(?:0[xX][0-9a-fA-F]+|[0-9.]+(?:[eE][-+]?\d+)?|NAN|INFINITY)[uUlLfF]*"


def parse_c_array(text: str, ident: str, path: str | None = None) -> list[Any]:
    """The initializer of array ``ident`` as Python ints or floats."""
    m = re.search(
        rf"\b{re.escape(ident)}\s*\[\s*\d*\s*\]\s*(?:WV_UNUSED\s*)?=\s*\{{(?P<body>[^}}]*)\}}\s*;",
        text,
    )
    if not m:
        raise InvalidHeaderError(f"C header has no array {ident!r}", path=path)
    body = re.sub(r"/\*.*?\*/", " ", m.group("body"), flags=re.DOTALL)
    out: list[Any] = []
    for tok in (t.strip() for t in body.split(",")):
        if not tok:
            continue
        if not re.fullmatch(_NUM, tok):
            raise InvalidHeaderError(f"bad C array element {tok!r} in {ident}", path=path)
        out.append(_c_number(tok))
    return out


def _c_number(tok: str) -> Any:
    core = tok.rstrip("uUlL")
    neg = core.startswith("-")
    bare = core.lstrip("+-")
    if bare in ("NAN", "INFINITY"):
        v = float("nan") if bare == "NAN" else float("inf")
        return -v if neg else v
    if bare.lower().startswith("0x"):
        v_int = int(bare, 16)
        return -v_int if neg else v_int
    if re.fullmatch(r"\d+", bare):
        return -int(bare) if neg else int(bare)
    return float(core.rstrip("fF"))


def write_file(job: MemoryFile) -> None:
    """``WRITERS["c"]``: one memory as a C header."""
    text = write_c_header(
        job.memory,
        job.members,
        comments=job.comments,
        align=job.options["c_align"],
        typedefs=job.options["c_typedefs"],
    )
    job.target.write_text(text, encoding="ascii")


def read_words(path: Path, memory: dict[str, Any], radix: int) -> list[int]:
    """``WORD_READERS["c"]``: the words of the memory's array in a header export-hw wrote."""
    tokens = parse_c_array(read_text(path, "ascii"), c_identifier(memory["name"]), path=str(path))
    return [int(t) for t in tokens]
