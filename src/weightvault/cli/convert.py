"""``weightvault convert SRC DST``: any readable format to any writable one, with layout rules."""

from __future__ import annotations

import click

from weightvault.cli.common import emit_json, json_option, print_table
from weightvault.cli.options import FormatOption, open_options, reader_options
from weightvault.rules import RULES


def _pairs(values: tuple[str, ...], sep: str, option: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        key, found, rest = value.partition(sep)
        if not found:
            raise click.BadParameter(f"{value!r} is not KEY{sep}VALUE", param_hint=option)
        out.append((key, rest))
    return out


def _by_reason(skipped: dict[str, str]) -> dict[str, list[str]]:
    """One line per reason, not per tensor (a TF1 checkpoint has two Adam slots per weight)."""
    out: dict[str, list[str]] = {}
    for name, why in skipped.items():
        out.setdefault(why, []).append(name)
    return out


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option(
    "--to",
    "to",
    cls=FormatOption,
    writable=True,
    default=None,
    metavar="FORMAT",
    help="Target format (default: from DST's name; native otherwise).",
)
@click.option("--rules", type=click.Choice(RULES), default=None, help="Layout rule set between frameworks.")
@click.option("--hint", "hints", multiple=True, metavar="LAYER=KIND", help="Layer kind where the file cannot tell (globs allowed).")
@click.option("--rename", "renames", multiple=True, metavar="REGEX=REPL", help="Rename target tensors (regex, applied in order).")
@click.option("--map", "name_map", default=None, type=click.Path(exists=True, dir_okay=False), help="JSON/YAML {name: new_name} file.")
@click.option("--ema", is_flag=True, help="Take EMA shadow weights in place of the raw ones (tf1-to-torch, --template frozen .pb).")
@click.option("--dry-run", is_flag=True, help="Print the plan without writing anything.")
@click.option(
    "--dtype",
    default=None,
    metavar="DTYPE",
    help="Cast floating tensors (float32, float16, bfloat16/bf16, float64); others stay.",
)
@click.option(
    "--include", multiple=True, metavar="GLOB", help="Convert only source tensors matching GLOB."
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Leave out source tensors matching GLOB."
)
@click.option(
    "--skip-unsupported",
    is_flag=True,
    help="Leave out what the target cannot hold (string tensors, unreadable entries); list them.",
)
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
    rules: str | None,
    hints: tuple[str, ...],
    renames: tuple[str, ...],
    name_map: str | None,
    ema: bool,
    dry_run: bool,
    dtype: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    skip_unsupported: bool,
    template: str | None,
    write_opts: tuple[str, ...],
    fmt: str | None,
    options: tuple[str, ...],
    names: str | None,
    as_json: bool,
) -> None:
    """Convert SRC into DST, tensor by tensor; with --rules, fix layouts for the target framework."""
    import weightvault

    write_options = reader_options(write_opts, None)
    if template:
        write_options["template"] = template
        if ema and rules is None:  # no rule set to take the shadows: the template writer does
            write_options.setdefault("use_ema", True)
    report = weightvault.convert(
        src,
        dst,
        to=to,
        src_format=fmt,
        read_options=reader_options(options, names),
        write_options=write_options,
        rules=rules,
        hints=dict(_pairs(hints, "=", "--hint")),
        rename=_pairs(renames, "=", "--rename"),
        name_map=name_map,
        rule_options={"use_ema": ema, "template": template},
        dry_run=dry_run,
        skip_unsupported=skip_unsupported,
        dtype=dtype,
        include=include,
        exclude=exclude,
    )
    doc = report.to_dict()
    if as_json:
        emit_json({**doc, "dry_run": dry_run})
        return
    if rules or renames or name_map or dry_run or dtype:
        print_table(
            ("source", "shape", "target", "shape", "transforms"),
            [
                (", ".join(r["sources"]) or "(constant)", " ".join(_shape(s) for s in r["source_shapes"]), r["target"], _shape(r["target_shape"]), r["transforms"])
                for r in doc["tensors"]
            ],
            fold=("source", "target"),
            wrap=("transforms",),
        )
        for note in doc["notes"]:
            click.echo(f"note: {note}")
    for line in dropped_summary(doc["dropped"]):
        click.echo(line)
    if doc["uncast"]:
        click.echo(f"not cast ({_grouped(doc['uncast'])}): only floating tensors take --dtype")
    for why, skipped in _by_reason(doc["skipped"]).items():
        shown = ", ".join(skipped[:3]) + (f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else "")
        click.echo(f"skipped {len(skipped)} ({why}): {shown}" if len(skipped) > 1 else f"skipped {shown}: {why}")
    verb = "would write" if dry_run else "wrote"
    written = sum(1 for r in doc["tensors"] if r["target"] not in doc["skipped"])
    click.echo(f"{verb} {doc['dst']} ({doc['dst_format']}, {written} tensors)")


def dropped_summary(dropped: dict[str, str], examples: int = 2) -> list[str]:
    """One line per reason, not per tensor: ``dropped 24 tensors: optimizer slot or bookkeeping
    (a/Adam, a/Adam_1, ...)``; ``--json`` keeps every name."""
    lines = []
    for why, names in _by_reason(dropped).items():
        shown = ", ".join(names[:examples]) + (", …" if len(names) > examples else "")
        noun = "tensor" if len(names) == 1 else "tensors"
        lines.append(f"dropped {len(names)} {noun}: {why} ({shown})")
    return lines


def _grouped(by_name: dict[str, str]) -> str:
    """``3 int64, 1 bool``."""
    counts: dict[str, int] = {}
    for dtype in by_name.values():
        counts[dtype] = counts.get(dtype, 0) + 1
    return ", ".join(f"{n} {d}" for d, n in counts.items())
