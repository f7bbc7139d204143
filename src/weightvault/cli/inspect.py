"""``ls``, ``show``, ``stats``, ``diff``, ``verify`` and ``formats``: looking inside weight files."""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from weightvault.cli import EXIT_DIFFERS
from weightvault.cli.common import emit_json, human_bytes, json_option, print_table
from weightvault.cli.options import open_options, print_options, reader_options


def _open(path: str, fmt: str | None, options: tuple[str, ...], names: str | None) -> Any:
    import weightvault

    return weightvault.open(path, format=fmt, **reader_options(options, names))


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@click.command()
@click.argument("path")
@click.option("--tree", is_flag=True, help="Show names as a tree of modules.")
@open_options
@json_option
def ls(path: str, tree: bool, fmt: str | None, options: tuple[str, ...], names: str | None, as_json: bool) -> None:
    """List the tensors of PATH: name, dtype, shape, size, and how many are model parameters
    (optimizer slots, EMA copies, running statistics and counters are counted apart); then the
    other values it holds (step, epoch, lr, metrics, metadata), which `show PATH NAME` prints."""
    from weightvault.cli.state import state_values
    from weightvault.core.roles import count_by_role, parameter_summary, tensor_role

    with _open(path, fmt, options, names) as reader:
        infos = reader.infos()
        roles = count_by_role(infos)
        total_bytes = sum(i.nbytes for i in infos)
        metadata = reader.metadata
        skipped = reader.skipped
        state = state_values(reader)
        if as_json:
            emit_json(
                {
                    "path": path,
                    "format": reader.format,
                    "tensors": [{**i.to_dict(), "role": tensor_role(i.name, i.dtype, i.shape)} for i in infos],
                    "total_parameters": roles["model"],
                    "parameters": roles,
                    "total_elements": sum(roles.values()),
                    "total_bytes": total_bytes,
                    "metadata": metadata,
                    "state": [v.to_dict() for v in state],
                    "skipped": skipped,
                }
            )
            return
        if tree:
            _print_tree(reader.format, path, infos)
        else:
            rows = [(i.name, i.dtype, _shape(i.shape), human_bytes(i.nbytes)) for i in infos]
            print_table(
                ("name", "dtype", "shape", "size"),
                rows,
                justify={"size": "right"},
                fold=("name",),
            )
        _print_state(state)
        click.echo(
            f"{len(infos)} tensors, {parameter_summary(roles)}, {human_bytes(total_bytes)} "
            f"({reader.format})"
        )
        for line in _checkpoint_list(metadata):
            click.echo(line)
        if skipped:  # entries no reader call returns: never hidden
            click.echo(f"{len(skipped)} entries not readable as tensors:")
            for name, why in skipped.items():
                click.echo(f"  {name}: {why}")


def _print_state(state: list[Any]) -> None:
    """The non-tensor values after the tensors (long values cut here, whole in `show`)."""
    from weightvault.cli.state import _MAX_TABLE_VALUE

    if not state:
        return
    click.echo("")
    print_table(
        ("name", "type", "value"),
        [(v.path, v.type, v.text(_MAX_TABLE_VALUE)) for v in state],
        fold=("name",),
        wrap=("value",),
    )


def _checkpoint_list(metadata: dict[str, Any]) -> list[str]:
    """Other checkpoints named by the file (a TF run directory's `checkpoint` file)."""
    checkpoints = metadata.get("checkpoints")
    if not isinstance(checkpoints, list) or not checkpoints:
        return []
    lines = [f"checkpoints in this directory ({len(checkpoints)}):"]
    for entry in checkpoints:
        if isinstance(entry, dict):
            mark = "" if entry.get("exists", True) else "  (missing)"
            latest = "  <- latest" if entry.get("latest") else ""
            lines.append(f"  {entry.get('prefix', entry.get('path'))}{mark}{latest}")
        else:
            lines.append(f"  {entry}")
    return lines


def _print_tree(fmt: str, path: str, infos: list[Any]) -> None:
    from rich.tree import Tree

    from weightvault.cli.common import console

    root = Tree(f"{path} ({fmt})")
    nodes: dict[str, Any] = {"": root}
    for info in infos:
        parts = info.name.replace("/", ".").split(".")
        prefix = ""
        for part in parts[:-1]:
            key = f"{prefix}.{part}" if prefix else part
            if key not in nodes:
                nodes[key] = nodes[prefix].add(part)
            prefix = key
        nodes[prefix].add(f"{parts[-1]}  {info.dtype} {_shape(info.shape)}  {human_bytes(info.nbytes)}")
    console().print(root)


