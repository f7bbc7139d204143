"""A small training run for the bit-identical resume test (run as a subprocess).

Every source of randomness a real run has is used: dropout (torch RNG), input noise (numpy's
global RNG), a random flip (python ``random``), a shuffling DataLoader, Adam, an LR scheduler,
an AMP GradScaler whose scale changes, and an EMA. ``--stop-at K`` saves the training state after
step K and exits (without ``--out``) or carries on to the end (the uninterrupted run, which
checkpoints like a real run does); ``--resume`` starts from that state in a fresh process.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

import weightvault
import weightvault.torch as wvt

SEED = 7
BATCH = 16


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, object, object, weightvault.EMA]:
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 4)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.7)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=5)
    ema = weightvault.EMA(model, decay=0.9, warmup=5)
    return model, optimizer, scheduler, scaler, ema


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--stop-at", type=int, default=None)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-rng", action="store_true", help="resume without restoring the RNGs")
    args = ap.parse_args()

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    data = torch.Generator().manual_seed(1234)
    x_all = torch.randn(200, 16, generator=data)
    y_all = torch.randint(0, 4, (200,), generator=data)
    dataset = torch.utils.data.TensorDataset(x_all, y_all)
    batches_per_epoch = (len(dataset) + BATCH - 1) // BATCH

    model, optimizer, scheduler, scaler, ema = build()
    step = epoch = 0
    if args.resume:
        counters = wvt.load_training_state(
            args.ckpt,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            ema=ema,
            rng=not args.no_rng,
        )
        step, epoch = counters["step"], counters["epoch"]

    while step < args.steps:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH, shuffle=True, generator=wvt.epoch_generator(SEED, epoch)
        )
        skip = step - epoch * batches_per_epoch  # batches of this epoch consumed before a resume
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue
            x = x + torch.from_numpy(
                np.random.normal(0.0, 0.05, size=tuple(x.shape)).astype(np.float32)
            )
            if random.random() < 0.3:
                x = x.flip(1)
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema.update()
            step += 1
            if step == args.stop_at:
                wvt.save_training_state(
                    args.ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, ema=ema,
                    epoch=epoch, step=step, metrics={"loss": loss.item()},
                )  # fmt: skip
                if args.out is None:  # stopped here; otherwise this is the uninterrupted run
                    return
            if step >= args.steps:
                break
        else:
            epoch += 1
    final = {f"model/{k}": v for k, v in model.state_dict().items()}
    final.update({f"ema/{k}": v for k, v in ema.shadow.items()})
    final["scale"] = torch.tensor(scaler.get_scale())
    weightvault.save(final, args.out)


if __name__ == "__main__":
    main()
