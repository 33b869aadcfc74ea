"""FID of DCGAN and EWC-DCGAN on MNIST at the same number of steps, mean over seeds (classifier features).

    PAPERZOO_DATA=../shared/data flock /tmp/paperzoo-cpu.lock .venv/bin/python benchmarks/ewc_gan_mnist_fid.py

1. The feature network: the foundation's ``ImageClassifier`` trained on MNIST with
   ``configs/classifier_mnist.yaml`` for ``--classifier-epochs`` (or ``--classifier CKPT``).
2. For each seed: ``configs/gan_mnist.yaml`` (DCGAN) and ``configs/ewc_gan_mnist.yaml`` (the same plus the
   online EWC penalty on D) trained for ``--iters`` iterations (one D and one G step each), then
   ``lightning test``-equivalent: FID and IS in the classifier's features between ``--fid-samples`` images of
   the official test set and as many generated ones.
Prints one row per run and a table of mean ± std. The runs use the real CLI (``lightning_modules.cli``).

Resumable, to split the study over several shorter runs: with ``--results FILE.jsonl`` every finished run
is appended to FILE (with its settings) and runs already there (same model, seed and settings) are skipped;
the classifier is kept at ``--workdir/classifier_mnist/checkpoints/last.ckpt`` and reused. Repeat the same
command until the table has every seed, e.g. twice under ``timeout 590``; ``--seed-list 0 1`` runs a subset.
"""

from __future__ import annotations

import argparse
import json
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
    p.add_argument("--seed-list", type=int, nargs="*", default=None, help="run only these seeds (default 0..seeds-1)")
    p.add_argument("--results", default=None, help="JSONL file: finished runs are appended, runs already there skipped")
    p.add_argument("--workdir", default=None, help="output folder (default a new temporary one); keeps the classifier")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ewc_gan_fid_"))
    settings = {"iters": args.iters, "fid_samples": args.fid_samples, "base_channels": args.base_channels}
    done: list[dict] = []
    if args.results and Path(args.results).is_file():
        done = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
        done = [r for r in done if r.get("settings") == settings]
    clf = args.classifier
    saved_clf = tmp / "classifier_mnist" / "checkpoints" / "last.ckpt"
    if clf is None and saved_clf.is_file():
        clf = str(saved_clf)
        print(f"# feature classifier: reusing {clf}", flush=True)
    if clf is None:
        run = cli(["fit", "--config", str(REPO / "configs/classifier_mnist.yaml"), *QUIET, *out(tmp),
                   f"--trainer.max_epochs={args.classifier_epochs}"])
        clf = str(tmp / "classifier_mnist" / "checkpoints" / "last.ckpt")
        acc = float(run.trainer.callback_metrics.get("val/acc", float("nan")))
        print(f"# feature classifier: {args.classifier_epochs} epoch(s), val/acc {acc:.4f}", flush=True)
        (tmp / "classifier_acc.txt").write_text(f"{args.classifier_epochs} epoch(s), val/acc {acc:.4f}\n")
    elif (tmp / "classifier_acc.txt").is_file():
        print(f"# feature classifier: {(tmp / 'classifier_acc.txt').read_text().strip()}", flush=True)
    results: dict[str, list[dict[str, float]]] = {"DCGAN": [], "EWC-DCGAN": []}
    for r in done:
        results[r["model"]].append(r)
        print(f"# {r['model']} seed {r['seed']}: test FID {r['fid']:.3f}  IS {r['is']:.3f}  {r['it/s']:.1f} it/s "
              f"(from {args.results})", flush=True)
    for seed in args.seed_list if args.seed_list is not None else range(args.seeds):
        for name, config in (("DCGAN", "gan_mnist"), ("EWC-DCGAN", "ewc_gan_mnist")):
            if any(r["model"] == name and r["seed"] == seed for r in done):
                continue
            common = ["--config", str(REPO / f"configs/{config}.yaml"), *QUIET, *out(tmp / f"{config}_{seed}"),
                      f"--model.init_args.fid_weights={clf}", "--model.init_args.fid_network=classifier",
                      f"--model.init_args.fid_samples={args.fid_samples}",
                      f"--model.init_args.base_channels={args.base_channels}", f"--seed_everything={seed}"]
            start = time.perf_counter()
            run = cli(["fit", *common, f"--trainer.max_steps={2 * args.iters}", "--trainer.max_epochs=-1",
                       "--trainer.limit_val_batches=0"])
            seconds = time.perf_counter() - start
            (scores,) = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
            row = {"model": name, "seed": seed, "fid": scores["test/fid"], "is": scores["test/is"],
                   "it/s": args.iters / seconds, "settings": settings}
            results[name].append(row)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
            print(f"# {name} seed {seed}: test FID {row['fid']:.3f}  IS {row['is']:.3f}  {row['it/s']:.1f} it/s", flush=True)

    def ms(values):
        mean = sum(values) / len(values)
        return f"{mean:.3f} ± {math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)):.3f}"

    seeds = {name: sorted(r["seed"] for r in rows) for name, rows in results.items()}
    print(f"\nMNIST, {args.iters} iterations, batch 64, seeds {seeds}; FID/IS in the MNIST classifier's features "
          f"against {args.fid_samples} official test images")
    print("| model | FID (classifier) | IS (classifier) | it/s |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        if not rows:
            continue
        print(f"| {name} | {ms([r['fid'] for r in rows])} | {ms([r['is'] for r in rows])} | {ms([r['it/s'] for r in rows])} |")


if __name__ == "__main__":
    main()
