"""8-Gaussians study of the EWC-GAN paper: GAN, SN-GAN, EWC-GAN (two alphas) and IS-GAN over several seeds.

    flock /tmp/paperzoo-cpu.lock .venv/bin/python benchmarks/ewc_gan_gaussians_study.py --seeds 5 --iters 800

Each run is the real thing (``GAN`` LightningModule + ``GaussianMixtureDataModule`` + the penalty callback,
trained by a Lightning ``Trainer``), shortened from the paper's 25K iterations to ``--iters`` (one
iteration = one D step and one G step). At the end 10,000 samples are scored: ICP, symmetric KL (grid
estimator of :mod:`metrics.generative`), modes covered, high-quality fraction; ``it/s`` is iterations per
second of the whole ``fit`` on this machine's CPU. Prints a table of mean and std over seeds.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings

import torch
from lightning import Trainer, seed_everything

from callbacks.continual import EWCPenalty, ISPenalty
from datamodules.gaussians import GaussianMixtureDataModule
from lightning_modules.gan import GAN


def variants(args) -> dict[str, tuple[dict, object]]:
    """name -> (GAN kwargs, penalty factory or None)."""
    ewc = dict(lam=args.lam, gamma=args.gamma, fisher=args.fisher)
    return {
        "GAN": ({}, None),
        "SN-GAN": ({"spectral_norm": True}, None),
        f"EWC-GAN a={args.alphas[0]}": ({}, lambda: EWCPenalty(alpha=args.alphas[0], **ewc)),
        f"EWC-GAN a={args.alphas[1]}": ({}, lambda: EWCPenalty(alpha=args.alphas[1], **ewc)),
        f"IS-GAN a={args.alphas[0]}": ({}, lambda: ISPenalty(alpha=args.alphas[0], lam=args.is_lam, gamma=args.gamma)),
    }


def run(name: str, gan_kwargs: dict, penalty, seed: int, args) -> dict[str, float]:
    seed_everything(seed, verbose=False)
    opt = lambda params: torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.999))  # noqa: E731
    model = GAN(arch="mlp", latent_dim=args.latent_dim, hidden=args.hidden, layers=2, fid_network="none",
                optimizer_g=opt, optimizer_d=opt, **gan_kwargs)
    dm = GaussianMixtureDataModule(batch_size=args.batch_size, train_size=args.batch_size * args.iters, data_seed=seed)
    callbacks = [penalty()] if penalty is not None else []
    trainer = Trainer(max_steps=2 * args.iters, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    elapsed = time.perf_counter() - start
    torch.manual_seed(10_000 + seed)
    scores = {k: float(v) for k, v in model.mixture_scores(10_000).items()}
    scores["it/s"] = args.iters / elapsed
    return scores


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--iters", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--alphas", type=int, nargs=2, default=[10, 100])
    p.add_argument("--lam", type=float, default=100.0, help="EWC lambda")
    p.add_argument("--is-lam", type=float, default=100.0, help="IS lambda")
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--fisher", default="deferred", choices=["deferred", "extra_pass", "last_step"],
                   help="EWC Fisher minibatch (callbacks.continual): deferred (default) or extra_pass (the earlier default)")
    p.add_argument("--only", nargs="*", default=None, help="run only these variants (names as printed)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)

    rows = []
    for name, (kwargs, penalty) in variants(args).items():
        if args.only and name not in args.only:
            continue
        results = [run(name, kwargs, penalty, seed, args) for seed in range(args.seeds)]
        rows.append((name, results))
        print(f"# {name}: " + "  ".join(f"icp={r['icp']:.2f}/kl={r['sym_kl']:.2f}/m={r['modes']:.0f}" for r in results), flush=True)

    def ms(values):
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
        return f"{mean:.3f} ± {std:.3f}"

    print(f"\n8 Gaussians, {args.iters} iterations, batch {args.batch_size}, {args.seeds} seeds "
          f"(EWC lambda={args.lam} fisher={args.fisher}, IS lambda={args.is_lam}, gamma={args.gamma}); mean ± std over seeds")
    print(f"| model | ICP | sym. KL | modes (of 8) | high-quality frac. | it/s |")
    print("|---|---|---|---|---|---|")
    for name, results in rows:
        cols = [ms([r[k] for r in results]) for k in ("icp", "sym_kl", "modes", "hq_fraction", "it/s")]
        print(f"| {name} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
