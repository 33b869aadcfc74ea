"""A small configurable image classifier (paper-agnostic; the ODIN paper's CNN by default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import PaperzooModule
from lightning_modules.nets import SmallCNN


class ImageClassifier(PaperzooModule):
    """Cross-entropy image classifier with torchmetrics accuracy.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    ``predict_step`` returns ``{"logits", "probs", "preds"}`` per batch.
    """

    hparams_metrics = ("val/acc", "val/loss", "test/acc")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.net = SmallCNN(in_channels, num_classes, image_size, tuple(channels), hidden, dropout)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, prog_bar=True, sync_dist=not train,
                 add_dataloader_idx=False)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, add_dataloader_idx=False)
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx > 0:
            # a further test set (e.g. outliers of classes the net never saw): forward only, for callbacks
            # that score it through hooks (ODIN); loss and accuracy are of the first test set only
            self(batch[0])
            return
        self._step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        logits = self(batch[0])
        probs = logits.softmax(dim=-1)
        return {"logits": logits, "probs": probs, "preds": probs.argmax(dim=-1)}

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}
