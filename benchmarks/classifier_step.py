"""Training-step time of ImageClassifier under Lightning vs a plain PyTorch loop doing the same work.

Both train the same network (same initial weights, Adam, cross-entropy, torchmetrics accuracy updated
every step) on the same in-memory batches. The two are interleaved step by step inside one run (a
callback runs the plain step for batch i right when Lightning starts batch i), so load from other
processes hits both alike. Lightning's step time is the time between consecutive
``on_train_batch_start`` calls minus the plain step run in between: it includes everything Lightning
does per step (data fetch, hooks, logging, optimizer wrapper). Reports medians and the ratio
(target <= 1.10), repeated ``--repeats`` times.

    python benchmarks/classifier_step.py [--steps 200] [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from lightning import Callback, Trainer
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules import ImageClassifier

WARMUP = 5


class PlainLoopInterleaved(Callback):
    """Runs the plain PyTorch step of batch ``i`` when Lightning starts batch ``i``; times both."""

    def __init__(self, model: ImageClassifier, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.net = model.net.train()
        self.optimizer = torch.optim.Adam(self.net.parameters())
        self.acc = MulticlassAccuracy(10, average="micro")
        self.batches = batches
        self.plain: list[float] = []
        self.lightning: list[float] = []
        self._last_start: float | None = None
        self._last_plain = 0.0

    def _plain_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad()
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        self.optimizer.step()
        self.acc.update(logits.detach(), y)
        return time.perf_counter() - start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_start is not None and batch_idx > WARMUP:
            self.lightning.append(now - self._last_start - self._last_plain)
        self._last_plain = self._plain_step(*self.batches[batch_idx])
        if batch_idx >= WARMUP:
            self.plain.append(self._last_plain)
        self._last_start = now


def run(template: ImageClassifier, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    timer = PlainLoopInterleaved(copy.deepcopy(template), batches)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(copy.deepcopy(template), DataLoader(batches, batch_size=None))
    return statistics.median(timer.plain), statistics.median(timer.lightning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch_size, 1, 28, 28, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g))
        for _ in range(args.steps)
    ]
    torch.manual_seed(0)
    template = ImageClassifier()
    print(f"threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps} (median per step)")
    print(f"{'repeat':<8} {'plain ms':>10} {'lightning ms':>13} {'ratio':>7}")
    ratios = []
    for repeat in range(args.repeats):
        plain, light = run(template, batches)
        ratios.append(light / plain)
        print(f"{repeat:<8} {plain * 1e3:>10.2f} {light * 1e3:>13.2f} {light / plain:>7.3f}")
    print(f"ratio lightning/plain = {statistics.median(ratios):.3f}  (median of {args.repeats}; target <= 1.10)")


if __name__ == "__main__":
    main()