@click.command()
@click.argument("path")
@click.argument("name")
@print_options(precision=4, threshold=1000)
@click.option("--full", is_flag=True, help="Print every element (no summarisation).")
@open_options
@json_option
def show(
    path: str,
    name: str,
    precision: int,
    linewidth: int,
    threshold: int,
    edgeitems: int,
    sci: bool | None,
    full: bool,
    fmt: str | None,
    options: tuple[str, ...],
    names: str | None,
    as_json: bool,
) -> None:
    """Print the values of tensor NAME with chosen print options (like torch.set_printoptions),
    or a non-tensor value such as `step` or `optimizer/param_groups/0/lr` (see `ls`)."""
    from weightvault.inspect import format_values

    with _open(path, fmt, options, names) as reader:
        if name not in reader:
            _show_state(reader, path, name, as_json)
            return
        arr = reader.get(name)
        info = reader.info(name)
        if as_json:
            import numpy as np

            values = arr.astype(np.float64) if arr.dtype.kind not in "biufc" else arr
            emit_json({"path": path, **info.to_dict(), "values": values.tolist()})
            return
        text = format_values(
            arr,
            precision=precision,
            linewidth=linewidth,
            threshold=sys.maxsize if full else threshold,
            edgeitems=edgeitems,
            sci=sci,
        )
        click.echo(f"{name}  {info.dtype} {_shape(info.shape)}")
        click.echo(text)


def _show_state(reader: Any, path: str, name: str, as_json: bool) -> None:
    """Print a non-tensor value, or fail naming the closest tensor and value names."""
    from weightvault.cli.state import StateValue, find_state, format_value, state_values, suggest
    from weightvault.errors import TensorNotFoundError

    found = find_state(reader, name)
    if found is None:
        candidates = reader.keys() + [v.path for v in state_values(reader)]
        close = suggest(name, candidates)
        hint = f"did you mean {' or '.join(close)}?" if close else "`weightvault ls` lists them all"
        raise TensorNotFoundError(
            f"no tensor or value of that name among {len(reader.keys())} tensors; {hint}",
            path=reader.path,
            tensor=name,
        )
    where, value = found
    entry = StateValue(where, value, "metadata" if where.startswith("metadata") else "structure")
    if as_json:
        fields = entry.to_dict()
        emit_json({"path": path, "name": fields.pop("path"), **fields})
        return
    click.echo(f"{where}  {entry.type}")
    click.echo(format_value(value))


def _fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        # A whole number (the min of an int64 step counter) in full: 1e+06 would hide its last digits.
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"
    return str(v)


@click.command()
@click.argument("path")
@open_options
@json_option
def stats(path: str, fmt: str | None, options: tuple[str, ...], names: str | None, as_json: bool) -> None:
    """Per-tensor min, max, mean, std, zeros, NaN and Inf of PATH."""
    from weightvault.core.progress import progress_bar
    from weightvault.inspect import tensor_stats

    rows = []
    with _open(path, fmt, options, names) as reader:
        infos = reader.infos()
        with progress_bar("stats", sum(i.nbytes for i in infos)) as advance:
            for info in infos:
                rows.append({"name": info.name, "dtype": info.dtype, **tensor_stats(reader.get(info.name))})
                advance(info.nbytes)
    if as_json:
        emit_json({"path": path, "tensors": rows})
        return
    cols = ("name", "dtype", "min", "max", "mean", "std", "zeros", "nan", "inf")
    print_table(
        cols,
        [[_fmt_num(r[c]) for c in cols] for r in rows],
        justify={c: "right" for c in cols[2:]},
        fold=("name",),
    )
    bad = [r["name"] for r in rows if r["nan"] or r["inf"]]
    if bad:
        click.echo(f"WARNING {len(bad)} tensor(s) hold NaN or Inf: {', '.join(bad[:5])}", err=True)


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--atol", default=0.0, show_default=True, help="Absolute tolerance.")
@click.option("--rtol", default=0.0, show_default=True, help="Relative tolerance.")
@click.option("--format-a", default=None, help="Force the format of A.")
@click.option("--format-b", default=None, help="Force the format of B.")
@json_option
def diff(a: str, b: str, atol: float, rtol: float, format_a: str | None, format_b: str | None, as_json: bool) -> None:
    """Compare two weight files (any formats). Exit status 1 when they differ."""
    import weightvault
    from weightvault.inspect import diff as diff_readers

    with weightvault.open(a, format=format_a) as ra, weightvault.open(b, format=format_b) as rb:
        report = diff_readers(ra, rb, atol=atol, rtol=rtol)
    if as_json:
        emit_json({"a": a, "b": b, "atol": atol, "rtol": rtol, **report.to_dict()})
    else:
        rows: list[tuple[str, ...]] = []
        rows += [("removed", n, "only in A") for n in report.removed]
        rows += [("added", n, "only in B") for n in report.added]
        rows += [("shape", d["name"], f"{_shape(d['a'])} -> {_shape(d['b'])}") for d in report.shape_changed]
        rows += [("dtype", d["name"], f"{d['a']} -> {d['b']}") for d in report.dtype_changed]
        rows += [
            (
                "value",
                d["name"],
                f"max abs {_fmt_num(d['max_abs'])}, max rel {_fmt_num(d['max_rel'])}, {d['changed']}/{d['numel']} differ",
            )
            for d in report.value_changed
        ]
        if rows:
            print_table(("change", "name", "detail"), rows, fold=("name",), wrap=("detail",))
        click.echo(
            f"{len(report.equal)} equal, {len(report.value_changed)} changed, {len(report.added)} added, "
            f"{len(report.removed)} removed, {len(report.shape_changed)} reshaped"
        )
    if not report.identical:
        sys.exit(EXIT_DIFFERS)


