"""Incremental checkpoints against full saves of the same states, in one run.

Not a test. For each scenario, one torch training run saves a checkpoint every ``--every`` steps
through two :class:`weightvault.CheckpointManager` s side by side, one full
(``incremental=False``) and one incremental, both ``max_to_keep=5`` with fsync on (the defaults),
alternating which saves first. Measured per checkpoint after the first: bytes written (the
manager's record: shard bytes really written plus the small JSON files) and the wall time of
``save()``; after the run: the disk used by each keep-5 run directory (each hard-linked file
counted once) and the load time of the last step (page cache dropped for its files first, then
warm), best and median.

Scenarios (``--size`` MB of model weights, float32):

* ``frozen``: a backbone of linear layers (~90% of the weights) frozen, a trained head; the
  checkpoint is the model's weights. Targets (issue #18): written <= 15% of the full save's bytes
  per checkpoint, save time falling in proportion, load time unchanged (+-10%).
* ``frozen+adam``: the same with Adam's moments of the head in the checkpoint (the head is then
  ~27% of the state: the floor of any method).
* ``lora``: rank-8 adapters beside every frozen base weight (interleaved in the state dict).
* ``all``: every weight trained (full fine-tuning): what incremental mode costs when nothing is
  unchanged (the checksum pass).
* ``embedding``: an embedding table (half the weights) with sparse row updates (~1% of the rows
  per checkpoint) and a frozen tower; also reports what fixed-size chunks of the table (row
  chunks of 64 KiB / 1 MiB / 4 MiB) would have written, had the table been split.

    python bench/incremental.py                       # all scenarios, 128 MB, 10 checkpoints
    python bench/incremental.py --size 512 --scenarios frozen,lora

``--s3``: the same side-by-side runs against an S3 API server (a local moto server started as in
bench/object_store.py, or ``--endpoint``), where unchanged shards are copied server-side
(CopyObject) instead of uploaded. Measured per checkpoint after the first: bytes uploaded (what the
client sent: PUT bodies and multipart parts, ``weightvault.storage.stats``, JSON objects included),
the shards copied server-side (the step's manifest), the manager's ``written_bytes`` and the wall time of ``save()``;
then the load time of the last step from the server. No fsync and no page cache here.

    python bench/incremental.py --s3 --size 64 --checkpoints 5 --scenarios frozen,frozen+adam
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def build(scenario: str, size_mb: int) -> tuple[Any, Any, Any]:
    """(model, optimizer, state function) of about ``size_mb`` MB of float32 weights."""
    import torch

    nn = torch.nn
    torch.manual_seed(0)
    width = 1024
    layer_mb = width * width * 4 / MB  # 4 MB per square layer
    if scenario == "embedding":
        rows = int(size_mb / 2 * MB / 4 / 256)
        emb = nn.Embedding(rows, 256, sparse=True)
        tower = nn.Sequential(*[nn.Linear(256, 256) for _ in range(max(1, int(size_mb / 2 / 0.25)))])
        tower.requires_grad_(False)
        model = nn.ModuleDict({"emb": emb, "tower": tower})
        opt = torch.optim.SparseAdam(list(emb.parameters()), lr=1e-2)
        return model, opt, lambda: model.state_dict()
    layers = max(2, round(size_mb * 0.9 / layer_mb))
    if scenario == "lora":
        model = nn.ModuleList()
        for _ in range(layers):
            block = nn.Module()
            block.base = nn.Linear(width, width)
            block.base.requires_grad_(False)
            block.lora_A = nn.Parameter(torch.randn(8, width) * 0.01)
            block.lora_B = nn.Parameter(torch.zeros(width, 8))
            model.append(block)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        return model, opt, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict()}
    head_out = max(1, round(size_mb * 0.1 * MB / 4 / width))
    model = nn.ModuleDict(
        {
            "backbone": nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)]),
            "head": nn.Linear(width, head_out),
        }
    )
    if scenario != "all":
        model["backbone"].requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if scenario == "frozen+adam":
        opt = torch.optim.Adam(params, lr=1e-3)
        return model, opt, lambda: {"model": model.state_dict(), "optimizer": opt.state_dict()}
    opt = torch.optim.SGD(params, lr=1e-3)
    return model, opt, lambda: model.state_dict()


def train(scenario: str, model: Any, opt: Any) -> None:
    """One real optimizer step (autograd through what is trained)."""
    import torch

    opt.zero_grad()
    if scenario == "embedding":
        emb = model["emb"]
        ids = torch.randint(0, emb.num_embeddings, (max(1, emb.num_embeddings // 100),))
        emb(ids).sum().backward()
    elif scenario == "lora":
        loss = sum((b.lora_B @ (b.lora_A @ torch.randn(1024, 4))).pow(2).mean() for b in model)
        (loss + 1.0).backward()
    else:
        x = torch.randn(16, 1024)
        if scenario == "all":
            model["head"](model["backbone"](x)).pow(2).mean().backward()
        else:
            with torch.no_grad():
                feats = model["backbone"][-1](x)  # a frozen feature (all layers: slow to no end)
            model["head"](feats).pow(2).mean().backward()
    opt.step()


def changed_chunks(prev: Any, now: Any, chunk: int) -> int:
    """Bytes of the ``chunk``-byte pieces of a table that differ between two versions."""
    import numpy as np

    a = np.ascontiguousarray(prev).reshape(-1).view(np.uint8)
    b = np.ascontiguousarray(now).reshape(-1).view(np.uint8)
    n = -(-a.size // chunk)
    pad = n * chunk - a.size
    a2 = np.concatenate([a, np.zeros(pad, np.uint8)]).reshape(n, chunk)
    b2 = np.concatenate([b, np.zeros(pad, np.uint8)]).reshape(n, chunk)
    return int((a2 != b2).any(axis=1).sum()) * chunk


def stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


def load_times(path: Path, repeats: int) -> dict[str, list[float]]:
    import weightvault
    from weightvault.core.io import release_tree_cache

    out: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(repeats):
        release_tree_cache(path)
        t = time.perf_counter()
        weightvault.load(path)
        out["cold"].append(time.perf_counter() - t)
        t = time.perf_counter()
        weightvault.load(path)
        out["warm"].append(time.perf_counter() - t)
    return out


def run_scenario(scenario: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import torch

    import weightvault
    from weightvault.cli.runs import disk_usage

    model, opt, state_of = build(scenario, args.size)
    mgrs = {
        mode: weightvault.CheckpointManager(
            root / scenario / mode, max_to_keep=5, incremental=(mode == "incremental")
        )
        for mode in ("full", "incremental")
    }
    saves: dict[str, list[float]] = {"full": [], "incremental": []}
    written: dict[str, list[int]] = {"full": [], "incremental": []}
    sizes: list[int] = []
    chunk_sizes = (64 << 10, 1 << 20, 4 << 20)
    chunked: dict[int, list[int]] = {c: [] for c in chunk_sizes}
    table_bytes = 0
    prev_table = None
    for ckpt in range(args.checkpoints):
        for _ in range(args.every):
            train(scenario, model, opt)
        state = state_of()
        order = ("full", "incremental") if ckpt % 2 == 0 else ("incremental", "full")
        for mode in order:
            t = time.perf_counter()
            mgrs[mode].save(ckpt, state)
            elapsed = time.perf_counter() - t
            info = mgrs[mode].info(ckpt)
            if ckpt > 0:
                saves[mode].append(elapsed)
                written[mode].append(int(info.written_bytes or 0))
                if mode == "full":
                    sizes.append(int(info.size_bytes or 0))
        if scenario == "embedding":
            table = model["emb"].weight.detach().numpy().copy()
            table_bytes = table.nbytes
            if prev_table is not None:
                for c in chunk_sizes:
                    chunked[c].append(changed_chunks(prev_table, table, c))
            prev_table = table
    last = {mode: mgr.path("latest") for mode, mgr in mgrs.items()}
    # the same state as a full save with the incremental run's (smaller) shards: separates the
    # cost of more files from the cost of links at load time
    last["full-same-shards"] = root / scenario / "full-same-shards"
    weightvault.save(state, last["full-same-shards"], shard_size=mgrs["incremental"].shard_size)
    for mgr in mgrs.values():
        mgr.close()
    loads: dict[str, dict[str, list[float]]] = {mode: {"cold": [], "warm": []} for mode in last}
    for _ in range(args.load_repeats):  # alternate, so all see the same noise
        for mode in last:
            got = load_times(last[mode], 1)
            for k in got:
                loads[mode][k] += got[k]
    disk = {
        mode: disk_usage(sorted(p for p in (root / scenario / mode).iterdir() if p.name.startswith("step-")))
        for mode in ("full", "incremental")
    }
    weightvault.verify(last["incremental"])
    del torch
    return {
        "scenario": scenario,
        "size": sizes[-1] if sizes else 0,
        "saves": saves,
        "written": written,
        "sizes": sizes,
        "loads": loads,
        "disk": disk,
        "chunked": chunked,
        "table_bytes": table_bytes,
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}; "
        f"--size {args.size} MB, {args.checkpoints} checkpoints every {args.every} steps, keep 5, fsync on",
        "",
        "| scenario | checkpoint size | written / checkpoint, full "
        "| written, incremental: best / median / worst (at checkpoint #, from 0) | share of full (median) | save s, full: best / median | save s, incremental: best / median "
        "| save time share (median) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        worst = max(range(len(r["written"]["incremental"])), key=r["written"]["incremental"].__getitem__)
        wf, wi = r["written"]["full"], r["written"]["incremental"]
        sf, si = stats(r["saves"]["full"]), stats(r["saves"]["incremental"])
        lines.append(
            f"| {r['scenario']} | {r['size'] / MB:.1f} MB | {statistics.median(wf) / MB:.1f} MB "
            f"| {min(wi) / MB:.2f} / {statistics.median(wi) / MB:.2f} / {max(wi) / MB:.2f} MB (#{worst + 1}) "
            f"| **{100 * statistics.median(wi) / statistics.median(wf):.1f}%** "
            f"| {sf[0]:.3f} / {sf[1]:.3f} | {si[0]:.3f} / {si[1]:.3f} "
            f"| **{100 * si[1] / sf[1]:.0f}%** |"
        )
    lines += [
        "",
        "| scenario | keep-5 run on disk, full | incremental (shared files once) | incremental, sum of its steps "
        "| load s cold, full: best / median | incremental | full, same shards as incremental "
        "| load s warm, full | incremental | full, same shards |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        df, di = r["disk"]["full"], r["disk"]["incremental"]
        cells = []
        for kind in ("cold", "warm"):
            for mode in ("full", "incremental", "full-same-shards"):
                best, median = stats(r["loads"][mode][kind])
                cells.append(f"{best:.3f} / {median:.3f}")
        lines.append(
            f"| {r['scenario']} | {df['on_disk'] / MB:.1f} MB | {di['on_disk'] / MB:.1f} MB "
            f"| {di['sum_of_steps'] / MB:.1f} MB | " + " | ".join(cells) + " |"
        )
    for r in results:
        if r["chunked"] and any(r["chunked"].values()):
            lines += ["", f"embedding table {r['table_bytes'] / MB:.1f} MB, written whole every checkpoint; "
                      "had it been split into fixed-size chunks, the changed chunks per checkpoint (median):"]
            for c, vals in r["chunked"].items():
                lines.append(
                    f"- {c >> 10} KiB chunks: {statistics.median(vals) / MB:.2f} MB "
                    f"({100 * statistics.median(vals) / r['table_bytes']:.1f}% of the table)"
                )
    return "\n".join(lines)


# -- on an S3 API server ------------------------------------------------------------------------------


def copied_shards(path: Any, opts: dict[str, Any]) -> int:
    """Shards of a step that its save copied server-side (its manifest's incremental section)."""
    import weightvault

    with weightvault.open(path, storage_options=opts) as reader:
        section = reader.manifest.get("incremental") or {}
    return sum(1 for s in (section.get("shards") or {}).values() if s.get("how") == "copy")


def run_s3_scenario(scenario: str, args: argparse.Namespace, base: str, opts: dict[str, Any]) -> dict[str, Any]:
    import weightvault
    from weightvault.storage.location import stats as wire

    model, opt, state_of = build(scenario, args.size)
    mgrs = {
        mode: weightvault.CheckpointManager(
            f"{base}/{scenario}/{mode}", max_to_keep=5, incremental=(mode == "incremental"),
            storage_options=opts,
        )  # fmt: skip
        for mode in ("full", "incremental")
    }
    out: dict[str, Any] = {
        "scenario": scenario,
        **{k: {"full": [], "incremental": []} for k in ("saves", "uploaded", "written", "copies")},
    }
    size = 0
    for ckpt in range(args.checkpoints):
        for _ in range(args.every):
            train(scenario, model, opt)
        state = state_of()
        order = ("full", "incremental") if ckpt % 2 == 0 else ("incremental", "full")
        for mode in order:
            wire.reset()
            t = time.perf_counter()
            mgrs[mode].save(ckpt, state)
            elapsed = time.perf_counter() - t
            info = mgrs[mode].info(ckpt)
            if ckpt > 0:
                out["saves"][mode].append(elapsed)
                out["uploaded"][mode].append(wire.bytes_written)
                out["written"][mode].append(int(info.written_bytes or 0))
                out["copies"][mode].append(copied_shards(mgrs[mode].path(ckpt), opts))
                size = int(info.size_bytes or 0)
    loads: dict[str, list[float]] = {"full": [], "incremental": []}
    for _ in range(args.load_repeats):
        for mode, mgr in mgrs.items():
            t = time.perf_counter()
            weightvault.load(mgr.path("latest"), storage_options=opts)
            loads[mode].append(time.perf_counter() - t)
    weightvault.verify(mgrs["incremental"].path("latest"), storage_options=opts)
    for mgr in mgrs.values():
        mgr.close()
    out["size"], out["loads"] = size, loads
    return out


def report_s3(results: list[dict[str, Any]], args: argparse.Namespace, server: str) -> str:
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}; "
        f"server: {server}; --size {args.size} MB, {args.checkpoints} checkpoints every "
        f"{args.every} steps, keep 5",
        "",
        "| scenario | checkpoint size | uploaded / checkpoint, full | uploaded, incremental (median) "
        "| share of full | server-side copies / checkpoint | save s, full: best / median "
        "| save s, incremental: best / median | save time share (median) "
        "| load s, full: best / median | load s, incremental: best / median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        uf, ui = statistics.median(r["uploaded"]["full"]), statistics.median(r["uploaded"]["incremental"])
        sf, si = stats(r["saves"]["full"]), stats(r["saves"]["incremental"])
        lf, li = stats(r["loads"]["full"]), stats(r["loads"]["incremental"])
        lines.append(
            f"| {r['scenario']} | {r['size'] / MB:.1f} MB | {uf / MB:.2f} MB | {ui / MB:.2f} MB "
            f"| **{100 * ui / uf:.1f}%** | {statistics.median(r['copies']['incremental']):.0f} "
            f"| {sf[0]:.3f} / {sf[1]:.3f} | {si[0]:.3f} / {si[1]:.3f} | **{100 * si[1] / sf[1]:.0f}%** "
            f"| {lf[0]:.3f} / {lf[1]:.3f} | {li[0]:.3f} / {li[1]:.3f} |"
        )
    return "\n".join(lines)


