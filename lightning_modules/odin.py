"""The ODIN paper's speech-command classifier: ImageClassifier's steps and metrics around a 3-layer BiLSTM.

Outlier scoring itself is the :class:`callbacks.outliers.ODIN` callback (configured in
``configs/odin_speech_commands.yaml`` on ``net.lstm3``); this module only trains the classifier.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import PaperzooModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.nets.rnn import BiLSTMClassifier


class SequenceClassifier(ImageClassifier):
    """Cross-entropy classifier of feature sequences ``(N, T, in_features)`` with the paper's BiLSTM.

    Same steps, logs (``train/loss``, ``val/acc``, ``test/acc``, ...) and ``predict_step`` output as
    :class:`ImageClassifier`; only the network differs.
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 25,
        hidden: int = 128,
        dropout: float = 0.3,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        PaperzooModule.__init__(self)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.net = BiLSTMClassifier(in_features, num_classes, hidden, dropout)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
