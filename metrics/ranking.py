"""Quality-assessment metrics over groups (decoys of a target, residues of a decoy), DDP-correct.

:class:`GroupedQAMetrics` accumulates predictions, true scores, a group id and a unique sample id in
``cat`` states, so under DDP every rank computes on the whole data set; samples seen twice (the
padding a ``DistributedSampler`` adds) are counted once by their unique id. ``compute()`` returns:

``rmse``, ``r`` (Pearson over all samples), ``spearman``, ``kendall`` (over all samples), and per group
(averaged over groups with at least two samples and non-constant truth and prediction):
``r_<group>``, ``spearman_<group>``, ``kendall_<group>``; ranking quality per group: ``first_rank_loss``
(true score of the best sample minus that of the sample ranked first), ``ndcg@k`` and ``recall@k``
(share of the true top-k found in the predicted top-k). GraphQA logs global GDT_TS grouped by target
(``r_target``) and local LDDT grouped by decoy (``r_model``).

Imports nothing of ours.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _ndcg(pred: np.ndarray, true: np.ndarray, k: int) -> float:
    k = min(k, len(true))
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (true[np.argsort(-pred, kind="stable")[:k]] * discount).sum()
    ideal = (np.sort(true)[::-1][:k] * discount).sum()
    return float(dcg / ideal) if ideal > 0 else float("nan")


def group_scores(pred: np.ndarray, true: np.ndarray, k: int = 5) -> dict[str, float]:
    """Metrics of one group (the decoys of a target, or the residues of a decoy)."""
    order = np.argsort(-pred, kind="stable")
    top_true = set(np.argsort(-true, kind="stable")[: min(k, len(true))].tolist())
    varied = len(pred) > 1 and pred.std() > 0 and true.std() > 0
    return {
        "n": float(len(pred)),
        "rmse": float(np.sqrt(np.mean((pred - true) ** 2))),
        "r": _pearson(pred, true),
        "spearman": float(stats.spearmanr(pred, true)[0]) if varied else float("nan"),
        "kendall": float(stats.kendalltau(pred, true)[0]) if varied else float("nan"),
        "first_rank_loss": float(true.max() - true[order[0]]),
        f"ndcg@{k}": _ndcg(pred, true, k),
        f"recall@{k}": len(top_true & set(order[: len(top_true)].tolist())) / max(1, len(top_true)),
    }


class GroupedQAMetrics(Metric):
    """Regression and ranking metrics of quality scores, overall and averaged per group (see module doc).

    Args:
        group_name: suffix of the per-group correlations (``target`` -> ``r_target``; ``model`` -> ``r_model``).
        k: cut-off of ``ndcg@k`` and ``recall@k``.
        ranking: also compute the per-group ranking metrics (first-rank loss, NDCG, recall).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, group_name: str = "target", k: int = 5, ranking: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.group_name = group_name
        self.k = k
        self.ranking = ranking
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("group", default=[], dist_reduce_fx="cat")
        self.add_state("uid", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, group: Tensor, uid: Tensor) -> None:
        if not (preds.shape == target.shape == group.shape == uid.shape) or preds.ndim != 1:
            raise ValueError(f"preds, target, group, uid must be 1-D of one length, got {preds.shape}, "
                             f"{target.shape}, {group.shape}, {uid.shape}")
        self.preds.append(preds.detach().double())
        self.target.append(target.detach().double())
        self.group.append(group.detach().long())
        self.uid.append(uid.detach().long())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(preds, target, group) of every distinct sample, sorted by unique id."""
        if isinstance(self.preds, list) and not self.preds:  # a list of batches, or one tensor once synced
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
        uid = dim_zero_cat(self.uid).cpu().numpy()
        _, first = np.unique(uid, return_index=True)
        pick = lambda s: dim_zero_cat(s).cpu().numpy()[first]  # noqa: E731
        return pick(self.preds), pick(self.target), pick(self.group)

    def synced_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`arrays` over all processes (outside ``compute``, which syncs by itself)."""
        with self.sync_context(should_sync=True, should_unsync=True):
            return self.arrays()

    def per_group(self) -> dict[int, dict[str, float]]:
        preds, target, group = self.arrays()
        return {int(g): group_scores(preds[group == g], target[group == g], self.k) for g in np.unique(group)}

    def compute(self) -> dict[str, Tensor]:
        preds, target, group = self.arrays()
        if len(preds) == 0:
            return {}
        out = {"rmse": float(np.sqrt(np.mean((preds - target) ** 2))), "r": _pearson(preds, target)}
        varied = len(preds) > 1 and preds.std() > 0 and target.std() > 0
        out["spearman"] = float(stats.spearmanr(preds, target)[0]) if varied else float("nan")
        out["kendall"] = float(stats.kendalltau(preds, target)[0]) if varied else float("nan")
        per = self.per_group()
        suffix = self.group_name
        keys = ["r", "spearman", "kendall"]
        if self.ranking:
            keys += ["first_rank_loss", f"ndcg@{self.k}", f"recall@{self.k}"]
        for key in keys:
            values = [s[key] for s in per.values() if s["n"] >= 2 and np.isfinite(s[key])]
            name = f"{key}_{suffix}" if key in ("r", "spearman", "kendall") else key
            out[name] = float(np.mean(values)) if values else float("nan")
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in out.items()}
