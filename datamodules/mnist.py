"""MNIST and Fashion-MNIST in their official IDX format (torchvision's ``<root>/<Name>/raw`` layout)."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets

from datamodules.base import missing_data_error, resolve_data_dir

log = logging.getLogger(__name__)

Scale = Literal["standardize", "unit", "symmetric"]


def read_idx(path: str | os.PathLike) -> Tensor:
    """Read an IDX file (``.gz`` or not) into a uint8 tensor; the format of LeCun's MNIST files."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported, type code {data[2]:#x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"{path} is truncated or padded: {len(data) - offset} bytes of data, header says {expected}")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy())


class _IDXMixin:
    """torchvision's MNIST family reads only uncompressed files; the official files are gzipped.

    This accepts either, so a read-only copy of the official ``.gz`` files works as it is.
    """

    folder_name: str  # torchvision's folder: MNIST or FashionMNIST

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, self.folder_name, "raw")  # type: ignore[attr-defined]

    def _file(self, stem: str) -> Path | None:
        raw = Path(self.raw_folder)  # type: ignore[attr-defined]
        for candidate in (raw / stem, raw / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _stems(self) -> list[str]:
        return [os.path.splitext(os.path.basename(url))[0] for url, _ in self.resources]  # type: ignore[attr-defined]

    def _check_exists(self) -> bool:
        return all(self._file(stem) is not None for stem in self._stems())

    def _load_data(self) -> tuple[Tensor, Tensor]:
        split = "train" if self.train else "t10k"  # type: ignore[attr-defined]
        images = read_idx(self._file(f"{split}-images-idx3-ubyte"))
        labels = read_idx(self._file(f"{split}-labels-idx1-ubyte")).long()
        if len(images) != len(labels):
            raise ValueError(f"{self.raw_folder}: {len(images)} images but {len(labels)} labels")  # type: ignore[attr-defined]
        return images, labels


class MNISTDataset(_IDXMixin, datasets.MNIST):
    """torchvision's MNIST reading gzipped or plain IDX files."""

    folder_name = "MNIST"


class FashionMNISTDataset(_IDXMixin, datasets.FashionMNIST):
    """torchvision's Fashion-MNIST reading gzipped or plain IDX files."""

    folder_name = "FashionMNIST"


class MNISTDataModule(LightningDataModule):
    """MNIST from ``data_dir`` (default ``<data root>/mnist``), held in memory as tensors.

    Args:
        data_dir: folder holding ``MNIST/raw/`` (torchvision's layout); default ``$PAPERZOO_DATA/mnist``.
        download: fetch the official files if missing (needs a network).
        batch_size: per-process batch size (under DDP the global batch is ``batch_size * world_size``).
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        val_fraction: share of the official training set held out for validation, split with ``split_seed``.
        split_seed: seed of the train/validation split (independent of ``seed_everything``).
        classes: keep only these classes everywhere, relabelled ``0..len(classes)-1`` in the given order.
        scale: ``standardize`` (mean/std of the training set), ``unit`` ([0, 1]) or ``symmetric`` ([-1, 1]).
        image_size: resize (bilinear) to this side length, e.g. 32 or 64 for DCGANs.
        train_subset: use only the first N training images (after the split), for quick experiments.
        outlier_classes: test images of these classes form a second test dataloader (outlier detection,
            e.g. the ODIN protocols), labelled with their original class ids; must not overlap ``classes``.
    """

    dataset_cls: type[MNISTDataset] = MNISTDataset
    folder = "mnist"
    sample_name: str | None = "mnist"
    mean, std = 0.1307, 0.3081
    class_names: tuple[str, ...] = tuple(str(i) for i in range(10))

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        classes: list[int] | None = None,
        scale: Scale = "standardize",
        image_size: int = 28,
        train_subset: int | None = None,
        outlier_classes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir, self.folder)
        if classes is not None and (
            len(set(classes)) != len(classes) or not all(0 <= c < len(self.class_names) for c in classes)
        ):
            raise ValueError(f"classes must be distinct labels in 0..{len(self.class_names) - 1}, got {classes}")
        if outlier_classes is not None:
            if len(set(outlier_classes)) != len(outlier_classes) or not all(
                0 <= c < len(self.class_names) for c in outlier_classes
            ):
                raise ValueError(f"outlier_classes must be distinct labels in 0..{len(self.class_names) - 1}")
            if classes is None or set(outlier_classes) & set(classes):
                raise ValueError("outlier_classes must not overlap the training classes (set both)")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.outlier_set: TensorDataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.hparams.classes) if self.hparams.classes is not None else len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.hparams.image_size, self.hparams.image_size)

    def _dataset(self, train: bool) -> datasets.MNIST:
        name = self.dataset_cls.folder_name
        try:
            return self.dataset_cls(str(self.data_dir), train=train, download=self.hparams.download)
        except RuntimeError as err:
            if "not found" not in str(err):
                raise
            raise missing_data_error(
                name,
                self.data_dir,
                self.sample_name,
                f"--data.download true (fetches the official files into {self.data_dir}/{name}/raw)",
            ) from None

    def prepare_data(self) -> None:
        if self.hparams.download:
            for train in (True, False):
                self._dataset(train)

    def _tensors(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        classes = self.hparams.classes
        if classes is not None:
            keep = torch.isin(labels, torch.tensor(classes))
            images, labels = images[keep], labels[keep]
            lut = torch.full((len(self.class_names),), -1, dtype=torch.long)
            lut[torch.tensor(classes)] = torch.arange(len(classes))
            labels = lut[labels]
        return self.transform(images), labels

    def transform(self, images: Tensor) -> Tensor:
        """uint8 ``(N, H, W)`` to float ``(N, 1, S, S)`` in the configured scale."""
        x = images.unsqueeze(1).float().div_(255.0)
        if self.hparams.image_size != x.shape[-1]:
            x = F.interpolate(x, size=self.hparams.image_size, mode="bilinear", align_corners=False)
        if self.hparams.scale == "standardize":
            x = (x - self.mean) / self.std
        elif self.hparams.scale == "symmetric":
            x = x * 2.0 - 1.0
        return x

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            full = self._dataset(train=True)
            n = len(full.data)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed))
            n_val = int(round(n * self.hparams.val_fraction))
            val_idx, train_idx = perm[:n_val], perm[n_val:]
            if self.hparams.train_subset is not None:
                train_idx = train_idx[: self.hparams.train_subset]
            self.train_set = TensorDataset(*self._tensors(full.data[train_idx], full.targets[train_idx]))
            self.val_set = TensorDataset(*self._tensors(full.data[val_idx], full.targets[val_idx]))
            log.info("%s: %d train / %d val images from %s", type(self).__name__, n - n_val, n_val, self.data_dir)
        if stage in (None, "test", "predict") and self.test_set is None:
            test = self._dataset(train=False)
            self.test_set = TensorDataset(*self._tensors(test.data, test.targets))
            if self.hparams.outlier_classes:
                keep = torch.isin(test.targets, torch.tensor(self.hparams.outlier_classes))
                self.outlier_set = TensorDataset(self.transform(test.data[keep]), test.targets[keep])

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() has not prepared this split")
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test set; with ``outlier_classes`` a list ``[test set, outlier set]``."""
        if self.hparams.outlier_classes:
            return [self._loader(self.test_set, shuffle=False), self._loader(self.outlier_set, shuffle=False)]
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Zalando) from ``data_dir`` (default ``<data root>/fashion_mnist``).

    No offline sample exists for Fashion-MNIST; get it with ``--data.download true`` or point
    ``data_dir`` at a copy (e.g. ``../shared/data/fashion_mnist``). Arguments as :class:`MNISTDataModule`.
    """

    dataset_cls = FashionMNISTDataset
    folder = "fashion_mnist"
    sample_name = None
    mean, std = 0.2860, 0.3530
    class_names = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
