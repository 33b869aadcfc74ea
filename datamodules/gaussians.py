"""Mixture of Gaussians on a circle (the EWC-GAN / unrolled-GAN toy): 8 modes, radius 2, covariance 0.02 I.

Synthetic by construction: points are drawn on the fly from a fixed seed, nothing is read from disk.
Batches are ``(points,)`` with ``points`` of shape ``(B, 2)``. The DataModule exposes the true mixture
(``centers``, ``std``) so that modules can score samples against it (duck-typed: ``datamodule.centers``).
"""

from __future__ import annotations

import math

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset



class GaussianMixtureDataModule(LightningDataModule):
    """``modes`` isotropic Gaussians (covariance ``variance * I``) evenly spaced on a circle of ``radius``.

    Args:
        modes, radius, variance: the mixture (defaults: the paper's 8, 2, 0.02).
        batch_size: per-process batch size.
        train_size: points drawn for training (reshuffled every epoch; epoch = ``train_size / batch_size`` steps).
        val_size: points of the validation set (the real sample the validation step sees).
        data_seed: seed of the draws (independent of ``seed_everything``).
    """

    def __init__(
        self,
        modes: int = 8,
        radius: float = 2.0,
        variance: float = 0.02,
        batch_size: int = 512,
        train_size: int = 512_000,
        val_size: int = 10_000,
        data_seed: int = 1234,
    ) -> None:
        super().__init__()
        if modes < 1 or radius <= 0 or variance <= 0:
            raise ValueError("modes must be >= 1 and radius, variance > 0")
        self.save_hyperparameters()
        angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        self.centers: Tensor = torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], 1).float()
        self.std: float = math.sqrt(variance)
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points of the mixture (equal weights)."""
        k = torch.randint(0, self.hparams.modes, (n,), generator=generator)
        return self.centers[k] + self.std * torch.randn(n, 2, generator=generator)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            g = torch.Generator().manual_seed(self.hparams.data_seed)
            self.train_set = TensorDataset(self.sample(self.hparams.train_size, g))
            self.val_set = TensorDataset(self.sample(self.hparams.val_size, g))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.val_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
