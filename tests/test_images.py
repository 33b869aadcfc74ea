"""The shared image-grid logging helper."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from callbacks import ImageGrids, image_grid
from tests.helpers import event_tags


class _Generator(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 16)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def image_grids(self):
        images = self.layer(torch.randn(6, 4)).view(6, 1, 4, 4)
        return {"val/samples": images, "val/recon": (images, 3)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_image_grid_shape_and_range() -> None:
    grid = image_grid(torch.linspace(-1, 1, 6 * 16).view(6, 1, 4, 4), nrow=3, value_range=(-1, 1))
    assert grid.shape == (3, 2 * 4 + 3 * 2, 3 * 4 + 4 * 2)  # 2 rows x 3 columns with 2 px padding
    assert grid.min() >= 0 and grid.max() <= 1


def test_callback_logs_module_grids(tmp_path: Path) -> None:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    logger = TensorBoardLogger(tmp_path, name="grids")
    trainer = Trainer(max_epochs=2, logger=logger, callbacks=[ImageGrids(every_n_epochs=1)],
                      enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(_Generator(), data, data)
    logger.experiment.flush()
    assert set(event_tags(logger.log_dir)["images"]) == {"val/samples", "val/recon"}
