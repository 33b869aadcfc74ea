"""GraphQA (Baldassarre et al., Bioinformatics 2020): protein model quality assessment with a graph network.

A decoy is a residue graph (``datamodules.casp``); the network predicts per-residue LDDT and the
decoy's GDT_TS; loss ``lambda_local * MSE(LDDT, masked) + lambda_global * MSE(GDT_TS)``.

Logs ``{train,val,test}/loss`` (+ ``loss_local``, ``loss_global``) and, for validation and test,
``<stage>/global/gdtts/{rmse,r,r_target,spearman,spearman_target,kendall,kendall_target,
first_rank_loss,ndcg@k,recall@k}`` and ``<stage>/local/lddt/{rmse,r,r_model,spearman,spearman_model,
kendall,kendall_model}``; at test time a funnel plot (true vs predicted GDT_TS, one panel per target)
as the figure ``test/global/funnel``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_modules.base import PaperzooModule
from lightning_modules.nets.graph import GraphQANet
from metrics.ranking import GroupedQAMetrics, group_scores


def _adam(params):
    return torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)


class GraphQA(PaperzooModule):
    """GraphQA; ``raw=True`` is GraphQA_RAW (residue identity only); ablations: ``use_global``, ``edge_features``.

    Args:
        num_dssp, num_msa: node feature sizes (``CASPDataModule``: 14 DSSP features with 8-state DSSP, the paper's
            14-d vector, 8 with ``dssp_states=3``; 44 MSA features with ``msa_dir``).
        layers: message-passing layers L (paper: 6).
        enc_widths, out_widths: (edge, node, global) widths after the encoder / of the last layer (paper:
            (128, 512, 512) -> (16, 64, 32)); the layers in between shrink linearly.
        dropout: dropout of every Linear-Dropout-ReLU (paper: 0.2).
        lambda_local, lambda_global: loss weights.
        k: cut-off of NDCG@k and recall@k.
        optimizer: default Adam(lr=1e-3, weight_decay=1e-5) as in the paper (L2 through Adam's weight decay).
    """

    hparams_metrics = ("val/global/gdtts/r_target", "val/local/lddt/r_model", "val/global/gdtts/rmse",
                       "test/global/gdtts/r_target", "test/local/lddt/r_model")

    def __init__(
        self,
        num_dssp: int = 14,
        num_msa: int = 0,
        layers: int = 6,
        enc_widths: tuple[int, int, int] = (128, 512, 512),
        out_widths: tuple[int, int, int] = (16, 64, 32),
        dropout: float = 0.2,
        raw: bool = False,
        use_global: bool = True,
        edge_features: bool = True,
        lambda_local: float = 1.0,
        lambda_global: float = 1.0,
        k: int = 5,
        optimizer: OptimizerCallable = _adam,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer = optimizer
        self.net = GraphQANet(num_dssp, num_msa, layers, tuple(enc_widths), tuple(out_widths), dropout, raw,
                              use_global, edge_features)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_global", GroupedQAMetrics("target", k=k))
            setattr(self, f"{stage}_local", GroupedQAMetrics("model", k=k, ranking=False))

    def forward(self, batch) -> tuple[Tensor, Tensor]:
        return self.net(batch)

    @staticmethod
    def local_mask(batch) -> Tensor:
        return batch.present & torch.isfinite(batch.lddt)

    def _step(self, batch, stage: str) -> Tensor:
        local, glob = self(batch)
        mask = self.local_mask(batch)
        loss_local = F.mse_loss(local[mask], batch.lddt[mask]) if mask.any() else local.sum() * 0.0
        loss_global = F.mse_loss(glob, batch.gdt_ts)
        loss = self.hparams.lambda_local * loss_local + self.hparams.lambda_global * loss_global
        train = stage == "train"
        size = int(batch.num_graphs)
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=True, sync_dist=not train,
                 batch_size=size)
        self.log(f"{stage}/loss_local", loss_local, on_step=False, on_epoch=True, sync_dist=not train, batch_size=size)
        self.log(f"{stage}/loss_global", loss_global, on_step=False, on_epoch=True, sync_dist=not train,
                 batch_size=size)
        if not train:
            getattr(self, f"{stage}_global").update(glob, batch.gdt_ts, batch.target_id, batch.decoy_id)
            decoy = batch.decoy_id[batch.batch]
            residue = torch.arange(batch.num_nodes, device=local.device) - batch.ptr[batch.batch]
            getattr(self, f"{stage}_local").update(local[mask], batch.lddt[mask], decoy[mask],
                                                   (decoy * 100_000 + residue)[mask])
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, Any]:
        local, glob = self(batch)
        sizes = (batch.ptr[1:] - batch.ptr[:-1]).tolist()
        return {"name": list(batch.name), "gdt_ts": glob, "lddt": list(local.split(sizes))}

    def configure_optimizers(self):
        return self.optimizer(self.parameters())

    def _log_metrics(self, stage: str) -> dict[str, dict[str, Tensor]]:
        results = {}
        for level, score in (("global", "gdtts"), ("local", "lddt")):
            metric: GroupedQAMetrics = getattr(self, f"{stage}_{level}")
            values = metric.compute()
            results[level] = values
            for key, value in values.items():
                if math.isfinite(float(value)):
                    self.log(f"{stage}/{level}/{score}/{key}", value)
        return results

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        self.val_global.reset()
        self.val_local.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        preds, target, group = self.test_global.synced_arrays()  # every process takes part in the sync
        self.per_target = {int(g): group_scores(preds[group == g], target[group == g], self.hparams.k)
                           for g in sorted(set(group.tolist()))}
        self._print_per_target()
        self._funnel_plot(preds, target, group)
        self.test_global.reset()
        self.test_local.reset()

    def _print_per_target(self) -> None:
        """A per-target table of the global metrics (rank zero), beside Lightning's aggregated one."""
        from lightning.pytorch.utilities import rank_zero_info

        names = getattr(getattr(self.trainer, "datamodule", None), "target_names", {}) or {}
        k = self.hparams.k
        lines = [f"{'target':24} {'decoys':>6} {'R':>7} {'RMSE':>7} {'FRL':>7} {f'NDCG@{k}':>7}"]
        for g, s in self.per_target.items():
            lines.append(f"{str(names.get(g, g)):24} {int(s['n']):6d} {s['r']:7.3f} {s['rmse']:7.3f} "
                         f"{s['first_rank_loss']:7.3f} {s[f'ndcg@{k}']:7.3f}")
        rank_zero_info("GraphQA per-target GDT_TS metrics:\n" + "\n".join(lines))

    def _funnel_plot(self, preds, target, group) -> None:
        if self.trainer.global_rank != 0:
            return
        loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        groups = np.unique(group)
        if len(groups) == 0:
            return
        names = getattr(getattr(self.trainer, "datamodule", None), "target_names", {}) or {}
        cols = min(4, len(groups))
        rows = math.ceil(len(groups) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for ax, g in zip(axes.flat, groups):
            sel = group == g
            ax.scatter(target[sel], preds[sel], s=8)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
            ax.set(xlim=(0, 1), ylim=(0, 1), title=str(names.get(int(g), g)), xlabel="true GDT_TS",
                   ylabel="predicted")
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        fig.tight_layout()
        for logger in loggers:
            logger.experiment.add_figure("test/global/funnel", fig, global_step=self.global_step)
        plt.close(fig)
