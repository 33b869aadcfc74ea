"""Prediction-time overhead of ODIN scoring over a plain forward pass, MC-dropout's beside it.

    python -m datamodules.samples mnist --root data
    python benchmarks/odin_overhead.py [--layer net.fc] [--batch-sizes 128 1] [--mc-samples 10]

Trains the MNIST 0-4 classifier briefly (``configs/odin_mnist.yaml``), fits ODIN on one layer (RSS +
Mahalanobis at 99% explained variance), then times, side by side and interleaved over several rounds,
on the test set in eval mode without gradients: (1) the plain forward pass, (2) the forward pass with
the hooks capturing the layer plus the RSS and Mahalanobis distances, (3) MC-dropout with N passes.
Prints the median time per sample and the ratios to (1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/odin_mnist.yaml")
    parser.add_argument("--layer", default="net.fc")
    parser.add_argument("--pooling", default="flatten")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1])
    parser.add_argument("--mc-samples", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-samples", type=int, default=500, help="test samples timed per round")
    args = parser.parse_args(argv)

    from callbacks.outliers import ODIN
    from lightning_modules.cli import cli

    out = Path(tempfile.mkdtemp(prefix="odin_overhead_"))
    run = cli(["fit", "--config", args.config, f"--trainer.default_root_dir={out}",
               f"--trainer.logger.init_args.save_dir={out}", "--trainer.enable_progress_bar=false",
               "--trainer.enable_model_summary=false", "--trainer.max_epochs=1", "--trainer.limit_train_batches=30",
               "--trainer.limit_val_batches=1", f"--trainer.callbacks.init_args.layers=[{args.layer}]",
               f"--trainer.callbacks.init_args.pooling={args.pooling}",
               "--trainer.callbacks.init_args.levels=[0.99]", "--trainer.callbacks.init_args.distances=[rss, mahalanobis]",
               "--trainer.callbacks.init_args.baselines=[mc_dropout]",
               f"--trainer.callbacks.init_args.mc_samples={args.mc_samples}",
               "--trainer.callbacks.init_args.fit_baselines=false", "--trainer.callbacks.init_args.fit_samples=2000"])
    (odin,) = [cb for cb in run.trainer.callbacks if isinstance(cb, ODIN)]
    model = run.model.eval()
    odin.setup(run.trainer, model, "predict")  # hooks back on (teardown removed them)
    dm = run.datamodule
    dm.setup("test")
    x_all = dm.test_set.tensors[0][: args.max_samples]
    k = odin.fitted["layers"][args.layer]["ranks"]["r0.99"]
    dim = odin.fitted["layers"][args.layer]["mean"].numel()

    def plain(x):
        model(x)

    def with_odin(x):
        _, acts = odin._forward(model, x)
        odin._distances(acts)

    def mc(x):
        model(x)
        odin._mc_dropout(model, x)

    methods = {"plain forward": plain, "forward + ODIN (RSS + Mahalanobis)": with_odin,
               f"MC-dropout ({args.mc_samples} passes)": mc}
    print(f"# ODIN prediction-time overhead: layer {args.layer} ({dim} features, PCA rank {k} at 99%), "
          f"{len(x_all)} MNIST test digits, torch threads {torch.get_num_threads()}\n")
    print("| batch size | method | ms / sample | ratio to plain |")
    print("|---|---|---|---|")
    for bs in args.batch_sizes:
        times: dict[str, list[float]] = {m: [] for m in methods}
        batches = list(x_all.split(bs))
        with torch.no_grad():
            for fn in methods.values():  # warm-up
                fn(batches[0])
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    for x in batches:
                        fn(x)
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["plain forward"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {bs} | {name} | {1000 * med / len(x_all):.4f} | {med / base:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
