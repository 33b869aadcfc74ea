"""GraphQA throughput, each number beside its baseline measured in the same run.

    python benchmarks/graphqa_throughput.py [--targets 8 --decoys 8]

1. Featurisation (PDB -> residue graph with DSSP, RSA, dihedrals, true LDDT/GDT_TS), decoys per second:
   ``featurize_workers=N`` processes vs one process (the single-threaded baseline); then reading the
   per-target ``.pt`` cache vs featurising.
2. Training, graphs per second: ``lightning fit`` machinery (Trainer, GraphQA module, 1 epoch, no
   validation) vs a plain PyTorch loop over the same network, data and batch size.

Builds its own small sample in a temporary folder. Run it under the shared CPU lock on a busy machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def _featurize(root: Path, workers: int, cache: Path):
    from datamodules.casp import CASPDataModule

    shutil.rmtree(cache, ignore_errors=True)
    dm = CASPDataModule(data_dir=str(root / "casp"), cache_dir=str(cache), test_fraction=0.0, val_fraction=0.0,
                        featurize_workers=workers, batch_size=16)
    t0 = time.perf_counter()
    dm.setup()
    return dm, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--decoys", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from datamodules.samples import casp as casp_sample

    tmp = Path(tempfile.mkdtemp(prefix="graphqa_bench_"))
    try:
        casp_sample.build(tmp, seed=0, targets=args.targets, decoys=args.decoys)
        n = args.targets * args.decoys
        rows = []
        dm, single = _featurize(tmp, 0, tmp / "cache1")
        _, multi = _featurize(tmp, args.workers, tmp / "cache2")
        from datamodules.casp import CASPDataModule

        dm2 = CASPDataModule(data_dir=str(tmp / "casp"), cache_dir=str(tmp / "cache2"), test_fraction=0.0,
                             val_fraction=0.0)
        t0 = time.perf_counter()
        dm2.setup()
        cached = time.perf_counter() - t0
        rows.append(("featurisation, 1 process (baseline)", n / single, 1.0))
        rows.append((f"featurisation, {args.workers} processes", n / multi, single / multi))
        rows.append(("cached .pt load vs featurising", n / cached, single / cached))

        # training: plain PyTorch loop vs Lightning
        import lightning as L

        from lightning_modules.graphqa import GraphQA

        kwargs = dict(layers=4, enc_widths=(32, 128, 128), out_widths=(16, 32, 32), dropout=0.1)
        graphs = dm.train_set + dm.val_set
        dm.hparams.batch_size = args.batch_size
        torch.manual_seed(0)
        model = GraphQA(**kwargs)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
        from torch_geometric.loader import DataLoader

        loader = DataLoader(graphs, batch_size=args.batch_size, shuffle=True)
        t0 = time.perf_counter()
        for batch in loader:
            local, glob = model(batch)
            mask = model.local_mask(batch)
            loss = torch.nn.functional.mse_loss(local[mask], batch.lddt[mask]) + torch.nn.functional.mse_loss(
                glob, batch.gdt_ts)
            opt.zero_grad()
            loss.backward()
            opt.step()
        plain = time.perf_counter() - t0
        torch.manual_seed(0)
        model = GraphQA(**kwargs)
        trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        t0 = time.perf_counter()
        trainer.fit(model, train_dataloaders=DataLoader(graphs, batch_size=args.batch_size, shuffle=True))
        lightning = time.perf_counter() - t0
        rows.append(("training, plain PyTorch loop (baseline)", len(graphs) / plain, 1.0))
        rows.append(("training, Lightning Trainer", len(graphs) / lightning, plain / lightning))
        print(f"{n} decoys, {args.targets} targets, torch threads {torch.get_num_threads()}")
        print(f"{'what':42} {'per second':>11} {'ratio':>7}")
        for name, rate, ratio in rows:
            print(f"{name:42} {rate:11.1f} {ratio:7.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
