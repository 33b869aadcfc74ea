"""Unsupervised Guided-VAE on MNIST: the paper's Tables 1 and 3, trained side by side in one run.

Every model has the same backbone, bottleneck (8), optimiser, batch size, number of steps and seed:

* VAE (``guide_weight 0``), beta-VAE (``guide_weight 0, beta 4``);
* Guided-VAE (rotation: ``z1``), (scaling: ``z1``), (rotation and scaling: ``z1``, ``z2``), as in Table 1;
* Guided-VAE (affine, ``d_zdef = d_zcont = 4``), the Table 3 setting.

Table 1: reconstruction error on the test set (per image, summed over pixels, posterior mean decoded):
Bernoulli negative log-likelihood (the ``recon`` the models minimise) and squared error, with the ratio to
the vanilla VAE. Table 3: test error of a linear probe (scikit-learn logistic regression) trained on the
training set's posterior means ``z``, ``z_def`` (first half) and ``z_cont`` (second half); the VAE's halves
are the control.

    python benchmarks/guided_vae_mnist.py                          # MNIST sample under $PAPERZOO_DATA (default data/)
    python benchmarks/guided_vae_mnist.py --data-dir ../shared/data/mnist --max-steps 800   # real MNIST
"""

from __future__ import annotations

import argparse
import time

import torch
from lightning import Trainer, seed_everything

from datamodules.mnist import MNISTDataModule
from lightning_modules.guided_vae import GuidedVAE, linear_probe_error

LATENT = 8
VARIANTS: dict[str, dict] = {
    "VAE": {"guide_weight": 0.0, "def_dim": 4, "deformation": "affine"},
    "beta-VAE (beta=4)": {"guide_weight": 0.0, "beta": 4.0, "def_dim": 4, "deformation": "affine"},
    "Guided-VAE (rotation)": {"def_dim": 1, "deformation": "rotation"},
    "Guided-VAE (scaling)": {"def_dim": 1, "deformation": "scaling"},
    "Guided-VAE (rotation+scaling)": {"def_dim": 2, "deformation": "both"},
    "Guided-VAE (affine, d_def=d_cont=4)": {"def_dim": 4, "deformation": "affine"},
    "VAE (d=16)": {"guide_weight": 0.0, "def_dim": 8, "deformation": "affine", "latent_dim": 16},
    "Guided-VAE (affine, d_def=d_cont=8)": {"def_dim": 8, "deformation": "affine", "latent_dim": 16},
}
DEFAULT_VARIANTS = [
    "VAE", "Guided-VAE (affine, d_def=d_cont=4)", "VAE (d=16)", "Guided-VAE (affine, d_def=d_cont=8)",
    "beta-VAE (beta=4)", "Guided-VAE (rotation+scaling)", "Guided-VAE (rotation)", "Guided-VAE (scaling)",
]


@torch.no_grad()
def reconstruction_errors(model: GuidedVAE, loader) -> tuple[float, float]:
    """Test-set means per image of the Bernoulli NLL and the squared error (posterior mean decoded)."""
    model.eval()
    nll = sse = 0.0
    n = 0
    for x, _ in loader:
        mu, logvar = model.encoder(x)
        terms = model._elbo_terms(x, mu, logvar, mu)
        nll += terms["recon"].item() * len(x)
        sse += terms["mse"].item() * len(x)
        n += len(x)
    return nll / n, sse / n


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $PAPERZOO_DATA/mnist)")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--guide-weight", type=float, nargs="+", default=[2.0],
                        help="guide weight(s) of the Guided-VAE variants (several: one row per weight)")
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--hidden", type=int, nargs="+", default=[400], help="MLP widths")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, help="subset of the variants")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dm = MNISTDataModule(data_dir=args.data_dir, batch_size=args.batch_size, scale="unit", val_fraction=0.0)
    dm.setup("fit")
    dm.setup("test")
    print(f"data: {len(dm.train_set)} train / {len(dm.test_set)} test images from {dm.data_dir}; "
          f"{args.max_steps} steps of batch {args.batch_size}, arch {args.arch} {args.hidden}, bottleneck {LATENT} unless the name says")
    arch_kwargs = {"hidden": args.hidden} if args.arch == "mlp" else None
    results: dict[str, dict[str, float]] = {}
    runs = []
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
        if VARIANTS[name].get("guide_weight") == 0.0:
            runs.append((name, VARIANTS[name]))
        for w in ([] if VARIANTS[name].get("guide_weight") == 0.0 else args.guide_weight):
            label = name if len(args.guide_weight) == 1 else f"{name}, weight {w:g}"
            runs.append((label, {**VARIANTS[name], "guide_weight": w}))
    for name, kwargs in runs:
        seed_everything(args.seed, verbose=False)
        kwargs = {"latent_dim": LATENT, **kwargs}
        model = GuidedVAE(
            arch=args.arch, arch_kwargs=arch_kwargs,
            optimizer=lambda p: torch.optim.Adam(p, lr=args.lr), **kwargs,
        )
        trainer = Trainer(
            accelerator="cpu", max_steps=args.max_steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        )
        start = time.time()
        trainer.fit(model, train_dataloaders=dm.train_dataloader())
        train_time = time.time() - start
        nll, sse = reconstruction_errors(model, dm.test_dataloader())
        z_train, y_train = model.latent_codes(dm.train_dataloader())
        z_test, y_test = model.latent_codes(dm.test_dataloader())
        h = model.hparams.latent_dim // 2
        results[name] = {
            "latent_dim": model.hparams.latent_dim,
            "nll": nll, "sse": sse, "time": train_time,
            "err_z": linear_probe_error(z_train, y_train, z_test, y_test),
            "err_def": linear_probe_error(z_train[:, :h], y_train, z_test[:, :h], y_test),
            "err_cont": linear_probe_error(z_train[:, h:], y_train, z_test[:, h:], y_test),
        }
        r = results[name]
        print(f"  {name}: trained in {train_time:.0f} s; NLL {r['nll']:.2f}, SSE {r['sse']:.2f}; probe error "
              f"z {100 * r['err_z']:.1f}%, first half {100 * r['err_def']:.1f}%, second half {100 * r['err_cont']:.1f}%",
              flush=True)

    print("\nTable 1: test reconstruction error per image (ratio to the vanilla VAE of the same bottleneck)")
    print("| model | d_z | Bernoulli NLL | ratio | squared error | ratio |")
    print("|---|---|---|---|---|---|")
    bases = {r["latent_dim"]: r for name, r in results.items() if name.startswith("VAE")}
    for name, r in results.items():
        base = bases.get(r["latent_dim"])
        ratio_nll = f"{r['nll'] / base['nll']:.3f}" if base else "-"
        ratio_sse = f"{r['sse'] / base['sse']:.3f}" if base else "-"
        print(f"| {name} | {r['latent_dim']} | {r['nll']:.2f} | {ratio_nll} | {r['sse']:.2f} | {ratio_sse} |")
    print("\nTable 3: linear-probe digit error on the test set; z_def = first half of z, z_cont = second half "
          "(for the VAEs and the rotation/scaling variants the halves are only a control split)")
    print("| model | d_z | z | z_def (first half) | z_cont (second half) | z_def / z_cont |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        ratio = r["err_def"] / max(r["err_cont"], 1e-9)
        print(f"| {name} | {r['latent_dim']} | {100 * r['err_z']:.1f}% | {100 * r['err_def']:.1f}% | "
              f"{100 * r['err_cont']:.1f}% | {ratio:.2f} |")
    return results


if __name__ == "__main__":
    main()
