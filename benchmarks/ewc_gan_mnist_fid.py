"""FID of DCGAN and EWC-DCGAN on MNIST at the same number of steps, mean over seeds (classifier features).

    PAPERZOO_DATA=../shared/data flock /tmp/paperzoo-cpu.lock .venv/bin/python benchmarks/ewc_gan_mnist_fid.py

1. The feature network: the foundation's ``ImageClassifier`` trained on MNIST with
   ``configs/classifier_mnist.yaml`` for ``--classifier-epochs`` (or ``--classifier CKPT``).
2. For each seed: ``configs/gan_mnist.yaml`` (DCGAN) and ``configs/ewc_gan_mnist.yaml`` (the same plus the
   online EWC penalty on D) trained for ``--iters`` iterations (one D and one G step each), then
   ``lightning test``-equivalent: FID and IS in the classifier's features between ``--fid-samples`` images of
   the official test set and as many generated ones.
Prints one row per run and a table of mean ± std. The runs use the real CLI (``lightning_modules.cli``).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from lightning_modules.cli import cli

REPO = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def out(tmp: Path) -> list[str]:
    return [f"--trainer.default_root_dir={tmp}", f"--trainer.logger.init_args.save_dir={tmp}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--fid-samples", type=int, default=10_000)
    p.add_argument("--classifier", default=None, help="an ImageClassifier checkpoint (else one is trained)")
    p.add_argument("--classifier-epochs", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=64)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="ewc_gan_fid_"))
    clf = args.classifier
    if clf is None:
        run = cli(["fit", "--config", str(REPO / "configs/classifier_mnist.yaml"), *QUIET, *out(tmp),
                   f"--trainer.max_epochs={args.classifier_epochs}"])
        clf = str(tmp / "classifier_mnist" / "checkpoints" / "last.ckpt")
        acc = float(run.trainer.callback_metrics.get("val/acc", float("nan")))
        print(f"# feature classifier: {args.classifier_epochs} epoch(s), val/acc {acc:.4f}", flush=True)
    results: dict[str, list[dict[str, float]]] = {"DCGAN": [], "EWC-DCGAN": []}
    for seed in range(args.seeds):
        for name, config in (("DCGAN", "gan_mnist"), ("EWC-DCGAN", "ewc_gan_mnist")):
            common = ["--config", str(REPO / f"configs/{config}.yaml"), *QUIET, *out(tmp / f"{config}_{seed}"),
                      f"--model.init_args.fid_weights={clf}", "--model.init_args.fid_network=classifier",
                      f"--model.init_args.fid_samples={args.fid_samples}",
                      f"--model.init_args.base_channels={args.base_channels}", f"--seed_everything={seed}"]
            start = time.perf_counter()
            run = cli(["fit", *common, f"--trainer.max_steps={2 * args.iters}", "--trainer.max_epochs=-1",
                       "--trainer.limit_val_batches=0"])
            seconds = time.perf_counter() - start
            (scores,) = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
            row = {"fid": scores["test/fid"], "is": scores["test/is"], "it/s": args.iters / seconds}
            results[name].append(row)
            print(f"# {name} seed {seed}: test FID {row['fid']:.3f}  IS {row['is']:.3f}  {row['it/s']:.1f} it/s", flush=True)

    def ms(values):
        mean = sum(values) / len(values)
        return f"{mean:.3f} ± {math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)):.3f}"

    print(f"\nMNIST, {args.iters} iterations, batch 64, {args.seeds} seeds; FID/IS in the MNIST classifier's features "
          f"against {args.fid_samples} official test images")
    print("| model | FID (classifier) | IS (classifier) | it/s |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {ms([r['fid'] for r in rows])} | {ms([r['is'] for r in rows])} | {ms([r['it/s'] for r in rows])} |")


if __name__ == "__main__":
    main()
