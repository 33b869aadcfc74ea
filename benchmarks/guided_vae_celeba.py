"""Supervised Guided-VAE on CelebA: attribute error from z_t versus z_rst_t (the paper's Figure 5, left).

Trains the supervised Guided-VAE (excitation + adversarial inhibition) and, side by side with the same
backbone, steps and seed, a plain VAE (both weights 0) as the control. Then, for each guided attribute, a
linear probe (scikit-learn logistic regression) is trained on the training split's posterior means and
tested on the held-out split: error from ``z_t`` alone and from ``z_rst_t`` (the other 15 latents), beside
chance: the error of always predicting the training split's majority class (the best a code without the attribute can do). ``sign(z_t)`` is the decision rule the hinge trains; its error is shown too.

    # the synthetic sample (known attributes; python -m datamodules.samples celeba --root data --num-images 2000)
    python benchmarks/guided_vae_celeba.py
    # the 600-image check on real faces: train on the 420 official-train images, test on the 180 val+test ones
    python benchmarks/guided_vae_celeba.py --data-dir ../shared/data/celeba --real-check
"""

from __future__ import annotations

import argparse
import time

import torch
from lightning import Trainer, seed_everything
from torch.utils.data import ConcatDataset, DataLoader

from datamodules.celeba import CelebADataModule
from lightning_modules.guided_vae import SupervisedGuidedVAE, chance_error, linear_probe_error

ATTRIBUTES = ["Smiling", "Male", "Black_Hair"]
DISENTANGLEMENT_METRICS = ["mig", "sap", "dci"]
SCORE_KEYS = ["mig", "sap", "dci_disentanglement", "dci_completeness"]


class FaceFactors:
    """The sample's ground-truth generator in the protocol of :mod:`callbacks.disentanglement`."""

    def __init__(self, image_size: int) -> None:
        from datamodules.samples.celeba import FACTOR_SIZES, FaceFactorSampler

        self.factor_sizes = list(FACTOR_SIZES)
        self.sampler = FaceFactorSampler(image_size=image_size, scale="unit", jpeg=True)

    def sample_factors(self, n: int, rng):
        from datamodules.samples.celeba import sample_factors

        return sample_factors(n, rng)

    def sample_observations_from_factors(self, factors, rng):
        return self.sampler.render(factors)


