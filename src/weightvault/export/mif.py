"""Intel/Altera ``.mif`` memory initialisation files (Quartus).

Header ``WIDTH`` (bits per word), ``DEPTH`` (number of words), ``ADDRESS_RADIX``, ``DATA_RADIX``,
then ``CONTENT BEGIN``, one ``address : data;`` line per word (every address written), a
``[a..b] : 0;`` fill when the declared depth is larger than the data, and ``END;``. Comments are
``-- ...`` lines. Data is the unsigned word pattern: radix 10 is written as ``UNS`` (``DEC`` would
mean signed and would need the lane layout to interpret).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from weightvault.errors import InvalidHeaderError
from weightvault.export.coe import format_word
from weightvault.export.files import MemoryFile, read_text
from weightvault.export.layout import Memory

__all__ = ["parse_mif", "write_mif"]

_RADIX_NAMES = {2: "BIN", 8: "OCT", 10: "UNS", 16: "HEX"}
_RADIX_BASE = {"BIN": 2, "OCT": 8, "DEC": 10, "UNS": 10, "HEX": 16}


def write_mif(memory: Memory, radix: int = 16, comments: list[str] | None = None) -> str:
    if radix not in _RADIX_NAMES:
        raise InvalidHeaderError(f"MIF data radix must be 2, 8, 10 or 16, not {radix}")
    depth = memory.declared_depth
    lines = [f"-- {c}" for c in comments or []]
    lines += [f"-- {s.name}: base {s.base} words {s.words}" for s in memory.segments]
    lines += [
        f"WIDTH={memory.width};",
        f"DEPTH={max(depth, 1)};",
        "ADDRESS_RADIX=HEX;",
        f"DATA_RADIX={_RADIX_NAMES[radix]};",
        "CONTENT BEGIN",
    ]
    digits = memory.address_digits()
    for addr, word in enumerate(memory.words):
        data = format(word, "o") if radix == 8 else format_word(word, memory.width, radix)
        lines.append(f"\t{addr:0{digits}X} : {data};")
    used = len(memory.words)
    if used < max(depth, 1):
        last = max(depth, 1) - 1
        lines.append(f"\t[{used:0{digits}X}..{last:0{digits}X}] : 0;")
    lines.append("END;")
    return "\n".join(lines) + "\n"


_HEADER_RE = re.compile(
    r"^\s*(WIDTH|DEPTH|ADDRESS_RADIX|DATA_RADIX)\s*=\s*(\w+)\s*;\s*$", re.IGNORECASE
)
_ENTRY_RE = re.compile(r"^\s*(\[\s*(\w+)\s*\.\.\s*(\w+)\s*\]|\w+)\s*:\s*([^;]+);\s*$")


def parse_mif(text: str, path: str | None = None) -> tuple[dict[str, str], list[int]]:
    """Return ``(header, words)`` with every word out to DEPTH (fills expanded)."""
    header: dict[str, str] = {}
    content: dict[int, int] = {}
    state = "header"
    text = re.sub(r"%[^%]*%", " ", text)  # block comments
    for raw in text.splitlines():
        line = raw.split("--", 1)[0].strip()
        if not line:
            continue
        if state == "header":
            if m := _HEADER_RE.match(line):
                header[m.group(1).upper()] = m.group(2).upper()
            elif re.fullmatch(r"CONTENT\s+BEGIN", line, re.IGNORECASE):
                state = "content"
            elif line.upper() == "CONTENT":
                state = "begin"
            else:
                raise InvalidHeaderError(f"unexpected MIF header line {line!r}", path=path)
        elif state == "begin":
            if line.upper() != "BEGIN":
                raise InvalidHeaderError("MIF 'CONTENT' not followed by 'BEGIN'", path=path)
            state = "content"
        elif state == "content":
            if re.fullmatch(r"END\s*;", line, re.IGNORECASE):
                state = "end"
                continue
            _parse_entry(line, header, content, path)
        else:
            raise InvalidHeaderError(f"text after 'END;': {line!r}", path=path)
    if state != "end":
        raise InvalidHeaderError("MIF file lacks 'CONTENT BEGIN ... END;'", path=path)
    for key in ("WIDTH", "DEPTH"):
        if key not in header:
            raise InvalidHeaderError(f"MIF header lacks {key}", path=path)
    depth = int(header["DEPTH"])
    if content and max(content) >= depth:
        raise InvalidHeaderError(f"MIF address {max(content)} beyond DEPTH={depth}", path=path)
    return header, [content.get(a, 0) for a in range(depth)]


def _parse_entry(
    line: str, header: dict[str, str], content: dict[int, int], path: str | None
) -> None:
    m = _ENTRY_RE.match(line)
    if not m:
        raise InvalidHeaderError(f"bad MIF content line {line!r}", path=path)
    radixes = (header.get("ADDRESS_RADIX", "HEX"), header.get("DATA_RADIX", "HEX"))
    unknown = [r for r in radixes if r not in _RADIX_BASE]
    if unknown:
        raise InvalidHeaderError(
            f"MIF radix {unknown[0]!r} is not one of {', '.join(_RADIX_BASE)}", path=path
        )
    abase, dbase = (_RADIX_BASE[r] for r in radixes)
    try:
        values = [int(v, dbase) for v in m.group(4).split()]
        if m.group(2) is not None:
            start, stop = int(m.group(2), abase), int(m.group(3), abase)
            for i, addr in enumerate(range(start, stop + 1)):
                content[addr] = values[i % len(values)]
        else:
            start = int(m.group(1), abase)
            for i, value in enumerate(values):
                content[start + i] = value
    except ValueError as exc:
        raise InvalidHeaderError(f"bad MIF number in {line!r}: {exc}", path=path) from None


def write_file(job: MemoryFile) -> None:
    """``WRITERS["mif"]``: one memory as a ``.mif`` file."""
    job.target.write_text(write_mif(job.memory, job.radix, job.comments), encoding="ascii")


def read_words(path: Path, memory: dict[str, Any], radix: int) -> list[int]:
    """``WORD_READERS["mif"]``: the words of a ``.mif`` file; its WIDTH must be export.json's."""
    header, words = parse_mif(read_text(path, "ascii"), path=str(path))
    width = int(memory["width"])
    if int(header["WIDTH"]) != width:
        raise InvalidHeaderError(f"MIF WIDTH={header['WIDTH']}, sidecar says {width}", path=path)
    return words
