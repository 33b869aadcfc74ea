"""Image-grid logging shared by the generative modules (samples, reconstructions, latent traversals).

Two ways in:

* :func:`log_image_grid` for code that has images in hand;
* :class:`ImageGrids`, a callback that asks the module for its grids. A module takes part by
  defining ``image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]`` (tag to a batch of images
  ``(N, C, H, W)``, optionally with the number of images per row); the callback calls it every
  ``every_n_epochs`` validation epochs under ``torch.no_grad()`` in eval mode and logs each grid.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid


def image_grid(images: Tensor, nrow: int = 8, value_range: tuple[float, float] | None = None) -> Tensor:
    """A ``(3, H, W)`` grid in [0, 1]; ``value_range`` is the images' range (``None``: each image's own)."""
    images = images.detach().float().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return make_grid(images, nrow=nrow, normalize=True, value_range=value_range, scale_each=value_range is None, pad_value=1.0)


@rank_zero_only
def log_image_grid(
    loggers: Logger | Iterable[Logger],
    tag: str,
    images: Tensor,
    step: int,
    nrow: int = 8,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """Log ``images`` as one grid to every TensorBoard logger (rank zero only); returns the grid."""
    grid = image_grid(images, nrow=nrow, value_range=value_range)
    for logger in [loggers] if isinstance(loggers, Logger) else loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, global_step=step)
    return grid


class ImageGrids(Callback):
    """Log the grids of ``pl_module.image_grids()`` every ``every_n_epochs`` validation epochs.

    Args:
        every_n_epochs: how often (in validation epochs) to log.
        value_range: pixel range of the module's images, e.g. ``[-1, 1]`` for tanh generators;
            ``None`` rescales each image to its own min/max.
    """

    def __init__(self, every_n_epochs: int = 1, value_range: tuple[float, float] | None = None) -> None:
        self.every_n_epochs = every_n_epochs
        self.value_range = tuple(value_range) if value_range is not None else None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not hasattr(pl_module, "image_grids"):
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        with torch.no_grad():
            grids = pl_module.image_grids()
        for tag, images in grids.items():
            nrow = 8
            if isinstance(images, tuple):
                images, nrow = images
            log_image_grid(trainer.loggers, tag, images, trainer.global_step, nrow=nrow, value_range=self.value_range)
