"""Disentanglement metrics (BetaVAE, FactorVAE, MIG, DCI, SAP, IRS) every N validation epochs and at test.

Protocols (no paper module is imported):

* the DataModule exposes ``factor_sampler`` with ``factor_sizes``, ``sample_factors(n, rng)`` and
  ``sample_observations_from_factors(factors, rng) -> (n, C, H, W)`` (optionally ``factor_values``,
  the allowed classes of each factor);
* the LightningModule exposes ``representation(x, factors) -> (n, D)`` (e.g. posterior means).

Because an observation is a function of its factors, codes are cached per factor combination within
one evaluation: each distinct combination is rendered/read and encoded once, which makes
disentanglement_lib's sample counts affordable on a CPU (``scale`` multiplies them; 1.0 = defaults).

DDP: rank 0 computes from its own seeded generators and the scores are broadcast to every rank, so the
logged values equal a single-process run (same weights, same seeds). Logged as
``val/disent/<metric>`` and ``test/disent/<metric>``; the last scores are kept in the callback state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from metrics.disentanglement import ALL_METRICS, compute_all

log = logging.getLogger(__name__)


class CachedRepresentation:
    """``represent(factors)`` for the metrics: encodes each distinct factor combination once.

    Codes live in a dense array indexed by the factor combination (the grid is small: 737,280 x D for
    dSprites), so the millions of look-ups of BetaVAE/FactorVAE's defaults are vectorised.
    """

    def __init__(self, module: LightningModule, sampler: Any, batch_size: int = 512, seed: int = 0) -> None:
        self.module, self.sampler, self.batch_size = module, sampler, batch_size
        values = getattr(sampler, "factor_values", None)
        self.dims = [int(np.max(v)) + 1 for v in values] if values is not None else list(sampler.factor_sizes)
        self.codes: np.ndarray | None = None
        self.have = np.zeros(int(np.prod(self.dims)), dtype=bool)
        self.rng = np.random.default_rng(seed)
        self.encoded = 0

    def __call__(self, factors: np.ndarray) -> np.ndarray:
        factors = np.asarray(factors, dtype=np.int64)
        keys = np.ravel_multi_index(factors.T, self.dims)
        unique, first = np.unique(keys, return_index=True)
        todo = first[~self.have[unique]]
        for start in range(0, len(todo), self.batch_size):
            rows = factors[todo[start : start + self.batch_size]]
            x = self.sampler.sample_observations_from_factors(rows, self.rng)
            x = torch.as_tensor(x, dtype=torch.float32, device=self.module.device)
            with torch.no_grad():
                codes = self.module.representation(x, torch.as_tensor(rows, device=self.module.device)).float().cpu().numpy()
            if self.codes is None:
                self.codes = np.zeros((len(self.have), codes.shape[1]), dtype=np.float32)
            k = np.ravel_multi_index(rows.T, self.dims)
            self.codes[k] = codes
            self.have[k] = True
            self.encoded += len(rows)
        return self.codes[keys].astype(np.float64)


def evaluate_disentanglement(
    module: LightningModule,
    sampler: Any,
    metrics: Sequence[str] = ALL_METRICS,
    scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 512,
    scale_overrides: dict[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Scores and seconds per metric (``encode`` = time spent encoding, included in the metrics' times)."""
    was_training = module.training
    module.eval()
    represent = CachedRepresentation(module, sampler, batch_size, seed)
    encode_time = [0.0]

    def timed(factors: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = represent(factors)
        encode_time[0] += time.perf_counter() - start
        return out

    try:
        scores, times = compute_all(sampler.sample_factors, timed, list(sampler.factor_sizes), seed=seed, metrics=metrics,
                                    scale=scale, scale_overrides=scale_overrides)
    finally:
        module.train(was_training)
    times["encode"] = encode_time[0]
    times["encoded_images"] = float(represent.encoded)
    return scores, times


class DisentanglementMetrics(Callback):
    """Score the module's representation with the disentanglement metrics.

    Args:
        every_n_epochs: compute after every N-th training epoch's validation (0: only at test).
        metrics: subset of ``beta_vae, factor_vae, mig, dci, sap, irs``.
        scale: multiplies disentanglement_lib's sample counts (1.0 = its defaults).
        seed: seed of the metrics' random generators (the same at every evaluation).
        on_test: also compute in ``trainer.test`` (``test/disent/*``).
        batch_size: encoding batch size.
        scale_overrides: per-metric ``scale`` (e.g. ``{"dci": 0.1}``).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        metrics: Sequence[str] = ALL_METRICS,
        scale: float = 1.0,
        seed: int = 0,
        on_test: bool = True,
        batch_size: int = 512,
        scale_overrides: dict[str, float] | None = None,
    ) -> None:
        unknown = set(metrics) - set(ALL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
        self.every_n_epochs, self.metrics, self.scale, self.seed = every_n_epochs, tuple(metrics), scale, seed
        self.on_test, self.batch_size = on_test, batch_size
        self.scale_overrides = dict(scale_overrides or {})
        self.last_scores: dict[str, float] = {}
        self.evaluations = 0
        self.skipped = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metrics=self.metrics, scale=self.scale, every_n_epochs=self.every_n_epochs)

    def _sampler(self, trainer: Trainer) -> Any:
        sampler = getattr(trainer.datamodule, "factor_sampler", None) if trainer.datamodule is not None else None
        return sampler

    def _run(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        sampler = self._sampler(trainer)
        if sampler is None or not hasattr(pl_module, "representation"):
            self.skipped += 1
            rank_zero_warn(
                f"DisentanglementMetrics skipped ({self.skipped} times): the DataModule has no factor_sampler "
                "or the module no representation()"
            )
            return
        scores: dict[str, float] | None = None
        if trainer.is_global_zero:
            scores, times = evaluate_disentanglement(
                pl_module, sampler, self.metrics, self.scale, self.seed, self.batch_size, self.scale_overrides
            )
            log.info("disentanglement metrics (%s): %s; seconds: %s", stage, scores, times)
        scores = trainer.strategy.broadcast(scores, src=0)
        self.last_scores = dict(scores)
        self.evaluations += 1
        for key, value in scores.items():
            pl_module.log(f"{stage}/disent/{key}", float(value), on_step=False, on_epoch=True, sync_dist=False)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs or trainer.state.fn != "fit":
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on_test:
            self._run(trainer, pl_module, "test")

    def state_dict(self) -> dict[str, Any]:
        return {"last_scores": dict(self.last_scores), "evaluations": self.evaluations, "skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_scores = dict(state_dict.get("last_scores", {}))
        self.evaluations = int(state_dict.get("evaluations", 0))
        self.skipped = int(state_dict.get("skipped", 0))
