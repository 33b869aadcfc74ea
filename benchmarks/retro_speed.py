"""Retrosynthesis Transformer throughput: Lightning vs a plain PyTorch loop, batched vs one-at-a-time beam search.

Three side-by-side measurements in one run, on the same model and the same batches of the USPTO sample
(or any USPTO folder via ``--data-dir``), alternated A/B/A/B ``--repeats`` times so load from other
processes hits both alike; medians reported:

1. training target tokens per second: ``Trainer.fit`` of RetroTransformer vs a plain loop
   (forward, cross-entropy, backward, Adam + Noam schedule) over the same batches; with ``--bf16`` also the plain
   loop under bf16 autocast vs fp32 (on a CPU with AVX512-BF16 it is what makes ``precision: bf16-mixed`` worth it);
2. beam-search products per second: ``Trainer.predict`` vs a plain loop calling ``predict_reactants``;
3. beam search batched across products vs decoding the same products one at a time (target >= 5x), both with the
   same model, beam and code; the predictions (ranked SMILES and scores) are asserted equal. ``--single-products N``
   times the slow one-at-a-time path on the first N products only (products/s is a rate either way).

With an untrained model no beam emits ``<eos>`` early, so every product decodes ``--max-decode-len`` steps: the
worst case for the cache (longest histories) and no help from early-finishing products.

    python benchmarks/retro_speed.py [--device cpu|cuda] [--steps 30] [--products 48] [--beam 10] [--bf16]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning import Callback, Trainer

from datamodules.uspto import USPTODataModule, token_count
from lightning_modules.retro import RetroTransformer, noam_lambda


class _Timer(Callback):
    """Wall clock of ``fit``/``predict``, and the shape of every training batch.

    Only shapes are read during training: counting the batch's tokens here (``token_count`` reads a number off the
    device) would make the GPU wait at every step, which the plain loop does not do; the tokens are counted on the
    CPU copies of the same batches instead (``shapes`` shows they are the same)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.start = self.end = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.shapes.append(tuple(batch["tgt"].shape))

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()

    def on_predict_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_predict_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()