@click.command()
@click.argument("path")
@open_options
@json_option
def verify(path: str, fmt: str | None, options: tuple[str, ...], names: str | None, as_json: bool) -> None:
    """Check every checksum of PATH (formats without checksums are read completely)."""
    with _open(path, fmt, options, names) as reader:
        result = reader.verify()
    if as_json:
        emit_json(
            {
                "path": path,
                "ok": result.ok,
                "checked": result.checked,
                "unchecked": result.unchecked,
                "failures": result.failures,
            }
        )
    else:
        for failure in result.failures:
            click.echo(f"FAIL {failure}", err=True)
        click.echo(_verify_line(result))
    if not result.ok:
        sys.exit(EXIT_DIFFERS)


def _verify_line(result: Any) -> str:
    if result.ok and not result.checked:
        return (
            f"OK: {result.unchecked} tensors read, no checksums in this format: "
            "nothing to verify against"
        )
    status = "OK" if result.ok else "FAILED"
    return (
        f"{status}: {result.checked} tensors checked, {result.unchecked} without checksums, "
        f"{len(result.failures)} failures"
    )


@click.command()
@click.argument("name", required=False, metavar="[FORMAT]")
@json_option
def formats(name: str | None, as_json: bool) -> None:
    """List the formats this installation can read and write; with FORMAT, its names and options."""
    from weightvault.registry import available_formats, known_formats

    if name:
        _format_detail(name, as_json)
        return

    found = available_formats()
    rows = []
    for name in known_formats:
        fmt = found.get(name)
        rows.append(
            {
                "name": name,
                "available": fmt is not None,
                "read": fmt is not None,
                "write": bool(fmt and fmt.can_write),
                "extensions": list(fmt.extensions) if fmt else [],
                "description": fmt.description if fmt else known_formats[name]["err"],
            }
        )
    if as_json:
        emit_json({"formats": rows})
        return
    print_table(
        ("format", "read", "write", "extensions", "description"),
        [
            (r["name"], "yes" if r["read"] else "no", "yes" if r["write"] else "no", " ".join(r["extensions"]), r["description"])
            for r in rows
        ],
        wrap=("extensions", "description"),
    )


def _format_detail(name: str, as_json: bool) -> None:
    """``weightvault formats keras``: aliases, endings, and the -o / -w option keys with help."""
    from weightvault.registry import ALIASES, get_format, resolve_name

    fmt = get_format(resolve_name(name))
    doc = {
        "name": fmt.name,
        "aliases": sorted(a for a, n in ALIASES.items() if n == fmt.name),
        "description": fmt.description,
        "extensions": list(fmt.extensions),
        "write": bool(fmt.can_write),
        "read_options": dict(fmt.read_options or {}),
        "write_options": dict(fmt.write_options or {}) if fmt.can_write else {},
    }
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{fmt.name}: {fmt.description}")
    if doc["aliases"]:
        click.echo(f"also called: {', '.join(doc['aliases'])}")
    click.echo(f"file endings: {' '.join(doc['extensions']) or '(none: detected by content)'}")
    for flag, kind in (("-o", "read"), ("-w", "write")):
        if kind == "write" and not fmt.can_write:
            click.echo("read-only: no -w options")
            continue
        options = doc[f"{kind}_options"]
        if not options:
            click.echo(f"{kind} options ({flag}): none")
            continue
        click.echo(f"{kind} options ({flag} KEY=VALUE):")
        for key, text in options.items():
            click.echo(f"  {key:<16} {text}")
