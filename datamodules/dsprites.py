"""dSprites (Matthey et al., 2017): 64 x 64 binary sprites with 5 known factors, and its ground-truth factor sampler.

Sources (``source``):

* ``official``: ``<data_dir>/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``, the official file (or the
  one ``python -m datamodules.samples dsprites --root DIR`` writes in its layout, optionally on a sub-grid);
* ``subset`` / ``downsampled``: the real subsets ``dsprites_subset.npz`` (20,000 random images) and
  ``dsprites_downsampled.npz`` (46,080 images on a regular sub-grid) with 5 latent columns;
* ``render``: no file at all; every image is rendered on the fly from its factors by the generator in
  :mod:`datamodules.samples.dsprites` (the full 737,280-combination grid);
* ``auto`` (default): the official file if present, else the downsampled subset, else the random subset.

Batches are ``(images, factor_classes)``: float ``(N, 1, 64, 64)`` in {0, 1} and long ``(N, 5)`` with the
official class indices (shape, scale, orientation, posX, posY). Images are held bit-packed in memory
(the full data set takes 377 MB instead of 3 GB).

The ground-truth factor sampler (``datamodule.factor_sampler``, see :class:`DSpritesFactors`) samples
factors, lets a caller fix some, and returns observations: real images when the combination is in the
loaded file, else rendered ones (counted in ``rendered``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.base import missing_data_error, resolve_data_dir
from datamodules.samples import dsprites as gen

log = logging.getLogger(__name__)

Source = Literal["auto", "official", "subset", "downsampled", "render"]


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an official-layout or subset ``.npz``: (images uint8 (N, 64, 64), official factor classes (N, 5))."""
    path = Path(path)
    with np.load(path, allow_pickle=True, encoding="latin1") as f:
        missing = {"imgs", "latents_classes"} - set(f.files)
        if missing:
            raise ValueError(f"{path} is not a dSprites file: keys {sorted(missing)} are missing")
        imgs = f["imgs"]
        classes = np.asarray(f["latents_classes"], dtype=np.int64)
        meta = f["metadata"].item() if "metadata" in f.files else {}
        if "original_dataset_indices" in f.files:  # the real subsets: recover official classes from the index
            index = np.asarray(f["original_dataset_indices"], dtype=np.int64)
            classes = np.stack(np.unravel_index(index, gen.FACTOR_SIZES), axis=1)
    if classes.shape[1] == 6:
        classes = classes[:, 1:]  # drop the constant colour column
    if imgs.shape[1:] != (64, 64) or classes.shape != (len(imgs), 5):
        raise ValueError(f"{path}: unexpected shapes imgs {imgs.shape}, latents_classes {classes.shape}")
    if (classes < 0).any() or (classes >= np.array(gen.FACTOR_SIZES)).any():
        raise ValueError(f"{path}: factor classes outside the official ranges {gen.FACTOR_SIZES} (metadata {meta.get('version')})")
    return imgs.astype(np.uint8, copy=False), classes


class PackedImages(Dataset):
    """Bit-packed binary images with their factor classes; returns ``(float image (1, 64, 64), classes (5,))``."""

    def __init__(self, imgs: np.ndarray, classes: np.ndarray) -> None:
        self.bits = np.packbits(imgs.astype(bool), axis=-1)  # (N, 64, 8)
        self.classes = torch.from_numpy(np.ascontiguousarray(classes))

    def __len__(self) -> int:
        return len(self.bits)

    def images(self, idx: np.ndarray) -> Tensor:
        return torch.from_numpy(np.unpackbits(self.bits[idx], axis=-1)).float().unsqueeze(-3)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images(np.array([i]))[0], self.classes[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[Tensor, Tensor]]:
        x = self.images(np.asarray(idx))
        return list(zip(x, self.classes[idx]))


class RenderedDSprites(Dataset):
    """Every factor combination (official order), each image rendered when asked for."""

    def __init__(self) -> None:
        self.classes = torch.from_numpy(gen.all_classes())

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, idx: list[int]) -> list[tuple[Tensor, Tensor]]:
        c = self.classes[idx]
        x = torch.from_numpy(gen.render_classes(c.numpy())).float().unsqueeze(1)
        return list(zip(x, c))