def _loaders(args) -> tuple[DataLoader, DataLoader, DataLoader, str]:
    dm = CelebADataModule(
        data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size, scale="unit", cache=True,
        attributes=ATTRIBUTES,
    )
    dm.setup("fit")
    dm.setup("test")
    train = dm.datasets["train"]
    held_out = ConcatDataset([dm.datasets["val"], dm.datasets["test"]]) if args.real_check else dm.datasets["test"]
    shuffled = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=len(train) > args.batch_size)
    ordered = DataLoader(train, batch_size=256)
    test = DataLoader(held_out, batch_size=256)
    desc = f"{len(train)} train / {len(held_out)} held-out images from {dm.base_folder} ({dm.skipped} listed images absent)"
    return shuffled, ordered, test, desc


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding celeba/ (default: $PAPERZOO_DATA/celeba)")
    parser.add_argument("--real-check", action="store_true", help="held-out = official val + test (the 600 real images)")
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256, help="as configs/guided_vae_celeba.yaml")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--arch", default="conv", help="conv (32 px, CPU-friendly), mlp, or conv64 (64 px, the paper's size)")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--inhibition", nargs="+", default=["least_squares", "maximize"],
                        choices=["maximize", "confuse", "least_squares"],
                        help="the encoder's side of the game (several: one Guided-VAE per choice); default: the "
                             "config's least_squares beside the paper's maximize")
    parser.add_argument("--inhibition-weight", type=float, default=10.0, help="as configs/guided_vae_celeba.yaml")
    parser.add_argument("--excitation-weight", type=float, default=50.0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="MLP widths (arch mlp)")
    parser.add_argument("--adversary-steps", type=int, default=5, help="C_t updates per batch")
    parser.add_argument("--adversary-lr", type=float, default=2e-3)
    parser.add_argument("--adversary-layers", type=int, nargs="+", default=[2],
                        help="hidden layers of the C_t (2: the authors' MLP; 0: linear, like the probes); several: one model each")
    parser.add_argument("--standardize", action="store_true",
                        help="the C_t standardise each latent with batch statistics first (default: raw codes, as the config)")
    parser.add_argument("--adversary-input", default="mean", choices=["mean", "sample"],
                        help="what the C_t read in training: posterior means (what the probes read) or samples")
    parser.add_argument("--no-control", action="store_true", help="skip the plain-VAE control")
    parser.add_argument("--disentanglement", type=float, default=0.0,
                        help="also score MIG/SAP/DCI on the sample's known factors at this fraction of "
                             "disentanglement_lib's sample counts (0: skip; the synthetic sample only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    shuffled, ordered, test, desc = _loaders(args)
    print(f"data: {desc}; {args.max_steps} steps of batch {args.batch_size}, {args.image_size} px, arch {args.arch}, "
          f"bottleneck {args.latent_dim}, excitation/inhibition weights {args.excitation_weight:g}/{args.inhibition_weight:g}, "
          f"{args.adversary_steps} adversary updates per batch (lr {args.adversary_lr:g}) on the "
          f"{'standardised' if args.standardize else 'raw'} {args.adversary_input}s")
    variants = {
        f"Guided-VAE ({inh}, C_t {'linear' if layers == 0 else f'MLP {layers}'})": (args.excitation_weight, args.inhibition_weight, inh, layers)
        for inh in args.inhibition for layers in args.adversary_layers
    }
    if not args.no_control:
        variants["VAE (control)"] = (0.0, 0.0, "maximize", args.adversary_layers[0])
    arch_kwargs = {"conv": {"channels": [32, 64, 64]}, "mlp": {"hidden": args.hidden}}.get(args.arch)
    results: dict[str, dict[str, dict[str, float]]] = {}
    disentanglement: dict[str, dict[str, float]] = {}
    for name, (exc, inh, inhibition, layers) in variants.items():
        seed_everything(args.seed, verbose=False)
        model = SupervisedGuidedVAE(
            in_channels=3, image_size=args.image_size, latent_dim=args.latent_dim, guide_attributes=ATTRIBUTES,
            arch=args.arch, arch_kwargs=arch_kwargs, excitation_weight=exc, inhibition_weight=inh,
            inhibition=inhibition, adversary_steps=args.adversary_steps, adversary_input=args.adversary_input,
            adversary_layers=layers, adversary_standardize=args.standardize,
            optimizer=lambda p: torch.optim.Adam(p, lr=args.lr), adversary_optimizer=lambda p: torch.optim.Adam(p, lr=args.adversary_lr),
        )
        model.resolve_attributes(ATTRIBUTES)
        trainer = Trainer(
            accelerator="cpu", max_steps=(1 + args.adversary_steps) * args.max_steps,  # every optimizer.step() counts
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0,
        )
        start = time.time()
        trainer.fit(model, train_dataloaders=shuffled)
        z_train, a_train = model.latent_codes(ordered)
        z_test, a_test = model.latent_codes(test)
        y_train, y_test = model.targets(a_train), model.targets(a_test)
        per_attr = {}
        for t, attr in enumerate(ATTRIBUTES):
            rest = [i for i in range(args.latent_dim) if i != t]
            per_attr[attr] = {
                "z_t": linear_probe_error(z_train[:, t], y_train[:, t], z_test[:, t], y_test[:, t]),
                "z_rst": linear_probe_error(z_train[:, rest], y_train[:, t], z_test[:, rest], y_test[:, t]),
                "sign": float(((z_test[:, t] > 0).float() != y_test[:, t]).float().mean()),
                "chance": chance_error(y_train[:, t], y_test[:, t]),
            }
        results[name] = per_attr
        if args.disentanglement > 0:
            from callbacks.disentanglement import evaluate_disentanglement

            scores, _ = evaluate_disentanglement(model, FaceFactors(args.image_size), DISENTANGLEMENT_METRICS,
                                                 scale=args.disentanglement, seed=args.seed)
            disentanglement[name] = scores
        print(f"  {name}: {time.time() - start:.0f} s; " + "; ".join(
            f"{a}: z_t {100 * r['z_t']:.1f}%, z_rst {100 * r['z_rst']:.1f}%, chance {100 * r['chance']:.1f}%"
            for a, r in per_attr.items()), flush=True)

    print("\nAttribute error on the held-out images (linear probe on the training split's posterior means)")
    print("| model | attribute | from z_t | sign(z_t) | from z_rst_t | chance (majority) |")
    print("|---|---|---|---|---|---|")
    for name, per_attr in results.items():
        for attr, r in per_attr.items():
            print(f"| {name} | {attr} | {100 * r['z_t']:.1f}% | {100 * r['sign']:.1f}% | {100 * r['z_rst']:.1f}% | "
                  f"{100 * r['chance']:.1f}% |")
    if disentanglement:
        print(f"\nDisentanglement on the sample's 10 known factors (scale {args.disentanglement:g} of the default sample counts)")
        print("| model | " + " | ".join(SCORE_KEYS) + " |")
        print("|---|" + "---|" * len(SCORE_KEYS))
        for name, scores in disentanglement.items():
            print(f"| {name} | " + " | ".join(f"{scores.get(m, float('nan')):.3f}" for m in SCORE_KEYS) + " |")
    return results


if __name__ == "__main__":
    main()
