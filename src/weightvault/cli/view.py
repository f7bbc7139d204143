"""``weightvault view PATH [PATH2]``: a local web page over weight files (see docs/viewer.md).

The server listens on 127.0.0.1 unless ``--host`` says otherwise; the page and its JSON API only
ever read the paths given here. Ctrl-C stops it.
"""

from __future__ import annotations

import ipaddress
import os

import click

from weightvault.cli.common import warn

__all__ = ["view"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _exists(path: str) -> bool:
    from weightvault.storage.location import is_url, local_path

    if is_url(path):
        from weightvault.storage import location

        loc = location(path)
        return loc.exists() or location(path + ".index").exists()
    path = local_path(path)
    # A TensorFlow checkpoint is named by a prefix that is not itself a file (model.ckpt-1000).
    return os.path.exists(path) or os.path.exists(path + ".index")


@click.command("view")
@click.argument("paths", nargs=-1, required=True, metavar="PATH [PATH2]")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; keep the default unless others must reach it.")
@click.option("--no-browser", is_flag=True, help="Print the URL but do not open a browser.")
def view(paths: tuple[str, ...], port: int, host: str, no_browser: bool) -> None:
    """Browse weight files in a local web page: tree, statistics, histograms, model graph, compare, runs.

    PATH may be any weight file or directory weightvault reads, or a training-run directory,
    local or on object storage (s3://..., gs://..., with --storage-option); with PATH2, the page opens on the Compare tab with what changed between the two, and the Graph
    tab (ONNX, TF .meta/.pb, Keras files) colours each node by how much its weights changed.
    """
    from weightvault.viewer import ViewerServer

    for path in paths:
        if not _exists(path):
            raise click.BadParameter(f"{path}: no such file or directory", param_hint="PATH")
    if not _is_loopback(host):
        warn(f"listening on {host}: anyone who can reach this address can read the weights")
    server = ViewerServer(list(paths), host=host, port=port)
    click.echo(f"weightvault viewer: {server.url}  (Ctrl-C stops)")
    if not no_browser:
        import webbrowser  # starts no browser machinery unless a browser is opened

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    finally:
        server.close()
