"""Train a small MLP on digits with checkpoints a real project would keep.

Every ``--save-every`` steps the full training state (model, Adam, LR schedule, EMA shadow
weights, RNGs, epoch, step) goes to a :class:`weightvault.CheckpointManager` with async saves
(training waits only for the host copy), keeping the newest 5 plus the best 2 by validation
accuracy of the EMA weights. Started on a run directory that has checkpoints, it resumes from
the latest one and continues exactly where that one left off (same data order, same dropout).

    python examples/digits/train.py --run-dir runs/digits --steps 600
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MLP, accuracy, load_data

import weightvault
import weightvault.torch as wvt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", required=True)
    ap.add_argument(
        "--data", default=None, help="directory with MNIST IDX files (default: sklearn digits)"
    )
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--keep", type=int, default=5)
    ap.add_argument("--best-k", type=int, default=2)
    ap.add_argument("--ema-decay", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sync", action="store_true", help="save synchronously (default: async)")
    ap.add_argument(
        "--step-delay", type=float, default=0.0, help="sleep per step (to make a demo killable)"
    )
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny model: threads only add jitter on a shared machine
    data = load_data(args.data)
    model = MLP(data.features)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    ema = weightvault.EMA(model, decay=args.ema_decay, warmup=50)
    manager = weightvault.CheckpointManager(
        args.run_dir,
        max_to_keep=args.keep,
        best=("val_acc", "max", args.best_k),
        async_save=not args.sync,
    )

    step = epoch = 0
    if manager.latest() is not None:
        state = manager.load("latest", framework="torch")
        counters = wvt.apply(state, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema)
        step, epoch = counters["step"], counters["epoch"]
        print(f"resuming from step {step} (epoch {epoch})", flush=True)
    else:
        print(f"starting a new run in {args.run_dir} on {data.source}", flush=True)

    dataset = torch.utils.data.TensorDataset(data.train.x, data.train.y)
    per_epoch = (len(dataset) + args.batch_size - 1) // args.batch_size
    started = time.perf_counter()
    stall = 0.0
    while step < args.steps:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            generator=wvt.epoch_generator(args.seed, epoch),
        )
        skip = step - epoch * per_epoch  # batches of this epoch done before a resume
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update()
            step += 1
            if args.step_delay:
                time.sleep(args.step_delay)
            if step % args.save_every == 0 or step == args.steps:
                with ema.applied():
                    val_acc = accuracy(model, data.val)
                raw_acc = accuracy(model, data.val)
                metrics = {"val_acc": val_acc, "val_acc_raw": raw_acc, "loss": loss.item()}
                state = wvt.capture(
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    ema=ema,
                    epoch=epoch,
                    step=step,
                    metrics=metrics,
                )
                t0 = time.perf_counter()
                manager.save(step, state, metrics=metrics)
                stall += time.perf_counter() - t0
                print(
                    f"step {step:5d}  loss {loss.item():.4f}  val_acc(ema) {val_acc:.4f}  val_acc(raw) {raw_acc:.4f}",
                    flush=True,
                )
            if step >= args.steps:
                break
        else:
            epoch += 1
    manager.wait_until_finished()
    kept = manager.steps()
    best = manager.best()
    manager.close()
    print(
        f"done: step {step} in {time.perf_counter() - started:.1f}s, save stall {stall * 1000:.0f} ms total, "
        f"kept {kept}, best step {best}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
