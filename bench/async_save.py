"""Training-step stall of an async checkpoint save against a sync one, in one run.

Not a test. A synthetic training loop updates every tensor of a ``--size`` MB state in place
(one "step" = ``t.mul_(0.999).add_(0.001)`` on every tensor) and saves a checkpoint every
``--every`` steps through :class:`weightvault.CheckpointManager`, first with ``async_save=False``
then with ``async_save=True``. Measured per save:

* **stall**: seconds the training loop was blocked inside ``save()`` (sync: the whole write;
  async: waiting for the previous save, if any, plus the host snapshot);
* **write**: seconds the checkpoint took to write (background for async), from the manager's
  own record (``write_seconds``);
* **step slowdown**: mean training-step time while a background write runs, against the mean
  step time with no save in flight (GIL and memory-bandwidth contention).

Every save fsyncs (the manager's default). Target (issues #3, #13.13): the stall of every async
save, the first included, <= 10% of the sync save time. Two async modes:

* ``async``: a plain ``CheckpointManager(async_save=True)``; its first save allocates the snapshot
  buffers while training waits (later saves reuse them);
* ``async-prepared``: ``CheckpointManager(async_save=True, state_template=state)``, which allocates
  and touches the buffers on a helper thread at construction, so the first save is a plain copy.

The first save of each async mode is reported separately, and ``--first-only N`` measures just
that, N times in fresh managers (best and median: the shared machine is noisy), together with the
floor, a copy of the state into buffers that already exist.

    python bench/async_save.py --size 1024            # CPU tensors
    python bench/async_save.py --size 1024 --device cuda   # pinned-memory snapshot path
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def make_state(size_mb: int, device: str) -> dict[str, Any]:
    """Model + optimizer-like state of about ``size_mb`` MB of float32 torch tensors."""
    import torch

    torch.manual_seed(0)
    per = 32 * MB // 4  # 32 MB tensors, like large linear layers
    count = max(1, size_mb // 32)
    model = {f"layers.{i}.weight": torch.rand(per, device=device) for i in range(count * 2 // 3)}
    optim = {f"exp_avg.{i}": torch.rand(per, device=device) for i in range(count - len(model))}
    return {"model": model, "optimizer": {"state": optim, "lr": 1e-3}, "step": 0}


def tensors(state: dict[str, Any]) -> list[Any]:
    return [*state["model"].values(), *state["optimizer"]["state"].values()]


def train_step(state: dict[str, Any]) -> float:
    import torch

    t0 = time.perf_counter()
    for t in tensors(state):
        t.mul_(0.999).add_(0.001)
    if tensors(state)[0].is_cuda:
        torch.cuda.synchronize()
    state["step"] += 1
    return time.perf_counter() - t0


def run(mode: str, state: dict[str, Any], directory: Path, saves: int, every: int) -> dict[str, Any]:
    import weightvault

    async_save = mode.startswith("async")
    template = state if mode == "async-prepared" else None
    rows, busy_steps, idle_steps = [], [], []
    with weightvault.CheckpointManager(
        directory / mode, max_to_keep=None, async_save=async_save, state_template=template
    ) as mgr:
        for i in range(saves):
            for _ in range(every):
                seconds = train_step(state)
                in_flight = async_save and mgr._future is not None and not mgr._future.done()
                (busy_steps if in_flight else idle_steps).append(seconds)
            t0 = time.perf_counter()
            mgr.save(state["step"], state, metrics={"i": i})
            stall = time.perf_counter() - t0
            rows.append({"save": i + 1, "step": state["step"], "stall": stall})
        mgr.wait_until_finished()
        for row in rows:
            info = mgr.info(row["step"]) if row["step"] in mgr.steps() else None
            row["write"] = info.write_seconds if info else None
            row["recorded_stall"] = info.stall_seconds if info else None
    # steps after the last save are not timed: the loop ends with the save
    return {"rows": rows, "busy": busy_steps, "idle": idle_steps}


def first_saves(
    state: dict[str, Any], directory: Path, repeats: int, steps_before: int
) -> dict[str, list[float]]:
    """Stall of the first async save in fresh managers, plain and prepared, and the copy floor.

    Each manager sees ``steps_before`` training steps before its first save, as many as the
    loop puts between saves: a real run trains a while before its first checkpoint, and that
    is when ``state_template=`` prepares the buffers.
    """
    import weightvault
    from weightvault.checkpoint.snapshot import SnapshotCache, take_snapshot

    out: dict[str, list[float]] = {"async": [], "async-prepared": [], "floor": []}
    for i in range(repeats):
        for mode in ("async", "async-prepared"):
            template = state if mode == "async-prepared" else None
            run_dir = directory / f"first-{mode}-{i}"
            with weightvault.CheckpointManager(
                run_dir, max_to_keep=None, async_save=True, state_template=template
            ) as mgr:
                for _ in range(steps_before):
                    train_step(state)  # training goes on while the buffers are prepared
                t0 = time.perf_counter()
                mgr.save(state["step"], state)
                out[mode].append(time.perf_counter() - t0)
            shutil.rmtree(run_dir, ignore_errors=True)
        cache = SnapshotCache()
        take_snapshot(state, cache)  # buffers exist and are faulted in
        t0 = time.perf_counter()
        take_snapshot(state, cache)
        out["floor"].append(time.perf_counter() - t0)
        cache.clear()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="state size in MB")
    parser.add_argument("--saves", type=int, default=4, help="checkpoints per mode")
    parser.add_argument("--every", type=int, default=0, help="training steps between saves (0: enough to hide a write)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--first-only", type=int, default=0, metavar="N",
                        help="only measure first saves, N times each (plus one sync save to compare)")
    args = parser.parse_args()

    import torch

    directory = Path(tempfile.mkdtemp(prefix="wv-async-", dir=args.dir))
    try:
        state = make_state(args.size, args.device)
        nbytes = sum(t.numel() * t.element_size() for t in tensors(state))
        step_time = statistics.median(train_step(state) for _ in range(3))
        results = {}
        sync = run("sync", state, directory, args.saves, max(args.every, 1))
        results["sync"] = sync
        write_time = statistics.median(r["stall"] for r in sync["rows"])
        # Enough steps between saves that a background write can finish before the next.
        every = args.every or max(2, int(1.5 * write_time / step_time) + 1)
        if args.first_only:
            firsts = first_saves(state, directory, args.first_only, every)
        else:
            results["async"] = run("async", state, directory, args.saves, every)
            results["async-prepared"] = run("async-prepared", state, directory, args.saves, every)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    if args.first_only:
        report_first(firsts, results["sync"]["rows"], nbytes, args, step_time, every)
        return

    sync_rows, async_rows = results["sync"]["rows"], results["async"]["rows"]
    prepared_rows = results["async-prepared"]["rows"]
    sync_median = statistics.median(r["stall"] for r in sync_rows)
    steady = [r["stall"] for r in async_rows[1:]] or [async_rows[0]["stall"]]
    steady_median = statistics.median(steady)
    idle = results["async"]["idle"] or [step_time]
    busy = results["async"]["busy"]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# Async vs sync checkpoint save (`bench/async_save.py --size {args.size} --device {args.device}`)\n")
    print(
        f"State: {nbytes / MB:.0f} MiB float32 torch tensors on {args.device} ({device_name}), "
        f"{len(tensors(state))} tensors; fsync on; torch {torch.__version__}; "
        f"{args.saves} saves per mode; {every} training steps between async saves "
        f"(one step = {step_time * 1000:.0f} ms).\n"
    )
    print("| mode | save | stall s (training blocked) | write s | stall / sync save |")
    print("|---|---:|---:|---:|---:|")
    for mode, rows in (("sync", sync_rows), ("async", async_rows), ("async-prepared", prepared_rows)):
        for r in rows:
            write = f"{r['write']:.3f}" if r["write"] is not None else "deleted"
            ratio = r["stall"] / sync_median
            note = " (allocates snapshot buffers)" if mode == "async" and r["save"] == 1 else ""
            note = " (buffers prepared)" if mode == "async-prepared" and r["save"] == 1 else note
            print(f"| {mode}{note} | {r['save']} | {r['stall']:.3f} | {write} | {ratio:.1%} |")
    print()
    verdict = "met" if steady_median <= 0.10 * sync_median else "NOT met"
    print(
        f"Median sync save {sync_median:.3f} s; median steady-state async stall {steady_median:.3f} s "
        f"= **{steady_median / sync_median:.1%}** of the sync save (target <= 10%: {verdict}); "
        f"first async save {async_rows[0]['stall']:.3f} s = {async_rows[0]['stall'] / sync_median:.1%}; "
        f"first prepared async save {prepared_rows[0]['stall']:.3f} s = "
        f"{prepared_rows[0]['stall'] / sync_median:.1%}."
    )
    if busy:
        print(
            f"\nTraining step while a background write runs: {statistics.mean(busy) * 1000:.0f} ms "
            f"vs {statistics.mean(idle) * 1000:.0f} ms with no write in flight "
            f"({statistics.mean(busy) / statistics.mean(idle):.2f}x)."
        )


def report_first(
    firsts: dict[str, list[float]],
    sync_rows: list[dict[str, Any]],
    nbytes: int,
    args: Any,
    step_time: float,
    steps_before: int,
) -> None:
    import torch

    sync = [r["stall"] for r in sync_rows]
    sync_median = statistics.median(sync)
    print(f"# First async save (`bench/async_save.py --size {args.size} --first-only {args.first_only}`)\n")
    print(
        f"State: {nbytes / MB:.0f} MiB float32 torch tensors on {args.device}; fsync on; torch "
        f"{torch.__version__}; one step = {step_time * 1000:.0f} ms; {steps_before} training steps "
        f"before each first save (the loop's spacing of saves). Sync save: median "
        f"{sync_median:.3f} s over {len(sync)} saves (best {min(sync):.3f} s).\n"
    )
    print("| first save | best s | median s | all s | median / sync save |")
    print("|---|---:|---:|---:|---:|")
    labels = {
        "async": "async, buffers allocated in the save",
        "async-prepared": "async, `state_template=` (prepared on a helper thread)",
        "floor": "floor: copy into existing buffers",
    }
    for mode, label in labels.items():
        values = firsts[mode]
        median = statistics.median(values)
        shown = " ".join(f"{v:.3f}" for v in values)
        print(f"| {label} | {min(values):.3f} | {median:.3f} | {shown} | {median / sync_median:.1%} |")


if __name__ == "__main__":
    main()
