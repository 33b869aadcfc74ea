"""GraphQA trained on the synthetic sample, evaluated on the three real CASP13 targets (+ leave-one-target-out).

    python benchmarks/graphqa_casp13_eval.py --ckpt runs/graphqa_casp/checkpoints/last.ckpt \
        [--data ../shared/data/casp] [--finetune-epochs 10]

1. ``zero-shot``: the checkpoint as it is, on all decoys of T0951, T0967 and T0980s1.
2. ``LOTO``: for each target, the checkpoint fine-tuned on the other two targets' decoys, then tested on it.

Prints per target: GDT_TS Pearson R (= R_target for one target), Spearman, RMSE, first-rank loss, and
LDDT R_model and RMSE; then the mean over the three targets. THREE TARGETS ONLY: not comparable to the
paper's CASP11/12 numbers in strength of evidence.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch_geometric.loader import DataLoader

from datamodules.casp import CASPDataModule
from lightning_modules.graphqa import GraphQA
from metrics.ranking import GroupedQAMetrics

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "casp"


@torch.no_grad()
def evaluate(model: GraphQA, graphs) -> dict[str, float]:
    model.eval()
    glob_m, local_m = GroupedQAMetrics("target"), GroupedQAMetrics("model", ranking=False)
    for batch in DataLoader(graphs, batch_size=16):
        local, glob = model(batch)
        mask = model.local_mask(batch)
        glob_m.update(glob, batch.gdt_ts, batch.target_id, batch.decoy_id)
        decoy = batch.decoy_id[batch.batch]
        residue = torch.arange(batch.num_nodes) - batch.ptr[batch.batch]
        local_m.update(local[mask], batch.lddt[mask], decoy[mask], (decoy * 100_000 + residue)[mask])
    g, lo = glob_m.compute(), local_m.compute()
    return {"R": float(g["r"]), "Spearman": float(g["spearman"]), "RMSE": float(g["rmse"]),
            "FRL": float(g["first_rank_loss"]), "R_model": float(lo["r_model"]), "LDDT RMSE": float(lo["rmse"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="graphqa_casp13_"))
    dm = CASPDataModule(data_dir=str(args.data), test_editions=["CASP13"], val_fraction=0.0,
                        cache_dir=str(cache), train_editions=[])
    dm.setup()
    base = GraphQA.load_from_checkpoint(args.ckpt, map_location="cpu")
    by_target: dict[str, list] = {}
    for g in dm.test_set:
        by_target.setdefault(dm.target_names[int(g.target_id)], []).append(g)
    cols = ["R", "Spearman", "RMSE", "FRL", "R_model", "LDDT RMSE"]
    print(f"{'setting':10} {'target':16} {'n':>3} " + " ".join(f"{c:>9}" for c in cols))
    for setting in ("zero-shot", "LOTO"):
        results = []
        for name, graphs in sorted(by_target.items()):
            model = base
            if setting == "LOTO":
                L.seed_everything(0, verbose=False)
                model = copy.deepcopy(base)
                model.optimizer = lambda p: torch.optim.Adam(p, lr=args.lr, weight_decay=1e-5)
                others = [g for n, gs in by_target.items() if n != name for g in gs]
                trainer = L.Trainer(max_epochs=args.finetune_epochs, accelerator="cpu", logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, limit_val_batches=0)
                trainer.fit(model, train_dataloaders=DataLoader(others, batch_size=8, shuffle=True))
            r = evaluate(model, graphs)
            results.append(r)
            print(f"{setting:10} {name:16} {len(graphs):3d} " + " ".join(f"{r[c]:9.3f}" for c in cols))
        mean = {c: float(np.nanmean([r[c] for r in results])) for c in cols}
        print(f"{setting:10} {'mean of 3':16} {'':3} " + " ".join(f"{mean[c]:9.3f}" for c in cols))


if __name__ == "__main__":
    main()
