"""ODIN outlier-detection table in one command: train, fit ODIN, test, print every score beside the paper.

    python benchmarks/odin_table.py --config configs/odin_mnist.yaml                  # MNIST sample, 0-4 vs 5-9
    PAPERZOO_DATA=../shared/data python benchmarks/odin_table.py --config configs/odin_mnist.yaml
    PAPERZOO_DATA=../shared/data python benchmarks/odin_table.py --config configs/odin_fashion_mnist.yaml

Extra ``lightning`` arguments go after ``--`` (e.g. ``-- --trainer.max_epochs=3``). Prints a Markdown
table: every layer x distance x explained-variance level, then the baselines, with ROC-AUC and FPR at
95% TPR on all outliers (and on each of the callback's ``outlier_sets``), and the test accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the paper's Fashion-MNIST numbers (best ROC-AUC over layers and levels; Table/Figure 2 of the paper)
PAPER_FASHION = {
    "strong": {"rss": 0.97, "mahalanobis": 0.94, "lof": 0.91, "mc_dropout": 0.495},
    "subtle": {"rss": 0.60, "mahalanobis": 0.61, "lof": 0.71, "mc_dropout": 0.63},
}


def _kind(name: str) -> str:
    tail = name.rsplit("/", 1)[-1]
    return tail.rsplit("_", 1)[0] if not name.startswith("baseline/") else tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--ckpt", default=None,
                        help="score this checkpoint (trained with the config, ODIN state inside) instead of training")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("extra", nargs="*", help="further lightning CLI arguments (after --)")
    args = parser.parse_args(argv)

    from callbacks.outliers import ODIN
    from lightning_modules.cli import cli

    out = args.out or Path(tempfile.mkdtemp(prefix="odin_table_"))
    common = ["--config", args.config, f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *args.extra]
    t0 = time.perf_counter()
    if args.ckpt:
        run = cli(["test", *common, "--ckpt_path", args.ckpt])
        t_fit = 0.0
        tested = [dict(run.trainer.callback_metrics)]
        (odin,) = [cb for cb in run.trainer.callbacks if isinstance(cb, ODIN)]
        print(f"scored {args.ckpt}; ODIN refits in this process: {odin.fits}")
    else:
        run = cli(["fit", *common])
        t_fit = time.perf_counter() - t0
        (odin,) = [cb for cb in run.trainer.callbacks if isinstance(cb, ODIN)]
        t0 = time.perf_counter()
        tested = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
    t_test = time.perf_counter() - t0
    acc = float(tested[0].get("test/acc", float("nan"))) if tested else float("nan")

    sets = list(odin.outlier_sets)
    source = f" (scored checkpoint `{args.ckpt}`)" if args.ckpt else ""
    lines = [f"# ODIN outlier detection: `{args.config}` {' '.join(args.extra)}{source}", "",
             f"test accuracy on the known classes: **{acc:.4f}**; ODIN fitted on {odin.fitted['n_fit']} training "
             f"samples; train+fit {t_fit:.0f} s, test {t_test:.0f} s", ""]
    header = "| layer | score | level | ROC-AUC | FPR@95TPR | " + " | ".join(f"ROC-AUC {s}" for s in sets)
    lines += [header.rstrip(" |") + " |", "|" + "---|" * (5 + len(sets))]
    for name, res in odin.results.items():
        if "auroc" not in res:
            continue
        layer, rest = name.rsplit("/", 1)
        score, level = (rest, "") if layer == "baseline" else rest.rsplit("_", 1)
        row = f"| {layer} | {score} | {level} | {res['auroc']:.4f} | {res['fpr95']:.4f} |"
        for s in sets:
            value = odin.set_results.get(name, {}).get(s, {}).get("auroc")
            row += f" {value:.4f} |" if value is not None else " |"
        lines.append(row)

    lines += ["", "Best ROC-AUC per score (over layers and levels):", ""]
    groups = ["all", *sets]
    lines += ["| score | " + " | ".join(groups) + (" | paper strong | paper subtle |" if sets else " |"),
              "|" + "---|" * (1 + len(groups) + (2 if sets else 0))]
    kinds = sorted({_kind(n) for n, r in odin.results.items() if "auroc" in r})
    best_odin = 0.0
    for kind in kinds:
        names = [n for n, r in odin.results.items() if "auroc" in r and _kind(n) == kind]
        vals = [max(odin.results[n]["auroc"] for n in names)]
        for s in sets:
            vals.append(max(odin.set_results.get(n, {}).get(s, {}).get("auroc", float("nan")) for n in names))
        if kind in ("rss", "mahalanobis", "lof"):
            best_odin = max(best_odin, vals[0])
        row = f"| {kind} | " + " | ".join(f"{v:.4f}" for v in vals) + " |"
        if sets:
            row += f" {PAPER_FASHION['strong'].get(kind, '')} | {PAPER_FASHION['subtle'].get(kind, '')} |"
        lines.append(row)
    lines += ["", f"best ODIN distance ROC-AUC (all outliers): **{best_odin:.4f}**"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
