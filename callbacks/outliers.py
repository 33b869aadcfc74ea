"""ODIN (Outlier Detection In Neural networks): prediction-time outlier scores for any trained network.

:class:`ODIN` captures hidden-layer activations with forward hooks, fits a mean-centred PCA of them on
the training set, and scores a new input by its distance to that linear manifold (residual sum of
squares, ``rss``) and within it (``mahalanobis`` on the PCA scores with the covariance of the training
projections, or the Local Outlier Factor ``lof`` of scikit-learn with ``novelty=True``). The same
interface also gives the usual baselines computed from the network's output: max softmax probability
(``msp``), ``energy``, MC-dropout predictive entropy (``mc_dropout``, N stochastic passes) and Liang et
al.'s ODIN (``odin_liang``: temperature T and input perturbation eps).

Protocol (any LightningModule whose ``forward`` returns logits and is called in its ``test_step`` /
``predict_step``):

* **fit** -- when training ends (or on demand at ``test``/``predict`` when the callback holds no fitted
  state, e.g. for a checkpoint trained without it), two passes over the training set in eval mode:
  the first streams ``n``, ``sum`` and ``XᵀX`` of each layer's features, summed over DDP ranks, so every
  rank holds the identical PCA; the second gathers the training distances (thresholds at the
  ``threshold_quantile``, the paper's 9th decile) and a seeded subset of PCA scores for LOF. The fitted
  state lives in :meth:`state_dict`; after fitting at the end of training the callback re-writes the
  ``last.ckpt`` of every ModelCheckpoint, so ``lightning test --ckpt_path last`` scores without refitting.
* **test** -- the DataModule's first test dataloader holds inliers, any further one outliers (its
  labels are kept as the original class ids and used as groups). Logged for every score:
  ``test/odin/<layer>/<distance>_r<level>/{auroc,fpr95,precision,recall,f1}`` (``_k<rank>`` for fixed
  ranks), ``test/odin/<layer>/rss_{or,and}_mahalanobis_r<level>/{precision,recall,f1}`` and
  ``test/odin/baseline/<name>/...``; with ``per_group`` also ``.../<group name>/{precision,recall,f1}``
  (inliers plus that group's outliers). :attr:`results` keeps every number for tables.
* **predict** -- ``predict_step``'s dict gains ``outlier_scores`` and ``outlier_flags`` (name -> tensor).

Larger scores mean more outlying for every score (MSP and Liang's score are negated).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from metrics.outliers import (
    CovarianceAccumulator,
    covariance_from_moments,
    OutlierScores,
    RowCollector,
    energy,
    flag_summary,
    mahalanobis,
    pca_from_moments,
    pca_scores,
    quantile_threshold,
    softmax_entropy,
    summarize,
)

log = logging.getLogger(__name__)

Distance = Literal["rss", "mahalanobis", "lof"]
Baseline = Literal["msp", "energy", "mc_dropout", "odin_liang"]
Pooling = Literal["flatten", "avg", "last"]


def _tag(level: float) -> str:
    return f"r{level:g}"


def _input_and_target(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, dict):
        return batch["x"], batch.get("y")
    return batch[0], (batch[1] if len(batch) > 1 else None)


class ODIN(Callback):
    """Outlier scoring by PCA of hidden activations (ODIN) and output-based baselines, by configuration.

    Args:
        layers: module names (``pl_module.get_submodule``), e.g. ``net.block1``; the output's first
            element is used when a module returns a tuple.
        pooling: ``flatten`` (conv maps flattened), ``avg`` (global average over dims >= 2) or ``last``
            (last step of a batch-first sequence).
        levels: explained-variance levels; rank = smallest k with cumulative explained variance >= level.
        ranks: fixed PCA ranks, in addition to ``levels``.
        distances: any of ``rss``, ``mahalanobis``, ``lof``.
        baselines: any of ``msp``, ``energy``, ``mc_dropout``, ``odin_liang``.
        threshold_quantile: flags are ``score > quantile of the training scores`` (paper: 0.9).
        mc_samples: stochastic passes of MC-dropout (dropout modules in train mode, the rest in eval).
        temperature, epsilon: Liang et al.'s ODIN (their defaults 1000 and 0.0014).
        energy_temperature: temperature of the energy score.
        lof_neighbors: ``n_neighbors`` of the LOF.
        lof_max_train: fit the LOF on a seeded subset of at most this many training projections
            (``None``, the default: on all of them, as the paper does).
        fit_samples: fit on a seeded subset of at most this many training samples (``None``: all).
        fit_baselines: also score the training set with the baselines (their thresholds, hence flags).
        fit_on_train_end: fit when ``fit`` ends; otherwise only on demand at test/predict.
        refit: fit again at test/predict even when a fitted state was loaded.
        per_group: log precision/recall/F1 per outlier group (e.g. per word) at the thresholds.
        outlier_sets: named sets of outlier groups (original class ids) scored separately, e.g.
            ``{strong: [5, 7, 9], subtle: [2, 6]}``: ``test/odin/<score>/<set>/{auroc,fpr95}``.
        batch_size: batch size of the fitting passes (default: that of the training dataloader).
        seed: seed of the subsets (``fit_samples``, ``lof_max_train``).
    """

    def __init__(
        self,
        layers: Sequence[str] = (),
        pooling: Pooling = "flatten",
        levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95, 0.99),
        ranks: Sequence[int] = (),
        distances: Sequence[Distance] = ("rss", "mahalanobis", "lof"),
        baselines: Sequence[Baseline] = ("msp", "energy", "mc_dropout", "odin_liang"),
        threshold_quantile: float = 0.9,
        mc_samples: int = 10,
        temperature: float = 1000.0,
        epsilon: float = 0.0014,
        energy_temperature: float = 1.0,
        lof_neighbors: int = 20,
        lof_max_train: int | None = None,
        fit_samples: int | None = None,
        fit_baselines: bool = True,
        fit_on_train_end: bool = True,
        refit: bool = False,
        per_group: bool = False,
        outlier_sets: dict[str, list[int]] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        bad = set(distances) - {"rss", "mahalanobis", "lof"}
        if bad:
            raise ValueError(f"unknown distances {sorted(bad)}; choose from rss, mahalanobis, lof")
        bad = set(baselines) - {"msp", "energy", "mc_dropout", "odin_liang"}
        if bad:
            raise ValueError(f"unknown baselines {sorted(bad)}; choose from msp, energy, mc_dropout, odin_liang")
        if pooling not in ("flatten", "avg", "last"):
            raise ValueError(f"pooling must be flatten, avg or last, got {pooling!r}")
        if layers and not (levels or ranks):
            raise ValueError("give at least one explained-variance level or fixed rank")
        for level in levels:
            if not 0.0 < level <= 1.0:
                raise ValueError(f"explained-variance levels must be in (0, 1], got {level}")
        if any(int(k) < 1 for k in ranks):
            raise ValueError(f"fixed ranks must be >= 1, got {list(ranks)}")
        if not 0.0 < threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {threshold_quantile}")
        if "mc_dropout" in baselines and mc_samples < 1:
            raise ValueError("mc_samples must be >= 1")
        self.layers = list(layers)
        self.pooling = pooling
        self.levels = [float(v) for v in levels]
        self.ranks = [int(k) for k in ranks]
        self.distances = list(distances)
        self.baselines = list(baselines)
        self.threshold_quantile = threshold_quantile
        self.mc_samples = mc_samples
        self.temperature = temperature
        self.epsilon = epsilon
        self.energy_temperature = energy_temperature
        self.lof_neighbors = lof_neighbors
        self.lof_max_train = lof_max_train
        self.fit_samples = fit_samples
        self.fit_baselines = fit_baselines
        self.fit_on_train_end = fit_on_train_end
        self.refit = refit
        self.per_group = per_group
        self.outlier_sets = {k: [int(c) for c in v] for k, v in (outlier_sets or {}).items()}
        self.batch_size = batch_size
        self.seed = seed

        self.fitted: dict[str, Any] | None = None  # the state_dict payload once fitted
        self.fits = 0  # number of fits run in this process (tests: a loaded checkpoint must not refit)
        self.results: dict[str, dict[str, float]] = {}  # name -> {auroc, fpr95, precision, recall, f1}
        self.group_results: dict[str, dict[str, dict[str, float]]] = {}  # name -> group -> {precision, ...}
        self.set_results: dict[str, dict[str, dict[str, float]]] = {}  # name -> outlier set -> {auroc, fpr95}
        self.test_scores: tuple[list[str], Tensor, Tensor, Tensor] | None = None  # names, scores, is_outlier, group
        self._handles: list[Any] = []
        self._capture = False
        self._acts: dict[str, Tensor] = {}
        self._logits: Tensor | None = None
        self._lofs: dict[tuple[str, str], Any] = {}
        self._precisions: dict[tuple[str, str], Tensor] = {}
        self._scores: OutlierScores | None = None
        self._tested_names: list[str] = []

    # ------------------------------------------------------------------ names
    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, levels=self.levels, ranks=self.ranks)

    def _configs(self) -> list[str]:
        return [_tag(v) for v in self.levels] + [f"k{k}" for k in self.ranks]

    def score_names(self) -> list[str]:
        """Every continuous score, in column order: ODIN distances, then baselines."""
        names = [f"{layer}/{d}_{c}" for layer in self.layers for c in self._configs() for d in self.distances]
        return names + [f"baseline/{b}" for b in self.baselines]

    def combo_names(self) -> list[str]:
        if not {"rss", "mahalanobis"} <= set(self.distances):
            return []
        return [f"{layer}/rss_{op}_mahalanobis_{c}" for layer in self.layers for c in self._configs() for op in ("or", "and")]

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()
        for layer in self.layers:
            try:
                module = pl_module.get_submodule(layer)
            except AttributeError:
                names = [n for n, _ in pl_module.named_modules() if n]
                raise ValueError(f"ODIN: no layer {layer!r} in {type(pl_module).__name__}; layers: {names}") from None
            self._handles.append(module.register_forward_hook(self._layer_hook(layer)))
        self._handles.append(pl_module.register_forward_hook(self._output_hook))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pool(self, out: Any) -> Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.detach()
        if self.pooling == "avg" and out.ndim > 2:
            out = out.mean(dim=tuple(range(2, out.ndim)))
        elif self.pooling == "last" and out.ndim > 2:
            out = out[:, -1]
        return out.reshape(out.shape[0], -1).float()

    def _layer_hook(self, layer: str):
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if self._capture:
                self._acts[layer] = self._pool(out)

        return hook

    def _output_hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if self._capture:
            self._logits = out.detach().float() if isinstance(out, Tensor) else None

    def _forward(self, pl_module: LightningModule, x: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        self._capture, self._acts, self._logits = True, {}, None
        try:
            pl_module(x)
        finally:
            self._capture = False
        return self._logits, self._acts

    # ------------------------------------------------------------------ baselines
    def _needs_logits(self) -> bool:
        return bool(self.baselines)

    @staticmethod
    def _dropouts(pl_module: LightningModule) -> list[nn.Module]:
        return [m for m in pl_module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    def _mc_dropout(self, pl_module: LightningModule, x: Tensor) -> Tensor:
        dropouts = self._dropouts(pl_module)
        if not dropouts:
            raise ValueError("ODIN: mc_dropout needs nn.Dropout modules in the network")
        modes = [m.training for m in dropouts]
        try:
            for m in dropouts:
                m.train()
            with torch.no_grad():
                probs = torch.stack([pl_module(x).float().softmax(-1) for _ in range(self.mc_samples)]).mean(0)
        finally:
            for m, mode in zip(dropouts, modes):
                m.train(mode)
        return softmax_entropy(probs)

    def _odin_liang(self, pl_module: LightningModule, x: Tensor) -> Tensor:
        """x' = x - eps * sign(-grad_x log S_yhat(x; T)); score = -max S(x'; T)."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            log_probs = torch.log_softmax(pl_module(x).float() / self.temperature, dim=-1)
            loss = -log_probs.max(dim=-1).values.sum()
            (grad,) = torch.autograd.grad(loss, x)
            x_perturbed = (x - self.epsilon * grad.sign()).detach()
        with torch.no_grad():
            probs = torch.softmax(pl_module(x_perturbed).float() / self.temperature, dim=-1)
        return -probs.max(dim=-1).values

    def _baseline_scores(self, pl_module: LightningModule, x: Tensor, logits: Tensor | None) -> dict[str, Tensor]:
        scores: dict[str, Tensor] = {}
        if not self.baselines:
            return scores
        if logits is None or logits.ndim != 2:
            raise ValueError("ODIN baselines need the module's forward() to return logits of shape (N, classes)")
        for name in self.baselines:
            if name == "msp":
                scores[name] = -logits.softmax(-1).max(-1).values
            elif name == "energy":
                scores[name] = energy(logits, self.energy_temperature)
            elif name == "mc_dropout":
                scores[name] = self._mc_dropout(pl_module, x)
            else:
                scores[name] = self._odin_liang(pl_module, x)
        return scores

    # ------------------------------------------------------------------ fitting
    def _fit_loader(self, trainer: Trainer) -> tuple[DataLoader, Tensor, Tensor]:
        """A sequential loader over this rank's shard of the (subset of the) training set, the shard's
        dataset indices and all fitted indices."""
        dm = trainer.datamodule
        if dm is None:
            raise RuntimeError("ODIN fits on the DataModule's training set: run with a DataModule")
        try:
            base = dm.train_dataloader()
        except RuntimeError:
            dm.setup("fit")
            base = dm.train_dataloader()
        dataset = base.dataset
        n = len(dataset)
        indices = torch.arange(n)
        if self.fit_samples is not None and self.fit_samples < n:
            g = torch.Generator().manual_seed(self.seed)
            indices = torch.randperm(n, generator=g)[: self.fit_samples].sort().values
        shard = indices[trainer.global_rank :: trainer.world_size]
        loader = DataLoader(
            Subset(dataset, shard.tolist()),
            batch_size=self.batch_size or base.batch_size or 64,
            shuffle=False,
            collate_fn=base.collate_fn,
            num_workers=0,
        )
        return loader, shard, indices

    def fit(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fit the PCA models, LOFs and thresholds on the training set (collective under DDP)."""
        if not self._handles:
            self.setup(trainer, pl_module, "fit")
        loader, shard, fit_ids = self._fit_loader(trainer)
        device = pl_module.device
        was_training = pl_module.training
        pl_module.eval()
        try:
            state = self._fit(pl_module, loader, shard, fit_ids, device)
        finally:
            pl_module.train(was_training)
        self.fitted = state
        self._lofs, self._precisions = {}, {}
        self.fits += 1
        n_fit = int(state["n_fit"])
        log.info("ODIN: fitted on %d training samples (layers %s)", n_fit, self.layers)

    def _fit(self, pl_module, loader, shard, fit_ids, device) -> dict[str, Any]:
        # pass 1: moments of every layer's features, summed over ranks
        accumulators: dict[str, CovarianceAccumulator] = {}
        if self.layers:
            for batch in loader:
                x, _ = _input_and_target(batch)
                with torch.no_grad():
                    _, acts = self._forward(pl_module, x.to(device))
                for layer in self.layers:
                    if layer not in acts:
                        raise RuntimeError(f"ODIN: layer {layer!r} was not called in forward()")
                    if layer not in accumulators:
                        accumulators[layer] = CovarianceAccumulator(acts[layer].shape[1]).to(device)
                    accumulators[layer].update(acts[layer])
        layers_state: dict[str, Any] = {}
        for layer in self.layers:
            n, total, outer = accumulators[layer].compute()
            cov = covariance_from_moments(n, total, outer)
            pca = pca_from_moments(n, total, outer)
            ranks = {_tag(v): pca.rank(v) for v in self.levels}
            ranks.update({f"k{k}": min(k, len(pca.variances)) for k in self.ranks})
            kmax = max(ranks.values())
            components = pca.components[:, :kmax].contiguous()
            # covariance of the training projections T = (A - mean) P: Pᵀ Σ P
            p64 = components.double().to(cov.device)
            score_cov = (p64.T @ cov @ p64).float()
            layers_state[layer] = {
                "mean": pca.mean.cpu(),
                "components": components.cpu(),
                "variances": pca.variances[:kmax].cpu(),
                "explained_variance_ratio": pca.explained_variance_ratio[:kmax].cpu(),
                "ranks": ranks,
                "score_cov": score_cov.cpu(),
                "n": int(n),
            }
        state: dict[str, Any] = {"layers": layers_state, "thresholds": {}, "n_fit": 0}
        del accumulators
        self.fitted = state  # distances below use it
        self._lofs, self._precisions = {}, {}

        # pass 2: training distances (thresholds) and a seeded subset of projections for LOF
        g = torch.Generator().manual_seed(self.seed)
        chosen = fit_ids[torch.randperm(len(fit_ids), generator=g)[: self.lof_max_train]]
        lof_keep = torch.zeros(int(fit_ids.max()) + 1, dtype=torch.bool)
        lof_keep[chosen] = True  # global ids: the same subset whatever the number of ranks

        dist_names = [n for n in self.score_names() if not n.startswith("baseline/") and not self._is_lof(n)]
        base_names = [f"baseline/{b}" for b in self.baselines] if self.fit_baselines else []
        train_scores = RowCollector().to(device)
        lof_rows = {layer: RowCollector().to(device) for layer in self.layers} if "lof" in self.distances else {}
        offset = 0
        for batch in loader:
            x, _ = _input_and_target(batch)
            x = x.to(device)
            ids = shard[offset : offset + len(x)]
            offset += len(x)
            with torch.no_grad():
                logits, acts = self._forward(pl_module, x)
            distances = self._distances(acts) if dist_names else {}
            columns = [distances[name] for name in dist_names]
            if base_names:
                bs = self._baseline_scores(pl_module, x, logits)
                columns += [bs[n.split("/", 1)[1]] for n in base_names]
            if columns:
                train_scores.update(torch.stack([c.float() for c in columns], 1))
            keep = lof_keep[ids]
            for layer, collector in lof_rows.items():
                info = layers_state[layer]
                t = pca_scores(acts[layer].double(), info["mean"].to(device, torch.float64),
                               info["components"].to(device, torch.float64))
                rows = torch.cat([ids[keep].to(device, torch.float64)[:, None], t[keep.to(device)].double()], 1)
                collector.update(rows)
        thresholds: dict[str, float] = {}
        if dist_names or base_names:
            gathered = train_scores.compute().float().cpu()
            state["n_fit"] = len(gathered)
            for j, name in enumerate(dist_names + base_names):
                thresholds[name] = quantile_threshold(gathered[:, j], self.threshold_quantile)
        for layer, collector in lof_rows.items():
            rows = collector.compute().cpu()
            rows = rows[rows[:, 0].argsort()]  # same order whatever the number of ranks
            layers_state[layer]["lof_train"] = rows[:, 1:].float().contiguous()
            for c in self._configs():
                lof = self._lof(layer, c)
                thresholds[f"{layer}/lof_{c}"] = quantile_threshold(
                    torch.from_numpy(-lof.negative_outlier_factor_), self.threshold_quantile
                )
        state["thresholds"] = thresholds
        state["n_fit"] = state["n_fit"] or len(fit_ids)
        return state

    @staticmethod
    def _is_lof(name: str) -> bool:
        return name.rsplit("/", 1)[-1].startswith("lof_")

    def _lof(self, layer: str, config: str):
        key = (layer, config)
        if key not in self._lofs:
            from sklearn.neighbors import LocalOutlierFactor

            info = self.fitted["layers"][layer]
            k = info["ranks"][config]
            train = info["lof_train"][:, :k].double().numpy()
            n_neighbors = min(self.lof_neighbors, len(train) - 1)
            self._lofs[key] = LocalOutlierFactor(n_neighbors=n_neighbors, novelty=True).fit(train)
        return self._lofs[key]

    def _precision(self, layer: str, config: str) -> Tensor:
        key = (layer, config)
        if key not in self._precisions:
            info = self.fitted["layers"][layer]
            k = info["ranks"][config]
            cov = info["score_cov"][:k, :k].double()
            self._precisions[key] = torch.linalg.pinv(cov, hermitian=True)
        return self._precisions[key]

    def _distances(self, acts: dict[str, Tensor], with_lof: bool = False) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            info = self.fitted["layers"][layer]
            # float64: a sample's scores must not depend on its row in the batch (GEMM tails round
            # differently), so one process and several DDP ranks give the same scores
            a = acts[layer].double()
            mean, comps = info["mean"].to(a.device, torch.float64), info["components"].to(a.device, torch.float64)
            t_all = pca_scores(a, mean, comps)
            sq_norm = (a - mean).pow(2).sum(-1)
            for c in self._configs():
                k = info["ranks"][c]
                t = t_all[:, :k]
                if "rss" in self.distances:
                    # ||a - m||² - ||t||² is the residual norm (orthonormal loadings), without forming the
                    # residual; clamp rounding below zero
                    out[f"{layer}/rss_{c}"] = (sq_norm - t.pow(2).sum(-1)).clamp_min(0.0)
                if "mahalanobis" in self.distances:
                    out[f"{layer}/mahalanobis_{c}"] = mahalanobis(t, self._precision(layer, c).to(a.device))
                if with_lof and "lof" in self.distances:
                    lof = self._lof(layer, c)
                    s = -lof.score_samples(t.cpu().numpy())
                    out[f"{layer}/lof_{c}"] = torch.from_numpy(s).to(a.device)
        return out

    def score_batch(self, pl_module: LightningModule, x: Tensor, logits: Tensor | None, acts: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every score of :meth:`score_names` for one batch whose forward pass filled ``acts``/``logits``."""
        scores = self._distances(acts, with_lof=True) if self.layers else {}
        scores.update({f"baseline/{k}": v for k, v in self._baseline_scores(pl_module, x, logits).items()})
        return {name: scores[name].double() for name in self.score_names()}

    def flags(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        """Thresholded flags (``score > threshold``) and the OR / AND combinations of RSS and Mahalanobis."""
        thresholds = self.fitted["thresholds"]
        flags = {name: s > thresholds[name] for name, s in scores.items() if name in thresholds}
        for name in self.combo_names():
            layer, rest = name.rsplit("/", 1)
            op, config = rest.split("_")[1], rest.rsplit("_", 1)[1]
            a, b = flags.get(f"{layer}/rss_{config}"), flags.get(f"{layer}/mahalanobis_{config}")
            if a is not None and b is not None:
                flags[name] = (a | b) if op == "or" else (a & b)
        return flags

    def _ensure_fitted(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.fitted is None or self.refit:
            self.fit(trainer, pl_module)
            self.refit = False

    # ------------------------------------------------------------------ lifecycle
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.fit_on_train_end:
            return
        self.fit(trainer, pl_module)
        # the ModelCheckpoints saved before training ended: re-write their last.ckpt with the fitted state
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.last_model_path:
                trainer.save_checkpoint(cb.last_model_path)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ensure_fitted(trainer, pl_module)
        self._scores = OutlierScores().to(pl_module.device)
        self._tested_names = self.score_names()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._capture, self._acts, self._logits = True, {}, None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._capture = False
        x, y = _input_and_target(batch)
        scores = self.score_batch(pl_module, x, self._logits, self._acts)
        columns = torch.stack([scores[n] for n in self._tested_names], 1)
        flags = self.flags(scores)
        flag_cols = torch.stack([flags[n].float() for n in self.combo_names()], 1) if self.combo_names() else None
        if flag_cols is not None:
            columns = torch.cat([columns, flag_cols], 1)
        is_outlier = torch.full((len(x),), int(dataloader_idx > 0), dtype=torch.long, device=columns.device)
        group = y.long() if (dataloader_idx > 0 and y is not None) else torch.full_like(is_outlier, -1)
        self._scores.update(columns, is_outlier, group.to(columns.device))
        self._acts, self._logits = {}, None

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scores, is_outlier, group = self._scores.compute()
        scores, is_outlier, group = scores.cpu(), is_outlier.cpu(), group.cpu()
        self._scores.reset()
        if int(is_outlier.sum()) == 0 or int(is_outlier.sum()) == len(is_outlier):
            raise RuntimeError(
                "ODIN needs inliers (first test dataloader) and outliers (a further test dataloader): "
                "configure the DataModule's outlier classes (e.g. --data.outlier_classes)"
            )
        thresholds = self.fitted["thresholds"]
        names = self._tested_names
        self.test_scores = (names, scores[:, : len(names)], is_outlier, group)
        self.results, self.group_results, self.set_results = {}, {}, {}
        class_names = getattr(trainer.datamodule, "class_names", None)
        for j, name in enumerate(names + self.combo_names()):
            col = scores[:, j]
            if j < len(names):
                res = summarize(col, is_outlier, thresholds.get(name))
                flags = col > thresholds[name] if name in thresholds else None
            else:
                flags = col > 0.5
                res = flag_summary(flags, is_outlier)
            self.results[name] = {k: float(v) for k, v in res.items()}
            if j < len(names) and self.outlier_sets:
                self.set_results[name] = {}
                for set_name, classes in self.outlier_sets.items():
                    keep = (is_outlier == 0) | torch.isin(group, torch.tensor(classes))
                    if int(is_outlier[keep].sum()) == 0:
                        continue
                    sres = summarize(col[keep], is_outlier[keep])
                    self.set_results[name][set_name] = {k: float(v) for k, v in sres.items()}
            if self.per_group and flags is not None:
                self.group_results[name] = {}
                for g in sorted(set(group[is_outlier == 1].tolist())):
                    keep = (is_outlier == 0) | (group == g)
                    label = class_names[g] if class_names is not None and 0 <= g < len(class_names) else str(g)
                    self.group_results[name][label] = {k: float(v) for k, v in flag_summary(flags[keep], is_outlier[keep]).items()}
        for name, res in self.results.items():
            for stat, value in res.items():
                pl_module.log(f"test/odin/{name}/{stat}", value, add_dataloader_idx=False)
            for set_name, sres in self.set_results.get(name, {}).items():
                for stat, value in sres.items():
                    pl_module.log(f"test/odin/{name}/{set_name}/{stat}", value, add_dataloader_idx=False)
            for label, gres in self.group_results.get(name, {}).items():
                for stat, value in gres.items():
                    pl_module.log(f"test/odin/{name}/{label}/{stat}", value, add_dataloader_idx=False)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._ensure_fitted(trainer, pl_module)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._capture, self._acts, self._logits = True, {}, None

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._capture = False
        if not isinstance(outputs, dict):
            raise TypeError("ODIN adds its scores to predict_step's output: predict_step must return a dict")
        x, _ = _input_and_target(batch)
        scores = self.score_batch(pl_module, x, self._logits, self._acts)
        outputs["outlier_scores"] = scores
        outputs["outlier_flags"] = self.flags(scores)
        self._acts, self._logits = {}, None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"fitted": self.fitted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.fitted = state_dict.get("fitted")
        self._lofs, self._precisions = {}, {}
        if self.fitted is not None:
            missing = [layer for layer in self.layers if layer not in self.fitted["layers"]]
            if missing:
                log.warning("ODIN: the checkpoint's fitted state lacks layers %s: refitting", missing)
                self.fitted = None


__all__ = ["ODIN"]