def main_s3(args: argparse.Namespace) -> None:
    import uuid

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from object_store import start_moto  # the same server start-up as bench/object_store.py

    proc, endpoint = (None, args.endpoint) if args.endpoint else start_moto()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        import s3fs

        opts = {"endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}
        bucket = f"wv-incr-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**opts).call_s3("create_bucket", Bucket=bucket)
        results = []
        for scenario in args.scenarios.split(","):
            started = time.perf_counter()
            results.append(run_s3_scenario(scenario, args, f"s3://{bucket}", opts))
            r = results[-1]
            print(
                f"{scenario} (s3): {time.perf_counter() - started:.1f}s; MB uploaded per checkpoint "
                f"after the first, incremental: {[round(w / MB, 2) for w in r['uploaded']['incremental']]}; "
                f"full: {[round(w / MB, 2) for w in r['uploaded']['full']]}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    print(report_s3(results, args, "local moto_server" if proc else endpoint))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="MB of model weights")
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--every", type=int, default=2, help="training steps between checkpoints")
    parser.add_argument("--load-repeats", type=int, default=7)
    parser.add_argument("--scenarios", default="frozen,frozen+adam,lora,all,embedding")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--s3", action="store_true", help="against an S3 API server (see above)")
    parser.add_argument("--endpoint", help="with --s3: this S3 endpoint instead of a local moto server")
    args = parser.parse_args()
    if args.s3:
        main_s3(args)
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="wv-incr-bench-"))
    results = []
    try:
        for scenario in args.scenarios.split(","):
            started = time.perf_counter()
            results.append(run_scenario(scenario, args, root))
            r = results[-1]
            print(
                f"{scenario}: {time.perf_counter() - started:.1f}s; MB written per checkpoint after the "
                f"first, incremental: {[round(w / MB, 2) for w in r['written']['incremental']]}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report(results, args))


if __name__ == "__main__":
    main()