class DSpritesFactors:
    """Ground-truth factor sampler (disentanglement_lib's ``GroundTruthData`` protocol).

    ``factor_sizes``: classes per factor; ``factor_values`` the allowed classes of each factor (a sub-grid
    for the downsampled subset). ``sample_factors(n, rng)`` draws classes uniformly from the allowed ones;
    ``sample_observations_from_factors(factors, rng)`` returns float images ``(n, 1, 64, 64)``: the real image
    when that combination is in the loaded data, else a rendering (counted in ``rendered``).
    """

    factor_names = gen.FACTOR_NAMES

    def __init__(self, dataset: PackedImages | None = None, allowed: list[np.ndarray] | None = None) -> None:
        self.dataset = dataset
        self.factor_values = allowed or [np.arange(n) for n in gen.FACTOR_SIZES]
        self.factor_sizes = [len(v) for v in self.factor_values]
        self.rendered = 0
        self.lookup = None
        if dataset is not None:
            index = gen.factor_index(dataset.classes.numpy())
            self.lookup = np.full(int(np.prod(gen.FACTOR_SIZES)), -1, dtype=np.int64)
            self.lookup[index] = np.arange(len(index))

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 5)`` official class indices drawn uniformly over the allowed grid."""
        return np.stack([rng.choice(v, size=n) for v in self.factor_values], axis=1)

    def sample_observations_from_factors(self, factors: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        factors = np.asarray(factors, dtype=np.int64)
        out = torch.empty(len(factors), 1, 64, 64)
        have = np.zeros(len(factors), dtype=bool)
        if self.lookup is not None:
            rows = self.lookup[gen.factor_index(factors)]
            have = rows >= 0
            if have.any():
                out[torch.from_numpy(have)] = self.dataset.images(rows[have])
        if (~have).any():
            out[torch.from_numpy(~have)] = torch.from_numpy(gen.render_classes(factors[~have])).float().unsqueeze(1)
            self.rendered += int((~have).sum())
        return out


class DSpritesDataModule(LightningDataModule):
    """dSprites from ``data_dir`` (default ``$PAPERZOO_DATA/dsprites``) or rendered on the fly.

    Args:
        data_dir: folder holding the official file and/or the real subsets.
        source: which data to read (see module docstring).
        batch_size: per-process batch size.
        num_workers: DataLoader workers.
        val_fraction: share of the images held out for validation and test (seeded by ``split_seed``).
        split_seed: seed of the split.
        train_subset: use only the first N training images (after the split), for quick experiments.
    """

    folder = "dsprites"
    image_shape = (1, 64, 64)
    factor_names = gen.FACTOR_NAMES

    def __init__(
        self,
        data_dir: str | None = None,
        source: Source = "auto",
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.01,
        split_seed: int = 42,
        train_subset: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.data_dir = resolve_data_dir(data_dir, self.folder)
        self.dataset: Dataset | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.factor_sampler: DSpritesFactors | None = None

    def _resolve_source(self) -> tuple[str, Path | None]:
        files = {"official": gen.OFFICIAL_FILE, "subset": "dsprites_subset.npz", "downsampled": "dsprites_downsampled.npz"}
        source = self.hparams.source
        if source == "render":
            return source, None
        order = [source] if source != "auto" else ["official", "downsampled", "subset"]
        for name in order:
            path = self.data_dir / files[name]
            if path.is_file():
                return name, path
        raise missing_data_error(
            "dSprites" if source == "auto" else f"dSprites ({files[source]})",
            self.data_dir,
            "dsprites",
            "download dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz from github.com/deepmind/dsprites-dataset "
            "into that folder, or use --data.source render (no file needed)",
        )

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        source, path = self._resolve_source()
        if source == "render":
            self.dataset = RenderedDSprites()
            self.factor_sampler = DSpritesFactors()
        else:
            imgs, classes = load_npz(path)
            self.dataset = PackedImages(imgs, classes)
            # factors sampled only from the grid the file covers (the whole grid for the official file,
            # the sub-grid for the downsampled subset); the random subset has gaps, filled by rendering
            allowed = [np.unique(classes[:, i]) for i in range(5)]
            self.factor_sampler = DSpritesFactors(self.dataset, allowed)
            log.info("dSprites: %d images from %s", len(imgs), path)
        n = len(self.dataset)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed)).numpy()
        n_val = max(1, int(round(n * self.hparams.val_fraction)))
        train_idx = perm[n_val:]
        if self.hparams.train_subset is not None:
            train_idx = train_idx[: self.hparams.train_subset]
        self.train_set = Subset(self.dataset, train_idx.tolist())
        self.val_set = Subset(self.dataset, np.sort(perm[:n_val]).tolist())
        self.source = source

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
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

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
