"""Time of each disentanglement metric on 10 latent dims of a (briefly) trained model, disentanglement_lib defaults.

    flock /tmp/paperzoo-cpu.lock python -m benchmarks.vae_metrics_timing [--train-seconds 45] [--dci-scale 1.0]

Trains beta-TCVAE (MLP 4096-512-512-10) on the real ``dsprites_downsampled.npz`` for ``--train-seconds``,
then runs the whole suite (BetaVAE, FactorVAE, MIG, DCI, SAP, IRS) with the default sample counts (DCI times
``--dci-scale``) on the real subset's images, printing the seconds of each metric. ``encode`` is the time
spent rendering/reading and encoding the distinct factor combinations (46,080 at most), included in the
metric that first needs them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from lightning import Trainer, seed_everything

from callbacks.disentanglement import evaluate_disentanglement
from datamodules.dsprites import DSpritesDataModule
from lightning_modules.vae import VAE
from lightning_modules.vae_losses import BetaTCTerm

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dsprites"))
    parser.add_argument("--train-seconds", type=float, default=45.0)
    parser.add_argument("--dci-scale", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    seed_everything(0)
    torch.set_num_threads(args.threads)
    dm = DSpritesDataModule(data_dir=args.data, source="downsampled", batch_size=64)
    model = VAE(arch="mlp", arch_kwargs={"hidden": [512, 512]}, latent_dim=10, losses=[BetaTCTerm(beta=6.0)],
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    Trainer(max_time={"seconds": args.train_seconds}, max_epochs=-1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, accelerator="cpu").fit(model, dm)
    start = time.perf_counter()
    scores, times = evaluate_disentanglement(model, dm.factor_sampler, scale=1.0, seed=0, scale_overrides={"dci": args.dci_scale})
    total = time.perf_counter() - start
    print(f"metric suite on 10 latents, disentanglement_lib sample counts (DCI x {args.dci_scale}), {args.threads} threads")
    print(f"{'metric':<12} {'seconds':>8} {'score':>8}")
    for name in ("beta_vae", "factor_vae", "mig", "dci", "sap", "irs"):
        score = scores.get(name, scores.get("dci_disentanglement"))
        print(f"{name:<12} {times[name]:>8.1f} {score:>8.3f}")
    print(f"{'(encode)':<12} {times['encode']:>8.1f} {int(times['encoded_images']):>8d} images")
    print(f"{'total':<12} {total:>8.1f}   budget 120 s: {'OK' if total <= 120 else 'OVER'}")


if __name__ == "__main__":
    main()
