"""Train VAE, beta-VAE and beta-TCVAE on dSprites within a CPU time budget each, then print their metric table.

    flock /tmp/paperzoo-cpu.lock python -m benchmarks.vae_dsprites_table --methods vae betavae betatcvae --minutes 30
    python -m benchmarks.vae_dsprites_table --table-only          # print the table of the saved results

Each method trains (Lightning ``max_time``) on the real ``dsprites_downsampled.npz`` (46,080 real images on a
regular sub-grid of the factors; 1% held out for validation), with the MLP encoder/decoder
(4096-512-512-10; the CPU-friendly pair, Chen et al. used an MLP on dSprites too), Adam lr 1e-3, batch 64,
10 latents, Bernoulli decoder; beta-VAE beta = 4, beta-TCVAE alpha = gamma = 1, beta = 6 (MWS estimator).
The metrics are then computed on the real subset's images (every factor combination of the grid is a
real image, so no rendered image enters): BetaVAE, FactorVAE, MIG, SAP and IRS with disentanglement_lib's
default sample counts, DCI with ``--dci-scale`` times them (gradient boosting is the slow part).
Results are appended to ``<out>/results.json`` (one entry per method and run), so methods can be trained
in separate locked runs and the table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lightning import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from callbacks.disentanglement import evaluate_disentanglement
from datamodules.dsprites import DSpritesDataModule
from lightning_modules.vae import VAE
from lightning_modules.vae_losses import BetaTCTerm, KLTerm

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "vae": lambda: [KLTerm(beta=1.0)],
    "betavae": lambda: [KLTerm(beta=4.0)],
    "betatcvae": lambda: [BetaTCTerm(alpha=1.0, beta=6.0, gamma=1.0)],
}
COLUMNS = ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "irs")


def train_and_score(method: str, args: argparse.Namespace) -> dict:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    dm = DSpritesDataModule(data_dir=args.data, source="downsampled", batch_size=64, val_fraction=0.01)
    model = VAE(arch="mlp", arch_kwargs={"hidden": [512, 512]}, latent_dim=10, losses=METHODS[method](),
                optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    logger = TensorBoardLogger(args.out, name=method, default_hp_metric=False)
    trainer = Trainer(
        max_time={"minutes": args.minutes}, max_epochs=-1, logger=logger, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=100, accelerator="cpu",
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scores, times = evaluate_disentanglement(model, dm.factor_sampler, scale=args.scale, seed=0,
                                             scale_overrides={"dci": args.dci_scale})
    result = {
        "method": method, "minutes": args.minutes, "train_seconds": round(train_s, 1), "steps": trainer.global_step,
        "epochs": trainer.current_epoch, "val_loss": float(trainer.callback_metrics.get("val/loss", float("nan"))),
        "metrics_seconds": round(time.perf_counter() - start, 1), "times": {k: round(v, 2) for k, v in times.items()},
        "rendered_images": dm.factor_sampler.rendered, "scale": args.scale, "dci_scale": args.dci_scale, "threads": args.threads, **scores,
    }
    torch.save(model.state_dict(), Path(args.out) / f"{method}.pt")
    print(json.dumps(result))
    return result


def print_table(results: list[dict]) -> None:
    latest = {}
    for r in results:
        latest[r["method"]] = r
    head = f"{'method':<10} {'min':>4} {'steps':>6} {'val loss':>9} " + " ".join(f"{c[:12]:>12}" for c in COLUMNS)
    print(head)
    for method in METHODS:
        if method in latest:
            r = latest[method]
            print(f"{method:<10} {r['minutes']:>4} {r['steps']:>6} {r['val_loss']:>9.2f} " + " ".join(f"{r[c]:>12.3f}" for c in COLUMNS))
    timed = ("encode", "beta_vae", "factor_vae", "mig", "dci", "sap", "irs")
    print("\nseconds per metric (10 latents; sample counts x scale, DCI x dci_scale; encode = encoding the distinct factor combinations, part of the metric times)")
    print(f"{'method':<10} " + " ".join(f"{t:>10}" for t in timed) + f" {'total':>8} {'scale':>6} {'dci x':>6}")
    for method in METHODS:
        if method in latest:
            r = latest[method]
            total = sum(r["times"][t] for t in timed if t != "encode")
            print(f"{method:<10} " + " ".join(f"{r['times'][t]:>10.1f}" for t in timed) + f" {total:>8.1f} {r['scale']:>6} {r['dci_scale']:>6}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget per method")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dsprites"))
    parser.add_argument("--out", default=str(REPO / "runs" / "vae_dsprites_table"))
    parser.add_argument("--scale", type=float, default=1.0, help="sample counts x disentanglement_lib defaults")
    parser.add_argument("--dci-scale", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else []
    if not args.table_only:
        for method in args.methods:
            results.append(train_and_score(method, args))
            path.write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
