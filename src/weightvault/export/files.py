"""The file formats ``export-hw`` writes and reads back, as two lazy tables.

Each kind of memory file (``coe``, ``mif``, ``mem``/``hex`` for ``$readmemh``/``$readmemb``,
``c`` headers, ``txt``, ``npy``) names the function that writes one file and, for the memory
formats, the function that reads its words back. Adding a kind is one row in each table and the
two functions in its module; :mod:`.api` and :mod:`.reader` look kinds up here instead of
branching over them, and import a kind's module only when a folder of that kind is handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightvault.core.lazy import LazyTable
from weightvault.errors import InvalidHeaderError, TruncatedFileError

if TYPE_CHECKING:
    from weightvault.export.api import ExportItem
    from weightvault.export.layout import Memory

__all__ = ["WORD_READERS", "WRITERS", "MemoryFile", "read_text"]


@dataclass
class MemoryFile:
    """One file to write: a memory (for ``txt``, one tensor's) and what its writer needs."""

    target: Path
    memory: Memory
    #: the export items placed in this memory
    members: list[ExportItem]
    #: the memory's entry in export.json
    description: dict[str, Any]
    radix: int
    #: comment lines for the file's header (source, number format, lanes, order)
    comments: list[str]
    #: export_hw's file options (c_align, c_typedefs, precision, linewidth...)
    options: dict[str, Any]
    #: the whole export.json being built (``txt`` records per tensor whether text is exact)
    sidecar: dict[str, Any]


#: kind -> ``write(job: MemoryFile) -> None``
WRITERS = LazyTable(
    {
        "coe": "weightvault.export.coe:write_file",
        "mif": "weightvault.export.mif:write_file",
        "mem": "weightvault.export.readmem:write_file",
        "hex": "weightvault.export.readmem:write_file",
        "c": "weightvault.export.c_header:write_file",
        "txt": "weightvault.export.api:write_text_file",
        "npy": "weightvault.export.api:write_npy_file",
    },
    what="export file format",
)

#: kind -> ``read_words(path, memory_entry, radix) -> list[int]`` (``txt`` holds values, not words)
WORD_READERS = LazyTable(
    {
        "coe": "weightvault.export.coe:read_words",
        "mif": "weightvault.export.mif:read_words",
        "mem": "weightvault.export.readmem:read_words",
        "hex": "weightvault.export.readmem:read_words",
        "c": "weightvault.export.c_header:read_words",
        "npy": "weightvault.export.reader:npy_words",
    },
    what="export memory file format",
)


def read_text(p: Path, encoding: str) -> str:
    """A memory or text file as text: bytes that are not ``encoding`` are a damaged export."""
    try:
        return p.read_bytes().decode(encoding)
    except OSError as exc:
        raise TruncatedFileError(
            f"a file export.json names cannot be read: {exc.strerror or exc}", path=p
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidHeaderError(
            f"byte {exc.start} is not {encoding.upper()}: not a text file written by export-hw",
            path=p,
        ) from None
