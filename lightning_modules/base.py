"""What every paper module shares: the TensorBoard hparams summary with its metric keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is None:
            flat[name] = "None"
        else:
            flat[name] = getattr(value, "__qualname__", None) or str(value)
    return flat


@rank_zero_only
def log_hparams_summary(loggers: list, hparams: Mapping[str, Any], metric_keys: list[str] | tuple[str, ...]) -> None:
    """Write TensorBoard's hparams summary once, naming the metric keys whose scalars fill its table.

    Unlike ``TensorBoardLogger.log_hyperparams(params, metrics)`` this writes no placeholder scalar
    values, so the metric curves start at their first real value.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        exp, ssi, sei = hparams_summary(_flatten(hparams), {key: 0.0 for key in metric_keys})
        writer = logger.experiment._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)


class PaperzooModule(LightningModule):
    """Base of the paper modules: names the metrics shown beside the hyperparameters in TensorBoard."""

    hparams_metrics: tuple[str, ...] = ()

    def on_fit_start(self) -> None:
        if self.hparams_metrics:
            log_hparams_summary(self.loggers, dict(self.hparams), self.hparams_metrics)
