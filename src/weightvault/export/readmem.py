"""Verilog ``$readmemh`` / ``$readmemb`` memory files (``.mem`` / ``.hex``).

Only numbers, ``//`` comments and ``@addr`` lines: no ``0x`` prefix, no width. One word per line,
``ceil(W/4)`` hex digits (or ``W`` binary digits for ``$readmemb``). ``@addr`` is the word index in
hex, even for ``$readmemb``; it is written before each tensor's segment when several tensors share
a memory, so a reader does not depend on counting lines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from weightvault.errors import InvalidHeaderError
from weightvault.export.coe import format_word
from weightvault.export.files import MemoryFile, read_text
from weightvault.export.layout import Memory

__all__ = ["parse_readmem", "write_readmem"]


def write_readmem(memory: Memory, radix: int = 16, comments: list[str] | None = None) -> str:
    if radix not in (2, 16):
        raise InvalidHeaderError(f"$readmem files are hex (16) or binary (2), not radix {radix}")
    call = "$readmemh" if radix == 16 else "$readmemb"
    lines = [f"// {c}" for c in comments or []]
    lines.append(
        f"// for: reg [{memory.width - 1}:0] mem [0:{max(memory.declared_depth, 1) - 1}]; "
        f'{call}("{memory.file}", mem);'
    )
    shared = len(memory.segments) > 1
    starts = {s.base: s for s in memory.segments}
    digits = memory.address_digits()
    for addr, word in enumerate(memory.words):
        seg = starts.get(addr)
        if seg is not None and (shared or addr):
            lines.append(f"// {seg.name}: {seg.words} words")
            lines.append(f"@{addr:0{digits}X}")
        lines.append(format_word(word, memory.width, radix))
    return "\n".join(lines) + "\n"


_COMMENTS_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


def parse_readmem(text: str, radix: int, path: str | None = None) -> dict[int, int]:
    """Return ``{address: word}`` as a simulator would load it."""
    out: dict[int, int] = {}
    addr = 0
    for token in _COMMENTS_RE.sub(" ", text).split():
        if token.startswith("@"):
            try:
                addr = int(token[1:], 16)
            except ValueError:
                raise InvalidHeaderError(f"bad $readmem address {token!r}", path=path) from None
            continue
        digits = token.replace("_", "")
        if radix == 2 and not re.fullmatch(r"[01]+", digits):
            raise InvalidHeaderError(f"$readmemb file holds non-binary {token!r}", path=path)
        try:
            out[addr] = int(digits, radix)
        except ValueError:
            raise InvalidHeaderError(f"bad $readmem value {token!r}", path=path) from None
        addr += 1
    return out


def write_file(job: MemoryFile) -> None:
    """``WRITERS["mem"]`` and ``["hex"]``: one memory as a ``$readmemh``/``$readmemb`` file."""
    job.target.write_text(write_readmem(job.memory, job.radix, job.comments), encoding="ascii")


def read_words(path: Path, memory: dict[str, Any], radix: int) -> list[int]:
    """``WORD_READERS["mem"]`` and ``["hex"]``: the words, addresses not written are zero."""
    by_addr = parse_readmem(read_text(path, "ascii"), radix, path=str(path))
    depth = max(by_addr) + 1 if by_addr else 0
    return [by_addr.get(a, 0) for a in range(depth)]
