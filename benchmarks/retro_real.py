"""Base and mixture SMILES Transformers trained on the real USPTO-50k training split, tested on the real test split.

One command for a session with a lent GPU (15 minutes of device time in all, start-up included): both models are
trained at the Molecular Transformer's sizes for ``--budget-s`` seconds of wall clock each (by default at the same
time, as two processes sharing the GPU, so the CPU-bound parts overlap), then tested with beam search (beam 10) on
all 5,007 test products; prints top-1/3/5/10, the invalid fraction and unique-classes@10 beside the paper's
numbers, writes TensorBoard runs (``train/loss`` curves) and a JSON under ``--out``. Only RDKit has to be added to
the device's image (this script does not import the CLI, so none of the other papers' packages are needed).

On the device (``run``: ``timeout_s=600``; budget: ~1.5 min start-up, ~1 min data, 2 x 150 s training in
parallel, ~2-3 min classifier + beam-search test; measured on an H200 on 2026-11-27 with ``--budget-s 130``: the
command took 402 s, data setup 44 s, test 164-192 s per model; 130-150 s of training is only ~1,800-2,000 steps at
these sizes, before whole reactant sets come out right: give it more device time where a session has it):

    # here, once:  echo /.whl/ >> .git/info/exclude; mkdir -p data && cp -r ../shared/data/uspto_50k data/
    #   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
    #       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl rdkit==2026.9.1
    # run(carry=[".whl", "data/uspto_50k"], timeout_s=600, command=
    #   "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
    #    PYTHONUNBUFFERED=1 python3 benchmarks/retro_real.py --out $OUT 2>&1 | tee $OUT/retro_real.log")

Without a GPU (both models at once, each with half of the CPU cores; what the README's CPU table ran; on a CPU with
AVX512-BF16 bf16 autocast trains this model 1.6x faster than fp32, as ``benchmarks/retro_speed.py --bf16 --d-model 128
--layers 3 --ff 512`` measured on the 2-core AMD EPYC here):

    python benchmarks/retro_real.py --accelerator cpu --precision bf16-mixed --budget-s 7200 --latent 2 \\
        --max-tokens 8192 --warmup 400 --d-model 128 --layers 3 --ff 512 --out runs/retro_real_cpu_bf16

Each model saves ``<out>/retro_real_<model>/checkpoints/last.ckpt`` every ``--checkpoint-minutes`` and at the batch
where its time runs out; the same command with ``--resume`` and a larger ``--budget-s`` (the total, earlier runs
included) continues both models at the next batch of the same epoch and tests them again.

CPU smoke check of the whole path (tiny subsets, seconds of training; numbers meaningless):

    flock /tmp/paperzoo-cpu.lock python benchmarks/retro_real.py --budget-s 10 --train-subset 300 \\
        --eval-subset 8 --sequential --out /tmp/retro_real_cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from functools import partial
from pathlib import Path

from lightning import Trainer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ["test/top1_acc", "test/top3_acc", "test/top5_acc", "test/top10_acc", "test/invalid_frac",
        "test/unique_classes@10"]
# Chen et al. (USPTO-50k, reaction class unknown, Table 2/3 of the paper as read here); unique classes: Table 4
PAPER = {
    "base": {"test/top1_acc": 0.42, "test/top10_acc": None, "test/unique_classes@10": 2.66},
    "mixture": {"test/top1_acc": None, "test/top10_acc": None, "test/unique_classes@10": 3.32},
}


def last_checkpoint(path: Path, every_minutes: float) -> ResumableCheckpoint:
    """``path`` (a ``last.ckpt``) every ``every_minutes`` of training and at the batch where time runs out, inside the
    epoch, so ``--resume`` continues that epoch (see :mod:`callbacks.checkpoint`); one file, overwritten."""
    from callbacks.checkpoint import ResumableCheckpoint

    return ResumableCheckpoint(dirpath=Path(path).parent, save_last=True, save_top_k=0, enable_version_counter=False,
                               train_time_interval=timedelta(minutes=every_minutes))


def train_and_test(name: str, args: argparse.Namespace) -> dict[str, float]:
    import torch
    from lightning import seed_everything
    from lightning.pytorch.callbacks import Timer
    from lightning.pytorch.loggers import TensorBoardLogger

    from datamodules.uspto import USPTODataModule
    from lightning_modules.retro import RetroTransformer

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    gpu = args.accelerator == "gpu"
    if gpu:
        torch.set_float32_matmul_precision("high")
    k = 1 if name == "base" else args.latent
    start = time.perf_counter()
    dm = USPTODataModule(data_dir=str(Path(args.data_root) / "uspto_50k"), augment=args.augment,
                         max_tokens=args.max_tokens, eval_batch_size=args.eval_batch_size,
                         train_subset=args.train_subset, eval_subset=args.eval_subset, seed=0)
    model = RetroTransformer(d_model=args.d_model, num_encoder_layers=args.layers, num_decoder_layers=args.layers,
                             dim_feedforward=args.ff, num_latent=k, warmup_steps=args.warmup, noam_factor=args.noam_factor,
                             max_decode_len=args.max_decode_len, val_decode=False,
                             classifier_epochs=args.classifier_epochs,
                             classifier_max_examples=args.classifier_max_examples,
                             optimizer=partial(torch.optim.Adam, lr=1.0, betas=(0.9, 0.998)))
    logger = TensorBoardLogger(args.out, name=f"retro_real_{name}", version="", default_hp_metric=False)
    last = Path(args.out) / f"retro_real_{name}" / "checkpoints" / "last.ckpt"
    # last.ckpt every few minutes and where time runs out: --resume continues it (the max_time Timer's elapsed time
    # is in the checkpoint, so --budget-s is the total over all runs)
    checkpoint = last_checkpoint(last, args.checkpoint_minutes)
    trainer = Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, logger=logger,
                      max_time={"seconds": args.budget_s}, max_epochs=-1, max_steps=-1, limit_val_batches=0,
                      num_sanity_val_steps=0, log_every_n_steps=20, callbacks=[checkpoint],
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    resume = args.resume and last.is_file()
    if args.resume and not resume:
        print(f"{name}: --resume but no {last}: training from scratch", flush=True)
    trainer.fit(model, datamodule=dm, ckpt_path=str(last) if resume else None)
    run_s = time.perf_counter() - start
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    train_s = timer.time_elapsed("train")  # all runs of this model together
    steps = trainer.global_step
    start = time.perf_counter()
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    out = {key: float(v) for key, v in metrics.items() if key.startswith("test/")}
    out.update(setup_s=setup_s, train_s=train_s, this_run_train_s=run_s, resumed=bool(resume),
               test_s=time.perf_counter() - start, steps=steps, latent=k,
               test_products=len(dm.datasets["test"]), train_examples=len(dm.datasets["train"]),
               device=torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads per model)")
    return out


def main(argv: list[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = "data" if (REPO / "data" / "uspto_50k" / "raw_test.csv").is_file() else str(REPO.parent / "shared" / "data")
    p.add_argument("--data-root", default=default_root, help="folder holding uspto_50k/ (default: data/ or ../shared/data)")
    p.add_argument("--out", default=None, help="TensorBoard runs + retro_real.json (default: a temporary folder)")
    p.add_argument("--budget-s", dest="budget_s", type=float, default=150.0,
                   help="training seconds per model (with --resume: in all, earlier runs included)")
    p.add_argument("--resume", action="store_true",
                   help="continue each model from <out>/retro_real_<model>/checkpoints/last.ckpt where there is one")
    p.add_argument("--checkpoint-minutes", dest="checkpoint_minutes", type=float, default=10.0,
                   help="minutes of training between last.ckpt saves (one is also saved at the end)")
    p.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None,
                   help="default: bf16-mixed on a GPU, 32-true on the CPU (bf16-mixed also runs on the CPU: autocast)")
    p.add_argument("--latent", type=int, default=3)
    p.add_argument("--d-model", dest="d_model", type=int, default=256, help="default: the Molecular Transformer's sizes")
    p.add_argument("--layers", type=int, default=4, help="encoder and decoder layers each")
    p.add_argument("--ff", type=int, default=2048)
    p.add_argument("--augment", type=int, default=1)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=16384)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--noam-factor", dest="noam_factor", type=float, default=1.0)
    p.add_argument("--max-decode-len", dest="max_decode_len", type=int, default=140)
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=int, default=500)
    p.add_argument("--classifier-epochs", dest="classifier_epochs", type=int, default=5)
    p.add_argument("--classifier-max-examples", dest="classifier_max_examples", type=int, default=10000)
    p.add_argument("--train-subset", dest="train_subset", type=int, default=None, help="smoke checks only")
    p.add_argument("--eval-subset", dest="eval_subset", type=int, default=None, help="smoke checks only")
    p.add_argument("--only", choices=["base", "mixture"], default=None)
    p.add_argument("--work", default=None, help="per-model logs and JSON of the parallel runs (default: a temp dir; "
                   "kept out of --out so that a device's $OUT holds at most 8 files)")
    p.add_argument("--sequential", action="store_true", help="one model after the other in this process")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per model (default: on the CPU, the cores shared between the models run at once)")
    args = p.parse_args(argv)
    args.precision = args.precision or ("bf16-mixed" if args.accelerator == "gpu" else "32-true")
    args.out = args.out or tempfile.mkdtemp(prefix="retro_real_")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    names = [args.only] if args.only else ["base", "mixture"]
    if args.threads is None and args.accelerator == "cpu" and not (args.only or args.sequential):
        args.threads = max(1, (os.cpu_count() or 1) // len(names))
    results: dict[str, dict] = {}
    if args.only or args.sequential:
        for name in names:
            results[name] = train_and_test(name, args)
            print(name, json.dumps(results[name]), flush=True)
    else:  # both at once on the one GPU: two processes, each writes its JSON
        work = Path(args.work or tempfile.mkdtemp(prefix="retro_real_work_"))
        work.mkdir(parents=True, exist_ok=True)
        procs = []
        for name in names:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", name,
                   "--out", args.out, "--work", str(work)]
            if args.threads is not None:
                cmd += ["--threads", str(args.threads)]
            procs.append((name, subprocess.Popen(cmd, stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT)))
        for name, proc in procs:
            if proc.wait() != 0:
                print(f"{name} failed (exit {proc.returncode}); the end of its log ({work}/{name}.log):")
                print((work / f"{name}.log").read_text()[-3000:])
            else:
                results.update(json.loads((work / f"{name}.json").read_text()))
    if args.only:
        work = Path(args.work or args.out)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{args.only}.json").write_text(json.dumps(results, indent=2))
        return
    (Path(args.out) / "retro_real.json").write_text(json.dumps(results, indent=2))
    any_r = next(iter(results.values()), {})
    print(f"\n{Path(args.data_root) / 'uspto_50k'}: {any_r.get('train_examples')} training examples (augment {args.augment}), "
          f"{any_r.get('test_products')} test products, beam 10; {args.budget_s:.0f} s of training per model on "
          f"{any_r.get('device')}, {args.precision}; d_model {args.d_model}, {args.layers}+{args.layers} layers, "
          f"feed-forward {args.ff}; runs in {args.out}")
    print("| model | steps | " + " | ".join(k.split("/")[1] for k in KEYS) + " | setup s | train s | test s |")
    print("|---" * (len(KEYS) + 5) + "|")
    for name, r in results.items():
        label = "base" if r["latent"] == 1 else f"mixture K={r['latent']}"
        print(f"| {label} (ours) | {r['steps']} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k in KEYS)
              + f" | {r['setup_s']:.0f} | {r['train_s']:.0f} | {r['test_s']:.0f} |")
    for name, ref in PAPER.items():
        print(f"| {name} (paper, full training) | - | "
              + " | ".join("-" if ref.get(k) is None else f"{ref[k]:.2f}" for k in KEYS) + " | - | - | - |")


if __name__ == "__main__":
    main()
