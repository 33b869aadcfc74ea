"""Outlier scores and their evaluation: PCA of hidden activations (ODIN), RSS, Mahalanobis, FPR@95TPR.

Pure functions plus two torchmetrics ``Metric`` objects, importing nothing of paperzoo:

* :class:`CovarianceAccumulator` streams the sufficient statistics of a PCA (count, sum, ``XᵀX`` in
  float64) with ``dist_reduce_fx="sum"``, so a PCA fitted under DDP sees every rank's activations;
* :func:`pca_from_moments` turns them into a mean-centred PCA whose rank for an explained-variance level
  is the smallest ``k`` with cumulative explained variance ``>= level`` (:func:`pca_rank`);
* :func:`rss` (distance to the PCA subspace) and :func:`mahalanobis` (distance within it, with the
  covariance of the training projections);
* :class:`OutlierScores` gathers per-sample scores, outlier labels and groups across ranks
  (``dist_reduce_fx="cat"``); :func:`summarize` gives ROC-AUC (torchmetrics), FPR at 95% TPR and
  precision/recall/F1 of thresholded flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_roc
from torchmetrics.utilities import dim_zero_cat

# eigh of a float64 matrix this large takes minutes on a CPU; above it the covariance is decomposed in float32
EIGH_FLOAT64_MAX_DIM = 2048


def pca_rank(explained_variance_ratio: Tensor, level: float) -> int:
    """The smallest ``k`` whose cumulative explained variance reaches ``level`` (``0 < level <= 1``).

    ``explained_variance_ratio`` is sorted in decreasing order. A level above what all components explain
    (rounding) gives every component.
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"explained-variance level must be in (0, 1], got {level}")
    cumulative = torch.cumsum(explained_variance_ratio.double(), 0)
    reached = torch.nonzero(cumulative >= level - 1e-12)
    return int(reached[0, 0]) + 1 if len(reached) else len(explained_variance_ratio)


class CovarianceAccumulator(Metric):
    """Count, sum and ``XᵀX`` of feature rows (float64), summed over batches and DDP ranks."""

    full_state_update = False

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = num_features
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features of shape (N, {self.num_features}), got {tuple(features.shape)}")
        x = features.detach().double()
        self.n += x.shape[0]
        self.total += x.sum(0)
        self.outer += x.T @ x

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.n, self.total, self.outer


