"""``weightvault convert SRC DST``: any readable format to any writable one."""

from __future__ import annotations

import click

from weightvault.cli.common import emit_json, json_option
from weightvault.cli.options import open_options, reader_options


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--to", "to", default=None, help="Target format (default: from DST's name; native otherwise).")
@click.option("--template", default=None, help="Existing model whose weights are replaced (onnx, frozen .pb).")
@click.option(
    "-w",
    "--write-option",
    "write_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Format-specific write option (VALUE parsed as JSON when it can be).",
)
@open_options
@json_option
def convert(
    src: str,
    dst: str,
    to: str | None,
    template: str | None,
    write_opts: tuple[str, ...],
    fmt: str | None,
    options: tuple[str, ...],
    names: str | None,
    as_json: bool,
) -> None:
    """Convert SRC into DST, tensor by tensor."""
    import weightvault

    write_options = reader_options(write_opts, None)
    if template:
        write_options["template"] = template
    out = weightvault.convert(
        src,
        dst,
        to=to,
        src_format=fmt,
        read_options=reader_options(options, names),
        write_options=write_options,
    )
    with weightvault.open(out) as reader:
        count, fmt_out = len(reader), reader.format
    if as_json:
        emit_json({"src": src, "dst": str(out), "format": fmt_out, "tensors": count})
    else:
        click.echo(f"wrote {out} ({fmt_out}, {count} tensors)")
