"""Export weights for embedded hardware: quantize, split, lay out, write BRAM/ROM/C files.

``weightvault.export_hw(src, outdir, file_format=..., number=...)`` writes the files plus an
``export.json`` sidecar; ``weightvault.import_hw(outdir)`` (or ``weightvault.open(outdir)``) reads
them back. See ``docs/export-hw.md`` for the conventions (rounding, overflow, sign, lane order).
"""

from __future__ import annotations

from weightvault.export.api import ExportReport, export_hw, import_hw
from weightvault.export.numbers import NumberFormat, dequantize, parse_number_format, quantize

__all__ = [
    "ExportReport",
    "NumberFormat",
    "dequantize",
    "export_hw",
    "import_hw",
    "parse_number_format",
    "quantize",
]
