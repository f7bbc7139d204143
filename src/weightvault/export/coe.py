"""Xilinx/AMD ``.coe`` memory initialisation files (Block/Distributed Memory Generator).

Syntax (UG896 "COE File Syntax"): ``;`` starts a comment, so header comments are ``; ...`` lines;
``memory_initialization_radix=R;`` (2, 10 or 16) comes first and ``memory_initialization_vector=``
last, with one word per line, values separated by ``,`` and the vector terminated by the first
``;``. Words are written as the unsigned bit pattern (two's complement for negatives, because old
cores could not parse negative decimals), with a fixed number of digits in radix 2 and 16.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from weightvault.errors import InvalidHeaderError
from weightvault.export.files import MemoryFile, read_text
from weightvault.export.layout import Memory

__all__ = ["parse_coe", "write_coe"]

RADIXES = (2, 10, 16)


def format_word(word: int, width: int, radix: int) -> str:
    if radix == 16:
        return format(word, f"0{max(1, -(-width // 4))}X")
    if radix == 2:
        return format(word, f"0{width}b")
    return str(word)


def write_coe(memory: Memory, radix: int = 16, comments: list[str] | None = None) -> str:
    if radix not in RADIXES:
        raise InvalidHeaderError(f"COE radix must be 2, 10 or 16, not {radix}")
    lines = [f"; {c}" for c in comments or []]
    words = memory.padded_words()
    lines.append(f"; width={memory.width} depth={len(words)}")
    lines += [f"; {s.name}: base {s.base} words {s.words}" for s in memory.segments]
    lines.append(f"memory_initialization_radix={radix};")
    lines.append("memory_initialization_vector=")
    body = [format_word(w, memory.width, radix) for w in words]
    if not body:  # an empty vector still needs its terminator; one zero word keeps cores happy
        body = ["0"]
    lines.append(",\n".join(body) + ";")
    return "\n".join(lines) + "\n"


_KEY_RE = re.compile(r"^\s*(\w+)\s*=\s*(.*)$", re.DOTALL)


def parse_coe(text: str, path: str | None = None) -> tuple[int, list[int]]:
    """Return ``(radix, words)``; raise InvalidHeaderError naming what is wrong."""
    radix: int | None = None
    vector: str | None = None
    rest = text
    while rest.strip():
        stripped = rest.lstrip()
        if stripped.startswith(";"):  # a comment line
            rest = stripped.split("\n", 1)[1] if "\n" in stripped else ""
            continue
        statement, sep, rest = stripped.partition(";")
        if not sep:
            raise InvalidHeaderError(
                f"COE statement not terminated by ';': {statement[:40]!r}", path=path
            )
        m = _KEY_RE.match(statement)
        if not m:
            raise InvalidHeaderError(f"not a COE 'keyword=value': {statement[:40]!r}", path=path)
        key, value = m.group(1).lower(), m.group(2)
        if key == "memory_initialization_radix":
            radix = int(value.strip()) if value.strip().isdigit() else -1
            if radix not in RADIXES:
                raise InvalidHeaderError(f"COE radix {radix} is not 2, 10 or 16", path=path)
        elif key == "memory_initialization_vector":
            vector = value
            break  # the vector must be the last keyword; anything after it is ignored
        else:
            raise InvalidHeaderError(f"unexpected COE keyword {key!r}", path=path)
    if radix is None or vector is None:
        raise InvalidHeaderError("COE file lacks memory_initialization_radix or _vector", path=path)
    tokens = [t for t in re.split(r"[,\s]+", vector) if t]
    try:
        return radix, [int(t, radix) for t in tokens]
    except ValueError as exc:
        raise InvalidHeaderError(f"COE value not in radix {radix}: {exc}", path=path) from None


def write_file(job: MemoryFile) -> None:
    """``WRITERS["coe"]``: one memory as a ``.coe`` file."""
    job.target.write_text(write_coe(job.memory, job.radix, job.comments), encoding="ascii")


def read_words(path: Path, memory: dict[str, Any], radix: int) -> list[int]:
    """``WORD_READERS["coe"]``: the words of a ``.coe`` file export-hw wrote."""
    _, words = parse_coe(read_text(path, "ascii"), path=str(path))
    return words
