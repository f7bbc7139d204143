"""``export-hw`` and ``import-hw``: weights to BRAM/ROM/C initialisation files and back."""

from __future__ import annotations

from typing import Any

import click

from weightvault.cli.common import emit_json, json_option, print_table, warn
from weightvault.cli.options import print_options, reader_options

_FORMATS = ("coe", "mif", "mem", "hex", "c", "txt", "npy")
_ROUNDING = ("half-even", "half-away", "half-up", "truncate", "floor")


@click.command("export-hw")
@click.argument("checkpoint")
@click.argument("outdir")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(_FORMATS),
    default="coe",
    show_default=True,
    help="Output file format (mem and hex are $readmemh/b files).",
)
@click.option(
    "--number",
    default="float32",
    show_default=True,
    help="float32|float16|bfloat16, Q1.15, UQ8.8, ap_fixed<16,1>, ap_ufixed<8,4>, "
    "int8, int4, uint8.",
)
@click.option(
    "--rounding",
    type=click.Choice(_ROUNDING),
    default="half-even",
    show_default=True,
    help="Rounding of fixed point and affine integers (truncate = toward zero).",
)
@click.option(
    "--overflow",
    type=click.Choice(("saturate", "wrap")),
    default="saturate",
    show_default=True,
    help="Out-of-range fixed-point values: clamp or keep low bits.",
)
@click.option(
    "--per-channel",
    type=int,
    default=None,
    metavar="AXIS",
    help="Per-channel scales along AXIS for int formats (default: per tensor).",
)
@click.option(
    "--symmetric/--zero-point",
    default=True,
    show_default=True,
    help="int formats: zero point 0 and range +-(2^(b-1)-1), or a computed zero point.",
)
@click.option(
    "--radix",
    type=int,
    default=None,
    help="COE 2|10|16, MIF 2|8|10|16, mem/hex 16 ($readmemh) or 2 ($readmemb).",
)
@click.option(
    "--word-width",
    type=int,
    default=None,
    help="Bits per memory word (default lanes x value bits).",
)
@click.option(
    "--lanes",
    type=int,
    default=None,
    help="Values per word (default 1, or as many as fit in --word-width).",
)
@click.option(
    "--lane-order",
    type=click.Choice(("lsb", "msb")),
    default="lsb",
    show_default=True,
    help="Where lane 0 goes in a word.",
)
@click.option(
    "--bram-depth",
    type=int,
    default=None,
    help="Words per memory: fail if exceeded, pad files to it.",
)
@click.option(
    "--one-memory",
    default=None,
    metavar="NAME",
    help="Put every tensor into one memory NAME, with a memory map.",
)
@click.option(
    "--align",
    type=int,
    default=1,
    show_default=True,
    help="Base address alignment (words) within --one-memory.",
)
@click.option("--include", multiple=True, metavar="GLOB", help="Export only matching tensors.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip matching tensors.")
@click.option(
    "--split",
    multiple=True,
    metavar="NAME:AXIS:PARTS[:names]",
    help="Split fused tensors, e.g. 'gru.weight_*:0:gru' (r,z,n), 'lstm.*:0:lstm'.",
)
@click.option("--transpose", multiple=True, metavar="NAME:PERM", help="e.g. 'fc*.weight:1,0'.")
@click.option("--reshape", multiple=True, metavar="NAME:SHAPE", help="e.g. 'conv.weight:12,-1'.")
@click.option(
    "--order",
    type=click.Choice(("C", "F")),
    default="C",
    show_default=True,
    help="Flatten order: C row-major, F column-major.",
)
@print_options(precision=None, threshold=None, scope="txt")
@click.option("--c-typedefs", is_flag=True, help="c: emit ap_fixed typedefs (hls4ml style).")
@click.option("--c-align", type=int, default=16, show_default=True, help="c: array alignment.")
@click.option("--input-format", default=None, help="Force the checkpoint's format.")
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Reader option for the checkpoint.",
)
@json_option
def export_hw(
    checkpoint: str,
    outdir: str,
    file_format: str,
    input_format: str | None,
    options: tuple[str, ...],
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Quantize and write tensors of CHECKPOINT as COE/MIF/mem/C/text files in OUTDIR."""
    import weightvault
    from weightvault.export.api import export_hw as run_export

    kwargs["include"] = list(kwargs["include"]) or None
    kwargs["exclude"] = list(kwargs["exclude"]) or None
    with weightvault.open(
        checkpoint, format=input_format, **reader_options(options, None)
    ) as reader:
        report = run_export(reader, outdir, file_format=file_format, **kwargs)
    for line in report.warnings:
        warn(line)
    for line in report.notes:
        click.echo(f"NOTE {line}", err=True)
    if as_json:
        emit_json(report.to_dict())
        return
    right = dict.fromkeys(("max_abs_err", "rms_err", "saturated", "base", "words"), "right")
    files = sorted({t["file"] for t in report.tensors})
    print_table(
        report.COLUMNS,
        report.rows(),
        justify=right,
        footer=f"wrote {len(files)} {file_format} file(s) and export.json to {outdir}",
        fold=("name", "file"),
    )


@click.command("import-hw")
@click.argument("export_dir")
@click.argument("out")
@click.option(
    "--codes",
    is_flag=True,
    help="Store the integer codes of the exported tensors (implies --as-exported).",
)
@click.option(
    "--as-exported",
    is_flag=True,
    help="Keep split parts, transposes and reshapes as exported (float32 values); by default "
    "the source tensors are rebuilt under their names, shapes and dtypes.",
)
@json_option
def import_hw(export_dir: str, out: str, codes: bool, as_exported: bool, as_json: bool) -> None:
    """Read an export-hw folder (or one file in it) back and save the tensors to OUT."""
    import weightvault
    from weightvault.export.api import import_hw as run_import

    layout = "exported" if codes or as_exported else "source"
    tensors = run_import(export_dir, values="codes" if codes else "dequantized", layout=layout)
    weightvault.save(tensors, out)
    bounds: dict[str, float] = getattr(tensors, "bounds", {})
    atol = _atol_for(bounds.values()) if bounds else None
    if as_json:
        emit_json(
            {
                "source": export_dir,
                "out": out,
                "layout": layout,
                "atol": atol,
                "tensors": [
                    {
                        "name": n,
                        "dtype": str(a.dtype),
                        "shape": list(a.shape),
                        **({"max_abs_err": bounds[n]} if n in bounds else {}),
                    }
                    for n, a in tensors.items()
                ],
            }
        )
        return
    rows = [[n, str(a.dtype), "x".join(map(str, a.shape)) or "scalar"] for n, a in tensors.items()]
    footer = f"wrote {len(rows)} tensors to {out}"
    if atol is not None:
        footer += (
            f"\nsource layout rebuilt; values are within {atol:.3g} of the source "
            f"(check: weightvault diff SOURCE {out} --atol {atol:.3g})"
        )
    print_table(("name", "dtype", "shape"), rows, footer=footer, fold=("name",))


def _atol_for(bounds: Any) -> float:
    """A tolerance ``diff --atol`` accepts for every tensor, printed with 3 digits: round up."""
    import math

    worst = max(bounds, default=0.0)
    if worst <= 0 or not math.isfinite(worst):
        return worst
    digits = 10 ** (math.floor(math.log10(worst)) - 2)
    return math.ceil(worst * (1 + 1e-9) / digits) * digits
