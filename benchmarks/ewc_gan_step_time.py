"""Discriminator step time with the online EWC penalty, as ratios to the plain step, measured side by side.

    flock /tmp/paperzoo-cpu.lock .venv/bin/python benchmarks/ewc_gan_step_time.py

The DCGAN of ``configs/ewc_gan_mnist.yaml`` (28 px, batch 64) trained by a Lightning ``Trainer`` with only
discriminator steps (``n_critic`` larger than the run: no generator step), on in-memory random images.
A step = one training batch: sample fakes, D loss, backward, penalty (callback), Adam step, and for EWC
the task-boundary work every ``alpha`` steps. Variants run in interleaved rounds; the median batch time
of each (after warm-up) is divided by the plain step's median. Targets (issue 11): alpha=1 <= 1.30,
alpha=100 <= 1.05, for the default (``fisher="deferred"``: the importance comes from the next step's
gradient, no extra pass). The extra-pass Fisher (one more D forward/backward on a fresh minibatch per task)
and the last-step Fisher are reported beside it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
from lightning import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from callbacks.continual import EWCPenalty, ISPenalty
from lightning_modules.gan import GAN


class BatchTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t)


def time_variant(penalty, args) -> list[float]:
    seed_everything(0, verbose=False)
    model = GAN(arch="dcgan", image_size=28, channels=1, base_channels=args.base, latent_dim=100, n_critic=10**9,
                fid_network="none")
    data = DataLoader(TensorDataset(torch.rand(args.batch_size * args.steps, 1, 28, 28) * 2 - 1), batch_size=args.batch_size)
    timer = BatchTimer()
    callbacks = [timer] + ([penalty] if penalty is not None else [])
    Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=callbacks).fit(model, data)
    return timer.times[args.warmup:]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--base", type=int, default=64)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    variants = {
        "plain D step": lambda: None,
        "EWC alpha=1, deferred Fisher (default)": lambda: EWCPenalty(alpha=1, lam=10.0),
        "EWC alpha=100, deferred Fisher (default)": lambda: EWCPenalty(alpha=100, lam=10.0),
        "EWC alpha=1, extra-pass Fisher": lambda: EWCPenalty(alpha=1, lam=10.0, fisher="extra_pass"),
        "EWC alpha=100, extra-pass Fisher": lambda: EWCPenalty(alpha=100, lam=10.0, fisher="extra_pass"),
        "EWC alpha=1, last-step Fisher": lambda: EWCPenalty(alpha=1, lam=10.0, fisher="last_step"),
        "IS alpha=100": lambda: ISPenalty(alpha=100, lam=10.0),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            times[name] += time_variant(make(), args)
    base = statistics.median(times["plain D step"])
    print(f"DCGAN 28 px discriminator step, batch {args.batch_size}, CPU 1 thread, "
          f"{args.rounds} interleaved rounds x {args.steps - args.warmup} timed steps; median per step")
    print("| variant | ms / step | ratio to plain | target |")
    print("|---|---|---|---|")
    targets = {"EWC alpha=1, deferred Fisher (default)": "<= 1.30", "EWC alpha=100, deferred Fisher (default)": "<= 1.05"}
    for name, values in times.items():
        med = statistics.median(values)
        target = targets.get(name, "")
        verdict = "" if not target else " (met)" if med / base <= float(target.split()[-1]) else " (NOT met)"
        print(f"| {name} | {1000 * med:.2f} | {med / base:.3f} | {target}{verdict} |")


if __name__ == "__main__":
    main()