def _eigh(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Eigendecomposition of a covariance; large ones in float32, with a tiny ridge if LAPACK fails
    (rank-deficient covariances of few samples in many dimensions), float64 as the last resort."""
    dtype = torch.float64 if cov.shape[0] <= EIGH_FLOAT64_MAX_DIM else torch.float32
    try:
        return torch.linalg.eigh(cov.to(dtype))
    except torch.linalg.LinAlgError:
        pass
    ridge = 1e-6 * float(cov.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    for dt in (dtype, torch.float64):
        try:
            evals, evecs = torch.linalg.eigh((cov + ridge * eye).to(dt))
            return evals - ridge, evecs
        except torch.linalg.LinAlgError:
            continue
    raise torch.linalg.LinAlgError(f"eigendecomposition of the {cov.shape[0]}-dim covariance failed")


@dataclass
class PCA:
    """A mean-centred PCA: ``scores = (x - mean) @ components``; ``variances`` are the score variances."""

    mean: Tensor  # (m,)
    components: Tensor  # (m, k_max): orthonormal loading vectors, by decreasing variance
    variances: Tensor  # (k_max,) eigenvalues of the covariance (unbiased)
    explained_variance_ratio: Tensor  # (k_max,) share of the total variance

    def rank(self, level: float) -> int:
        return pca_rank(self.explained_variance_ratio, level)


def covariance_from_moments(n: Tensor | float, total: Tensor, outer: Tensor) -> Tensor:
    """Unbiased covariance from count, sum and ``XᵀX``, rounded to float32 precision (held in float64).

    The rounding makes the result independent of the order of the sums (one process or several DDP
    ranks agree to the last bit except in vanishingly rare ties), far below the precision a PCA needs.
    """
    n = float(n)
    mean = total / n
    cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
    return ((cov + cov.T) / 2).float().double()


def pca_from_moments(n: Tensor | float, total: Tensor, outer: Tensor, max_rank: int | None = None) -> PCA:
    """PCA from the streamed moments of :class:`CovarianceAccumulator` (eigendecomposition of the covariance)."""
    n = float(n)
    if n < 2:
        raise ValueError(f"a PCA needs at least 2 observations, got {int(n)}")
    cov = covariance_from_moments(n, total, outer)
    mean = (total / n).float().double()
    evals, evecs = _eigh(cov)
    evals, evecs = evals.flip(0).double().clamp_min(0.0), evecs.flip(1).double()
    # a deterministic sign per component (eigh's sign is arbitrary): largest |loading| positive
    signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))
    evecs = evecs * torch.where(signs == 0, torch.ones_like(signs), signs)
    ratio = evals / evals.sum().clamp_min(torch.finfo(torch.float64).tiny)
    k = len(evals) if max_rank is None else min(max_rank, len(evals))
    return PCA(mean.float(), evecs[:, :k].float().contiguous(), evals[:k].float(), ratio[:k].float())


def fit_pca(features: Tensor, max_rank: int | None = None) -> PCA:
    """PCA of the rows of ``features`` (in memory); same result as streaming through the accumulator."""
    x = features.detach().double()
    return pca_from_moments(x.shape[0], x.sum(0), x.T @ x, max_rank)


def pca_scores(features: Tensor, mean: Tensor, components: Tensor) -> Tensor:
    """Projections ``t = (a - mean) P`` of rows of ``features`` on the loading matrix ``P`` (m, k)."""
    return (features - mean) @ components


def rss(features: Tensor, mean: Tensor, components: Tensor) -> Tensor:
    """Residual sum of squares ``||(a - mean) - t Pᵀ||²``: squared distance to the PCA subspace."""
    centred = features - mean
    residual = centred - (centred @ components) @ components.T
    return residual.pow(2).sum(-1)


def score_precision(train_scores: Tensor) -> Tensor:
    """Inverse (pseudo-inverse if singular) of the covariance of the training projections."""
    t = train_scores.double()
    cov = torch.atleast_2d(torch.cov(t.T))
    return torch.linalg.pinv(cov, hermitian=True).float()


def mahalanobis(scores: Tensor, precision: Tensor) -> Tensor:
    """Mahalanobis distance ``sqrt(t C⁻¹ tᵀ)`` of projections (the training projections have mean zero)."""
    return torch.einsum("ni,ij,nj->n", scores, precision, scores).clamp_min(0.0).sqrt()


def to_unit_interval(scores: Tensor) -> Tensor:
    """Dense ranks scaled to [0, 1]: a monotone map keeping ties, so ROC statistics are unchanged.

    torchmetrics' binary metrics treat scores outside [0, 1] as logits and apply a sigmoid, which
    saturates distances such as an RSS of 100+ into ties; ranks avoid that.
    """
    unique, inverse = torch.unique(scores.double(), return_inverse=True)
    return inverse.double() / max(len(unique) - 1, 1)


def fpr_at_tpr(scores: Tensor, is_outlier: Tensor, tpr: float = 0.95) -> Tensor:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr`` (outliers positive)."""
    fpr, tprs, _ = binary_roc(to_unit_interval(scores), is_outlier.long())
    idx = torch.nonzero(tprs >= tpr - 1e-12)
    return fpr[idx[0, 0]] if len(idx) else torch.tensor(1.0)


def precision_recall_f1(flags: Tensor, is_outlier: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F1 of boolean outlier flags (0 where undefined)."""
    flags, truth = flags.bool(), is_outlier.bool()
    tp = (flags & truth).sum().double()
    precision = tp / flags.sum().clamp_min(1)
    recall = tp / truth.sum().clamp_min(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    return precision.float(), recall.float(), f1.float()


class OutlierScores(Metric):
    """Per-sample outlier scores (columns), outlier labels and a group id per sample, gathered across ranks.

    ``group`` is any integer per sample (e.g. the original class of an outlier, ``-1`` for inliers), so
    per-group tables can be computed from the gathered states.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", [], dist_reduce_fx="cat")
        self.add_state("is_outlier", [], dist_reduce_fx="cat")
        self.add_state("group", [], dist_reduce_fx="cat")

    def update(self, scores: Tensor, is_outlier: Tensor, group: Tensor | None = None) -> None:
        if scores.ndim == 1:
            scores = scores[:, None]
        if group is None:
            group = torch.full_like(is_outlier, -1, dtype=torch.long)
        self.scores.append(scores.detach().double())
        self.is_outlier.append(is_outlier.detach().long())
        self.group.append(group.detach().long())

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.scores, list) and not self.scores:
            raise RuntimeError("OutlierScores.compute() before any update()")
        return dim_zero_cat(self.scores), dim_zero_cat(self.is_outlier), dim_zero_cat(self.group)


class RowCollector(Metric):
    """Rows of a 2-D tensor gathered from every batch and every DDP rank (``dist_reduce_fx="cat"``)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("rows", [], dist_reduce_fx="cat")

    def update(self, rows: Tensor) -> None:
        self.rows.append(rows.detach().double())

    def compute(self) -> Tensor:
        if isinstance(self.rows, list) and not self.rows:
            raise RuntimeError("RowCollector.compute() before any update()")
        return dim_zero_cat(self.rows)


def summarize(
    scores: Tensor, is_outlier: Tensor, threshold: float | Tensor | None = None, tpr: float = 0.95
) -> dict[str, Tensor]:
    """ROC-AUC (torchmetrics) and FPR at ``tpr`` of one score column; with a threshold also the
    precision/recall/F1 of the flags ``score > threshold``. Both classes must be present."""
    n_out = int(is_outlier.sum())
    if n_out == 0 or n_out == len(is_outlier):
        raise ValueError("ROC-AUC needs both inliers and outliers")
    out = {"auroc": binary_auroc(to_unit_interval(scores), is_outlier.long()),
           "fpr95": fpr_at_tpr(scores, is_outlier, tpr)}
    if threshold is not None:
        out.update(flag_summary(scores > threshold, is_outlier))
    return out


def flag_summary(flags: Tensor, is_outlier: Tensor) -> dict[str, Tensor]:
    precision, recall, f1 = precision_recall_f1(flags, is_outlier)
    return {"precision": precision, "recall": recall, "f1": f1}


def quantile_threshold(train_scores: Tensor, q: float) -> float:
    """The ``q`` quantile of training scores (the paper: 9th decile, ``q = 0.9``)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"threshold quantile must be in (0, 1), got {q}")
    return float(torch.quantile(train_scores.double().flatten(), q))


def softmax_entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of probability vectors."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim)


def energy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Energy score ``-T logsumexp(logits / T)`` (higher = more outlying)."""
    return -temperature * torch.logsumexp(logits / temperature, dim=-1)


__all__: Sequence[str] = (
    "CovarianceAccumulator", "OutlierScores", "covariance_from_moments", "PCA", "RowCollector", "energy", "fit_pca", "flag_summary", "fpr_at_tpr",
    "mahalanobis", "pca_from_moments", "pca_rank", "pca_scores", "precision_recall_f1", "quantile_threshold",
    "rss", "score_precision", "softmax_entropy", "summarize", "to_unit_interval",
)
