"""The paper's MNIST forgetting experiment: a discriminator learns "fake MNIST" tasks in sequence, with and without EWC.

    PAPERZOO_DATA=../shared/data flock /tmp/paperzoo-cpu.lock .venv/bin/python benchmarks/ewc_gan_mnist_forgetting.py

1. A DCGAN (``GAN``, 28 px) trains on MNIST; every ``--interval`` iterations its generator draws a "fake
   MNIST" data set of ``--fake`` images from the same fixed noise (the paper: 70K images every 50 iterations).
2. Task t = real MNIST (label 1) versus fake set t (label 0). A fresh discriminator (the foundation's
   ``ImageClassifier``, 2 classes) learns the tasks in order, ``--epochs`` per task, once without a penalty
   and once with :class:`callbacks.continual.EWCPenalty` on the whole network (``target=net``, one task per
   fit: ``alpha`` = the task's steps, ``gamma=1``; ``fisher="extra_pass"``: Fisher = mean squared per-sample
   gradient of the cross-entropy on ``--fisher-samples`` images of the task, at the task's end).
3. Accuracy on every task's held-out 20% after the last task, and the mean over the earlier tasks.
The fake data sets are synthetic by construction; the real images come from ``$PAPERZOO_DATA/mnist``.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import torch
import torch.nn.functional as F
from lightning import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from callbacks.continual import EWCPenalty
from datamodules.mnist import MNISTDataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.gan import GAN

TRAINER = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0)


class Snapshots(Callback):
    """Every ``interval`` iterations, generate ``n`` images from fixed noise (one "fake MNIST" data set)."""

    def __init__(self, interval: int, n: int, latent_dim: int) -> None:
        self.interval, self.z, self.sets = interval, torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(7)), []
        self.iterations = 0  # counted across epochs (batch_idx restarts every epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.iterations += 1
        if self.iterations % self.interval == 0:
            pl_module.generator.eval()
            with torch.no_grad():
                self.sets.append(torch.cat([pl_module.generator(z) for z in self.z.split(500)]).cpu())
            pl_module.generator.train()


class TaskDiscriminator(ImageClassifier):
    """ImageClassifier whose EWC importance loss is per-sample cross-entropy on a batch of the current task."""

    fisher_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def importance_loss(self) -> torch.Tensor:
        x, y = self.fisher_batch
        x, y = x.to(self.device), y.to(self.device)
        return F.cross_entropy(self(x), y, reduction="none")


def accuracy(model: ImageClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--interval", type=int, default=100)
    p.add_argument("--fake", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lam", type=float, default=1000.0)
    p.add_argument("--fisher-samples", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    seed_everything(args.seed, verbose=False)

    dm = MNISTDataModule(scale="symmetric", batch_size=64, val_fraction=0.0)
    dm.setup("fit")
    real = dm.train_set.tensors[0]
    gan = GAN(arch="dcgan", image_size=28, channels=1, base_channels=32, latent_dim=100, fid_network="none")
    snaps = Snapshots(args.interval, args.fake, 100)
    Trainer(max_steps=2 * args.interval * args.tasks, max_epochs=-1, callbacks=[snaps], **TRAINER).fit(gan, dm.train_dataloader())
    tasks = []
    g = torch.Generator().manual_seed(args.seed)
    for fake in snaps.sets[: args.tasks]:
        r = real[torch.randperm(len(real), generator=g)[: len(fake)]]
        x = torch.cat([r, fake])
        y = torch.cat([torch.ones(len(r), dtype=torch.long), torch.zeros(len(fake), dtype=torch.long)])
        perm = torch.randperm(len(x), generator=g)
        x, y = x[perm], y[perm]
        cut = int(0.8 * len(x))
        tasks.append(((x[:cut], y[:cut]), (x[cut:], y[cut:])))
    # the classifier expects MNIST standardisation: map [-1, 1] images to it
    norm = lambda t: ((t + 1) / 2 - MNISTDataModule.mean) / MNISTDataModule.std  # noqa: E731

    results = {}
    for name in ("plain", "EWC"):
        seed_everything(args.seed, verbose=False)
        model = TaskDiscriminator(num_classes=2)
        steps = (len(tasks[0][0][0]) + 63) // 64 * args.epochs
        penalty = EWCPenalty(target="net", lam=args.lam, alpha=steps, gamma=1.0, log_key="train/ewc_penalty",
                             fisher="extra_pass")  # tasks in separate fits: Fisher on the task's own data
        just_learned = []
        for (train_x, train_y), (test_x, test_y) in tasks:
            model.fisher_batch = (norm(train_x[: args.fisher_samples]), train_y[: args.fisher_samples])
            loader = DataLoader(TensorDataset(norm(train_x), train_y), batch_size=64, shuffle=True)
            Trainer(max_epochs=args.epochs, callbacks=[penalty] if name == "EWC" else [], **TRAINER).fit(model, loader)
            just_learned.append(accuracy(model, norm(test_x), test_y))
        final = [accuracy(model, norm(tx), ty) for _, (tx, ty) in tasks]
        results[name] = (just_learned, final)

    print(f"\nFake-MNIST forgetting: {len(tasks)} tasks (DCGAN snapshots every {args.interval} iterations, "
          f"{args.fake} fake + {args.fake} real images each, 80/20 split), {args.epochs} epochs per task, EWC lambda={args.lam}")
    print("| discriminator | " + " | ".join(f"task {t + 1}" for t in range(len(tasks))) + " | mean over earlier tasks |")
    print("|---|" + "---|" * (len(tasks) + 1))
    for name, (just, final) in results.items():
        print(f"| {name}: right after learning | " + " | ".join(f"{a:.3f}" for a in just) + " | |")
        earlier = final[:-1]
        print(f"| {name}: after the last task | " + " | ".join(f"{a:.3f}" for a in final)
              + f" | {sum(earlier) / max(len(earlier), 1):.3f} |")


if __name__ == "__main__":
    main()