def _trainer(device: str, steps: int, timer: Callback) -> Trainer:
    return Trainer(accelerator=device, devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0, callbacks=[timer], use_distributed_sampler=False)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with the USPTO CSVs (default: build the sample)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--products", type=int, default=48)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ff", type=int, default=None, help="feed-forward width (default 4 x d_model; the MT uses 2048)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--max-decode-len", type=int, default=120)
    p.add_argument("--single-products", type=int, default=None, help="time one-at-a-time on the first N products")
    p.add_argument("--skip-training", action="store_true", help="only the beam-search measurements")
    p.add_argument("--bf16", action="store_true",
                   help="also time the plain training loop under bf16 autocast (alternated with fp32; ratio printed)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    data_dir = args.data_dir
    if data_dir is None:
        from datamodules.samples import uspto

        root = Path(tempfile.mkdtemp(prefix="retro_bench_"))
        uspto.build(root)
        data_dir = str(root / "uspto_50k")
    dm = USPTODataModule(data_dir=data_dir, max_tokens=args.max_tokens, eval_subset=args.products,
                         eval_batch_size=args.products, augment=0)
    dm.setup("fit")
    dm.setup("test")
    model_kwargs = dict(d_model=args.d_model, nhead=8, num_encoder_layers=args.layers, num_decoder_layers=args.layers,
                        dim_feedforward=args.ff or 4 * args.d_model, beam_size=args.beam, max_decode_len=args.max_decode_len,
                        warmup_steps=100, vocab=list(dm.vocab.itos), val_decode=False,
                        optimizer=lambda params: torch.optim.Adam(params, lr=1.0, betas=(0.9, 0.998)))
    device = torch.device(args.device)
    train_batches = [b for b in dm.train_dataloader()]
    n_tok_plain = sum(token_count(b) for b in train_batches[: args.steps])

    def plain_train(bf16: bool = False) -> float:
        torch.manual_seed(0)
        model = RetroTransformer(**model_kwargs).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.998))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, noam_lambda(args.d_model, 100, 2.0))
        _sync(args.device)
        start = time.perf_counter()
        for b in train_batches[: args.steps]:
            src, tgt = b["src"].to(device), b["tgt"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # what precision=bf16-mixed does
                logits = model(src, tgt[:, :-1])
                loss = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        _sync(args.device)
        return n_tok_plain / (time.perf_counter() - start)

    def lightning_train() -> float:
        torch.manual_seed(0)
        model = RetroTransformer(**model_kwargs)
        timer = _Timer()
        _trainer(args.device, args.steps, timer).fit(model, datamodule=dm)
        # fit's first epoch draws the order train_batches was read in (same sampler, seed and epoch)
        assert timer.shapes == [tuple(b["tgt"].shape) for b in train_batches[: args.steps]], "not the same batches"
        return n_tok_plain / (timer.end - timer.start)

    test_batches = list(dm.test_dataloader())
    n_products = sum(len(b["product"]) for b in test_batches)
    torch.manual_seed(0)
    eval_model = RetroTransformer(**model_kwargs).to(device).eval()

    predictions: dict[str, list] = {}

    def plain_beam() -> float:
        eval_model.to(device).eval()  # Trainer.predict moves the model back to the CPU when it ends
        _sync(args.device)
        start = time.perf_counter()
        out = []
        with torch.no_grad():
            for b in test_batches:
                out.append(eval_model.predict_reactants(b["src"].to(device), beam_size=args.beam))
        _sync(args.device)
        rate = n_products / (time.perf_counter() - start)
        predictions["batched"] = [(s, sc.cpu()) for o in out for s, sc in zip(o["smiles"], o["scores"])]
        return rate

    def lightning_beam() -> float:
        timer = _Timer()
        _trainer(args.device, 1, timer).predict(eval_model, dataloaders=dm.predict_dataloader())
        return n_products / (timer.end - timer.start)

    singles = [b["src"][i : i + 1, : int((b["src"][i] != 0).sum())] for b in test_batches for i in range(len(b["src"]))]
    singles = singles[: args.single_products]

    def one_at_a_time() -> float:
        eval_model.to(device).eval()
        _sync(args.device)
        start = time.perf_counter()
        out = []
        with torch.no_grad():
            for src in singles:
                out.append(eval_model.predict_reactants(src.to(device), beam_size=args.beam))
        _sync(args.device)
        rate = len(singles) / (time.perf_counter() - start)
        predictions["single"] = [(o["smiles"][0], o["scores"][0].cpu()) for o in out]
        return rate

    rows: dict[str, list[float]] = {k: [] for k in ("plain_train", "lightning_train", "plain_beam",
                                                     "lightning_beam", "one_at_a_time", "plain_train_bf16")}
    for _ in range(args.repeats):
        if not args.skip_training:
            rows["plain_train"].append(plain_train())
            rows["lightning_train"].append(lightning_train())
            if args.bf16:
                rows["plain_train_bf16"].append(plain_train(bf16=True))
        rows["plain_beam"].append(plain_beam())
        rows["lightning_beam"].append(lightning_beam())
        rows["one_at_a_time"].append(one_at_a_time())
    # same outputs: batched decoding gives every product exactly what decoding it alone gives
    for (s_b, sc_b), (s_1, sc_1) in zip(predictions["batched"], predictions["single"]):
        assert s_b == s_1, (s_b, s_1)
        assert torch.allclose(sc_b, sc_1, atol=1e-3), (sc_b, sc_1)
    n_checked = len(predictions["single"])
    med = {k: statistics.median(v) if v else float("nan") for k, v in rows.items()}
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {name}; model d_model={args.d_model}, {args.layers}+{args.layers} layers, "
          f"ff {args.ff or 4 * args.d_model}; "
          f"{'no' if args.skip_training else args.steps} training batches (<= {args.max_tokens} tokens); {n_products} products, beam {args.beam}, "
          f"max {args.max_decode_len} tokens; {torch.get_num_threads()} threads; medians of {args.repeats} alternated "
          f"repeats; batched == one-at-a-time predictions asserted on {n_checked} products")
    print(f"| measurement | plain PyTorch | Lightning | Lightning / plain |")
    print(f"|---|---|---|---|")
    if not args.skip_training:
        print(f"| training target tokens/s | {med['plain_train']:.0f} | {med['lightning_train']:.0f} | "
              f"{med['lightning_train'] / med['plain_train']:.2f} |")
    print(f"| beam-search products/s | {med['plain_beam']:.2f} | {med['lightning_beam']:.2f} | "
          f"{med['lightning_beam'] / med['plain_beam']:.2f} |")
    if args.bf16 and not args.skip_training:
        print(f"\n| plain training loop | target tokens/s |\n|---|---|\n| fp32 | {med['plain_train']:.0f} |\n"
              f"| bf16 autocast (precision=bf16-mixed) | {med['plain_train_bf16']:.0f} |\n"
              f"| bf16 / fp32 | {med['plain_train_bf16'] / med['plain_train']:.2f}x |")
    ratio = med["plain_beam"] / med["one_at_a_time"]
    print(f"\n| beam search | products/s |\n|---|---|\n| batched ({args.products} per call) | {med['plain_beam']:.2f} |"
          f"\n| one product at a time ({n_checked} products) | {med['one_at_a_time']:.2f} |\n| speed-up | {ratio:.1f}x "
          f"({'meets' if ratio >= 5 else 'BELOW'} the 5x target) |")
    # the ceiling: a product's beam is already a batch of `beam` rows; batching multiplies the rows of every matrix
    # product by the number of products, which only helps as much as the matrix-product throughput grows with rows
    d, ff = args.d_model, args.ff or 4 * args.d_model
    print("\n| feed-forward matrix product (rows x d @ d x ff) | GFLOP/s |\n|---|---|")
    gflops = []
    for rows in (args.beam, args.beam * args.products):
        x, w = torch.randn(rows, d, device=device), torch.randn(ff, d, device=device)
        n = max(20, 40000 // rows)
        for _ in range(3):
            F.linear(x, w)
        _sync(args.device)
        start = time.perf_counter()
        for _ in range(n):
            F.linear(x, w)
        _sync(args.device)
        gflops.append(2 * rows * d * ff * n / (time.perf_counter() - start) / 1e9)
        print(f"| {rows} x {d} @ {d} x {ff} | {gflops[-1]:.1f} |")
    print(f"| ratio (what batching gains where decoding is matrix-product-bound) | {gflops[1] / gflops[0]:.1f}x |")


if __name__ == "__main__":
    main()
