"""Unsupervised Guided-VAE on MNIST: the paper's Tables 1 and 3 from the repo's configs, trained side by side in one run.

For each config (default: ``configs/guided_vae_mnist.yaml``, bottleneck 10 with z1 rotation, z2 scale, z3..z10
content; ``configs/guided_vae_mnist_b8.yaml``, bottleneck 8 with ``d_zdef = d_zcont = 4`` and an affine
deformation, the paper's quantitative setting) it trains the config's Guided-VAE and, with the same
backbone, bottleneck, optimiser, batch size, steps and seed, the vanilla VAE (the same config with
``guide_weight: 0``, i.e. the shared VAE with ``KLTerm(beta=1)`` only). ``--table1`` adds Table 1's other rows at
bottleneck 8: beta-VAE (beta 4) and Guided-VAE (rotation: z1), (scaling: z1), (rotation and scaling: z1, z2).

Table 1: reconstruction error on the test set (per image, summed over pixels, posterior mean decoded):
the shared reconstruction loss (Bernoulli negative log-likelihood, what the models minimise) and the squared
error, with the ratio to the vanilla VAE of the same bottleneck. Table 3: test error of a linear probe
(scikit-learn logistic regression on standardised posterior means, trained on the training set) on ``z``,
``z_def`` (the model's first ``def_dim`` latents) and ``z_cont`` (the others); the VAE's same split is the control.

    python benchmarks/guided_vae_mnist.py                       # MNIST sample under $PAPERZOO_DATA (default data/)
    PAPERZOO_DATA=../shared/data python benchmarks/guided_vae_mnist.py --max-steps 3000   # real MNIST (60,000 / 10,000)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from lightning import Trainer, seed_everything

from datamodules.mnist import MNISTDataModule
from lightning_modules.guided_vae import GuidedVAE, latent_codes, linear_probe_error, reconstruction_errors

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "configs" / "guided_vae_mnist.yaml"), str(REPO / "configs" / "guided_vae_mnist_b8.yaml")]
TABLE1 = {  # overrides of the bottleneck-8 config (Table 1's rows)
    "beta-VAE (beta=4)": {"guide_weight": 0.0, "beta": 4.0},
    "Guided-VAE (rotation)": {"def_dim": 1, "deformation": "rotation"},
    "Guided-VAE (scaling)": {"def_dim": 1, "deformation": "scaling"},
    "Guided-VAE (rotation+scaling)": {"def_dim": 2, "deformation": "both"},
}


def model_settings(config: str) -> tuple[dict, float, int]:
    """The config's GuidedVAE init_args (without the optimizer), its Adam learning rate and batch size."""
    cfg = yaml.safe_load(Path(config).read_text())
    model = cfg["model"]
    if model["class_path"].split(".")[-1] != "GuidedVAE":
        raise ValueError(f"{config}: expected a GuidedVAE config, got {model['class_path']}")
    init = dict(model.get("init_args", {}))
    opt = init.pop("optimizer", {}) or {}
    init.pop("scheduler", None)
    lr = float((opt.get("init_args") or {}).get("lr", 1e-3))
    batch = int(cfg.get("data", {}).get("init_args", {}).get("batch_size", 128))
    return init, lr, batch


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="GuidedVAE configs (each: its Guided-VAE and its VAE)")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PAPERZOO_DATA/mnist)")
    parser.add_argument("--max-steps", type=int, default=3000, help="optimizer steps per model")
    parser.add_argument("--guide-weight", type=float, nargs="+", default=None,
                        help="override the configs' guide weight (several: one Guided-VAE row per weight)")
    parser.add_argument("--table1", action="store_true", help="also Table 1's beta-VAE and rotation/scaling rows (bottleneck 8)")
    parser.add_argument("--no-vae", action="store_true", help="skip the vanilla-VAE baselines")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    runs: list[tuple[str, dict, float, int]] = []
    for config in args.configs:
        init, lr, batch = model_settings(config)
        tag = f"{Path(config).stem}, d={init.get('latent_dim', 10)}"
        if not args.no_vae:
            runs.append((f"VAE ({tag})", {**init, "guide_weight": 0.0}, lr, batch))
        for w in args.guide_weight or [init.get("guide_weight", 1.0)]:
            runs.append((f"Guided-VAE ({tag}, {init.get('deformation', 'both')}, weight {w:g})", {**init, "guide_weight": w}, lr, batch))
        if args.table1 and init.get("latent_dim") == 8:
            for name, over in TABLE1.items():
                runs.append((f"{name} ({tag})", {**init, **over}, lr, batch))

    dm = MNISTDataModule(data_dir=args.data_dir, batch_size=runs[0][3], scale="unit", val_fraction=0.0)
    dm.setup("fit")
    dm.setup("test")
    print(f"data: {len(dm.train_set)} train / {len(dm.test_set)} test images from {dm.data_dir}; "
          f"{args.max_steps} steps per model", flush=True)
    results: dict[str, dict[str, float]] = {}
    for name, kwargs, lr, batch in runs:
        seed_everything(args.seed, verbose=False)
        dm.hparams.batch_size = batch
        model = GuidedVAE(**kwargs, optimizer=lambda p, lr=lr: torch.optim.Adam(p, lr=lr))
        trainer = Trainer(
            accelerator="cpu", max_steps=args.max_steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        )
        start = time.time()
        trainer.fit(model, train_dataloaders=dm.train_dataloader())
        train_time = time.time() - start
        nll, sse = reconstruction_errors(model, dm.test_dataloader())
        z_train, y_train = latent_codes(model, dm.train_dataloader())
        z_test, y_test = latent_codes(model, dm.test_dataloader())
        d = model.hparams.def_dim
        results[name] = {
            "latent_dim": model.hparams.latent_dim, "def_dim": d,
            "nll": nll, "sse": sse, "time": train_time,
            "err_z": linear_probe_error(z_train, y_train, z_test, y_test),
            "err_def": linear_probe_error(z_train[:, :d], y_train, z_test[:, :d], y_test),
            "err_cont": linear_probe_error(z_train[:, d:], y_train, z_test[:, d:], y_test),
        }
        r = results[name]
        print(f"  {name}: trained in {train_time:.0f} s; NLL {r['nll']:.2f}, SSE {r['sse']:.2f}; probe error "
              f"z {100 * r['err_z']:.1f}%, z_def (z1..z{d}) {100 * r['err_def']:.1f}%, "
              f"z_cont (z{d + 1}..z{r['latent_dim']}) {100 * r['err_cont']:.1f}%", flush=True)

    print("\nTable 1: test reconstruction error per image (ratio to the vanilla VAE of the same bottleneck)")
    print("| model | d_z | Bernoulli NLL | ratio | squared error | ratio |")
    print("|---|---|---|---|---|---|")
    bases = {r["latent_dim"]: r for name, r in results.items() if name.startswith("VAE")}
    for name, r in results.items():
        base = bases.get(r["latent_dim"])
        ratio_nll = f"{r['nll'] / base['nll']:.3f}" if base else "-"
        ratio_sse = f"{r['sse'] / base['sse']:.3f}" if base else "-"
        print(f"| {name} | {r['latent_dim']} | {r['nll']:.2f} | {ratio_nll} | {r['sse']:.2f} | {ratio_sse} |")
    print("\nTable 3: linear-probe digit error on the test set; z_def = the first def_dim latents, z_cont = the others "
          "(for the VAEs the same split is only a control)")
    print("| model | d_z | d_def + d_cont | z | z_def | z_cont | z_def / z_cont |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["err_def"] / max(r["err_cont"], 1e-9)
        print(f"| {name} | {r['latent_dim']} | {r['def_dim']} + {r['latent_dim'] - r['def_dim']} | {100 * r['err_z']:.1f}% | "
              f"{100 * r['err_def']:.1f}% | {100 * r['err_cont']:.1f}% | {ratio:.2f} |")
    return results


if __name__ == "__main__":
    main()
