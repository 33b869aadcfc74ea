"""Base vs mixture SMILES Transformer on a USPTO-format data set, each trained for a fixed wall-clock budget.

One command trains the base model (``configs/retro_uspto.yaml``) and the mixture (``configs/retro_mixture_uspto.yaml``,
``--latent`` classes, online hard-EM) with the same small architecture and budget, tests both on the test split
with beam search and prints top-1/3/5/10, invalid fraction and unique-classes@10. By default it builds the
offline sample (synthetic reactions of real molecules) in a temporary folder.

    flock /tmp/paperzoo-cpu.lock python benchmarks/retro_sample_compare.py --budget 00:00:03:00
    python benchmarks/retro_sample_compare.py --per-class 400 --latent 2 --max-steps 4300   # equal updates
    python benchmarks/retro_sample_compare.py --per-class 400 --pretrain random --pretrain-steps 3000 --max-steps 4300
    python benchmarks/retro_sample_compare.py --per-class 400 --latent 2 --pretrain random --pretrain-steps 3000 \\
        --max-steps 4300 --seeds 0 1 2     # one pre-training, then base and mixture fine-tuned at each seed + means
    python benchmarks/retro_sample_compare.py --data-root ../shared/data --accelerator gpu --budget 00:00:03:00 \\
        --d-model 256 --layers 4 --ff 2048     # real USPTO-50k, Molecular Transformer sizes
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def common_args(config: str, name: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    out = [
        "--config", str(REPO / "configs" / config),
        f"--trainer.default_root_dir={args.out}", f"--trainer.logger.init_args.save_dir={args.out}",
        f"--trainer.logger.init_args.name={name}", f"--checkpoint.dirpath={args.ckpt_dir or args.out}/{name}/checkpoints",
        f"--trainer.accelerator={args.accelerator}", "--trainer.devices=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--model.init_args.d_model={args.d_model}", f"--model.init_args.num_encoder_layers={args.layers}",
        f"--model.init_args.num_decoder_layers={args.layers}", f"--model.init_args.dim_feedforward={args.ff}",
        f"--model.init_args.warmup_steps={args.warmup}", f"--model.init_args.noam_factor={args.noam_factor}", f"--model.init_args.max_decode_len={args.max_decode_len}",
        f"--model.init_args.classifier_epochs={args.classifier_epochs}",
        f"--data.init_args.max_tokens={args.max_tokens}", f"--data.init_args.eval_batch_size={args.eval_batch_size}",
        f"--data.init_args.augment={args.augment}", f"--seed_everything={args.seed}", f"--data.init_args.seed={args.seed}",
        *extra,
    ]
    if args.eval_subset:
        out.append(f"--data.init_args.eval_subset={args.eval_subset}")
    if args.classifier_max:
        out.append(f"--model.init_args.classifier_max_examples={args.classifier_max}")
    if args.precision:
        out.append(f"--trainer.precision={args.precision}")
    return out


FIT = ["--trainer.max_epochs=100000", "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=20"]


def pretrain(args: argparse.Namespace) -> str:
    """Pre-train one base model (``configs/retro_pretrain_uspto.yaml``) for ``--pretrain-steps``; its checkpoint
    initialises both models (the mixture's latent embeddings start fresh)."""
    from lightning_modules.cli import cli

    name = f"retro_pretrain_{args.pretrain}"
    ckpt = f"{args.ckpt_dir or args.out}/{name}/checkpoints/last.ckpt"
    if not args.test_only:
        start = time.perf_counter()
        cli(["fit", *common_args("retro_pretrain_uspto.yaml", name, args, [f"--data.init_args.pretrain={args.pretrain}"]),
             f"--trainer.max_steps={args.pretrain_steps}", "--trainer.limit_val_batches=0", *FIT])
        print(f"pre-train ({args.pretrain}): {args.pretrain_steps} steps in {time.perf_counter() - start:.0f} s",
              flush=True)
    return ckpt


def run(config: str, name: str, args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    from lightning_modules.cli import cli

    common = common_args(config, name, args, extra)
    budget = [f"--trainer.max_steps={args.max_steps}"] if args.max_steps else [
        f"--trainer.max_time={args.budget}", "--trainer.max_steps=-1"]
    ckpt = f"{args.ckpt_dir or args.out}/{name}/checkpoints/last.ckpt"
    if args.test_only:  # re-test the checkpoints an earlier run left in --out
        import torch

        train_s, steps = float("nan"), torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    else:
        start = time.perf_counter()
        fit = cli(["fit", *common, *budget, f"--trainer.check_val_every_n_epoch={args.val_every}", *FIT])
        train_s, steps = time.perf_counter() - start, fit.trainer.global_step
    start = time.perf_counter()
    test = cli(["test", *common, "--ckpt_path", ckpt])
    out = {k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")}
    out.update(train_s=train_s, test_s=time.perf_counter() - start, steps=steps)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="data root holding uspto_50k/ (default: build the sample)")
    p.add_argument("--per-class", dest="per_class", type=int, default=60,
                   help="sample size: at most this many reactions per class (60: the test suite's 519-reaction sample)")
    p.add_argument("--out", default=None, help="output folder (TensorBoard runs, checkpoints)")
    p.add_argument("--budget", default="00:00:03:00", help="training wall-clock per model, DD:HH:MM:SS")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None,
                   help="train each model this many steps instead (same number of updates; the mixture's E-step "
                        "makes its steps dearer, so equal wall-clock gives it fewer)")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default=None)
    p.add_argument("--latent", type=int, default=3)
    p.add_argument("--d-model", dest="d_model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ff", type=int, default=512)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--noam-factor", dest="noam_factor", type=float, default=0.5)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=2048)
    p.add_argument("--max-decode-len", dest="max_decode_len", type=int, default=120)
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=32)
    p.add_argument("--eval-subset", dest="eval_subset", type=int, default=None)
    p.add_argument("--augment", type=int, default=1)
    p.add_argument("--val-every", dest="val_every", type=int, default=1000)
    p.add_argument("--classifier-epochs", dest="classifier_epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every run: seed_everything (weights, dropout) and the DataModule (batch order, Aug)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train and test base and mixture once per seed (runs in <out>/seed<N>; one shared "
                        "pre-training, made with the first seed) and print each seed's rows and their means")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--only", choices=["base", "mixture"], default=None, help="train and test just one model")
    p.add_argument("--test-only", dest="test_only", action="store_true",
                   help="only test the checkpoints an earlier run left in --out (same --data-root and model flags)")
    p.add_argument("--ckpt-dir", dest="ckpt_dir", default=None, help="checkpoints (default: under --out)")
    p.add_argument("--pretrain", choices=["none", "random", "template"], default="none",
                   help="pre-train one base model on the training products first (the paper's Pre-train (R) / (T)); "
                        "base and mixture are both fine-tuned from its checkpoint")
    p.add_argument("--pretrain-steps", dest="pretrain_steps", type=int, default=2000)
    p.add_argument("--init-from", dest="init_from", default=None,
                   help="fine-tune both models from this checkpoint (e.g. an earlier run's pre-training) instead")
    p.add_argument("--classifier-max-examples", dest="classifier_max", type=int, default=None)
    args = p.parse_args(argv)
    if args.data_root is None:
        from datamodules.samples import uspto

        args.data_root = tempfile.mkdtemp(prefix="retro_sample_")
        uspto.build(Path(args.data_root), per_class=args.per_class)
    os.environ["PAPERZOO_DATA"] = str(args.data_root)
    args.out = args.out or tempfile.mkdtemp(prefix="retro_compare_")
    seeds = args.seeds or [args.seed]
    args.seed = seeds[0]
    init = []
    if args.init_from:
        init = [f"--model.init_args.init_from={args.init_from}"]
    elif args.pretrain != "none":
        init = [f"--model.init_args.init_from={pretrain(args)}"]
    models = (("base", "retro_uspto.yaml", 1), (f"mixture K={args.latent}", "retro_mixture_uspto.yaml", args.latent))
    models = [m for m in models if not args.only or m[0].startswith(args.only)]
    results: dict[str, dict[str, float]] = {}
    for seed in seeds:
        run_args = argparse.Namespace(**vars(args))
        run_args.seed = seed
        if len(seeds) > 1:
            run_args.out = f"{args.out}/seed{seed}"
            run_args.ckpt_dir = f"{args.ckpt_dir}/seed{seed}" if args.ckpt_dir else None
        for name, config, k in models:
            row = f"{name}, seed {seed}" if len(seeds) > 1 else name
            results[row] = run(config, "retro_base" if k == 1 else "retro_mixture", run_args,
                               [f"--model.init_args.num_latent={k}", *init])
            print(row, json.dumps(results[row]), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
    if len(seeds) > 1:
        for name, _, _ in models:
            rows = [results[f"{name}, seed {seed}"] for seed in seeds]
            results[f"{name}, mean of {len(seeds)} seeds"] = seed_mean(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    keys = ["test/top1_acc", "test/top3_acc", "test/top5_acc", "test/top10_acc", "test/invalid_frac",
            "test/unique_classes@10"]
    budget = f"{args.max_steps} training steps" if args.max_steps else f"{args.budget} of training"
    budget += " per model"
    if args.init_from:
        budget += f", fine-tuned from {args.init_from}"
    elif args.pretrain != "none":
        budget += f", fine-tuned from one {args.pretrain_steps}-step pre-training ({args.pretrain})"
    print(f"\ndata: {args.data_root}; {budget} on {args.accelerator}; "
          f"d_model {args.d_model}, {args.layers}+{args.layers} layers, ff {args.ff}; "
          f"seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}; runs in {args.out}")
    print(table(results, keys))
    if len(seeds) > 1 and len(models) == 2:
        base, mix = models[0][0], models[1][0]
        diff = [results[f"{mix}, seed {s}"]["test/top10_acc"] - results[f"{base}, seed {s}"]["test/top10_acc"]
                for s in seeds]
        print(f"\nmixture - base top-10, per seed: {', '.join(f'{d:+.3f}' for d in diff)}")


def seed_mean(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each number over the seeds' results."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def table(results: dict[str, dict[str, float]], keys: list[str]) -> str:
    lines = ["| model | steps | " + " | ".join(k.split("/")[1] for k in keys) + " | train s | test s |",
             "|---" * (len(keys) + 4) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['steps']:.0f} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in keys)
                     + f" | {r['train_s']:.0f} | {r['test_s']:.0f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
