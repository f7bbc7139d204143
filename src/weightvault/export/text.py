"""Plain-text values with the print options of ``weightvault show``.

The text holds the *values the codes stand for* (dequantized), shaped like the exported tensor, in
``numpy.array2string`` layout: what people paste into hand-written initialisers. With the default
``precision=None`` every value is printed with the fewest digits that read back to exactly the
same float64 (for fixed point that is at most F decimals, the hls4ml rule), so the file is exact;
an explicit precision, a summarising threshold or ``sci`` may round, and the sidecar records
whether the text reads back exactly (``text_exact``).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np

from weightvault.errors import InvalidHeaderError

__all__ = ["parse_text", "write_text"]


def write_text(
    values: np.ndarray,
    header: list[str],
    *,
    precision: int | None = None,
    linewidth: int = 80,
    threshold: int | None = None,
    edgeitems: int = 3,
    sci: bool | None = None,
) -> str:
    arr = np.asarray(values, dtype=np.float64)
    limit = sys.maxsize if threshold is None else threshold
    if precision is None and sci is None:
        body = np.array2string(
            arr,
            separator=", ",
            max_line_width=linewidth,
            threshold=limit,
            edgeitems=edgeitems,
            floatmode="unique",
        )
    else:
        from weightvault.inspect import format_values

        body = format_values(
            arr,
            precision=8 if precision is None else precision,
            linewidth=linewidth,
            threshold=limit,
            edgeitems=edgeitems,
            sci=sci,
        )
    return "".join(f"# {h}\n" for h in header) + body + "\n"


def parse_text(text: str, path: str | None = None) -> np.ndarray:
    """The numbers of a text file written by :func:`write_text`, flat, as float64."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if "..." in body:
        raise InvalidHeaderError(
            "text export is summarised ('...'); export again with a larger --threshold",
            path=path,
        )
    tokens = [t for t in re.split(r"[\[\],\s]+", body) if t]
    values: list[Any] = []
    for tok in tokens:
        try:
            values.append(float(tok))
        except ValueError:
            raise InvalidHeaderError(f"not a number in text export: {tok!r}", path=path) from None
    return np.asarray(values, dtype=np.float64)
