"""CelebA (aligned and cropped faces) read from the official on-disk layout, with the 40 attributes as labels.

Layout (torchvision's ``base_folder``): ``data_dir`` (default ``$PAPERZOO_DATA/celeba``) holds ``celeba/`` with

* ``img_align_celeba/*.jpg`` (178x218 RGB), may be partial: rows whose image is absent are counted
  and logged, only present images are used; a folder with none of them is a clear error;
* ``list_attr_celeba.txt`` (required): count line, the 40 attribute names, then ``NAME.jpg`` and 40 values of +-1;
* ``list_eval_partition.txt`` (required unless ``split="random"``): ``NAME.jpg {0,1,2}`` = train/val/test;
* ``identity_CelebA.txt`` (or a ``identity_CelebA.subset.txt``), ``list_bbox_celeba.txt``,
  ``list_landmarks_align_celeba.txt``: optional, read by :func:`read_identities`, :func:`read_table`.

torchvision's ``CelebA`` refuses any copy whose annotation files do not have the official MD5; here the
MD5s (:data:`OFFICIAL_MD5`) are checked only when asked (``verify_checksums=True``).

A batch is ``(images, attributes)``: images ``(B, 3, S, S)`` float in [0, 1] (``scale="unit"``) or [-1, 1]
(``scale="symmetric"``), made by a centre crop of ``crop_size`` then a bilinear (antialiased) resize to
``image_size`` (the usual 148 -> 64 of VAEs; DCGAN implementations crop 108); attributes ``(B, 40)``
long in {0, 1} (or the columns named in ``attributes``), names in :attr:`CelebADataModule.attr_names`.

The offline sample (``python -m datamodules.samples celeba --root DIR``) writes procedurally drawn faces
with known attributes in exactly this layout (see :mod:`datamodules.samples.celeba`).

Ground-truth factors (opt-in, ``factor_sampler=true`` or ``"auto"``): only the procedural sample has them.
:meth:`CelebADataModule.setup` then checks that the data are the sample (every attribute row is the image
of the 10 sample factors, and the first three images are the faces those factors render) and exposes
``datamodule.factor_sampler`` (a :class:`SampleFactorSampler`: ``factor_sizes``, ``sample_factors(n, rng)``,
``sample_observations_from_factors(factors, rng)``, the interface the disentanglement-metrics callback
uses). On real CelebA (factors unknown) ``true`` is a clear error and ``"auto"`` logs a warning and leaves
``factor_sampler`` None (the metrics callback then skips, counted).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning import LightningDataModule
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.base import missing_data_error, resolve_data_dir

log = logging.getLogger(__name__)

BASE_FOLDER = "celeba"
IMAGE_FOLDER = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILES = ("identity_CelebA.txt", "identity_CelebA.subset.txt")
BBOX_FILE = "list_bbox_celeba.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"

#: MD5 of the official release's files (the values torchvision checks).
OFFICIAL_MD5 = {
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "identity_CelebA.txt": "32bd1bd63d3c78cd57e08160ec5ed1e2",
    "list_bbox_celeba.txt": "00566efa6fedff7a56946cd1c10f1c16",
    "list_landmarks_align_celeba.txt": "cc24ecafdb5b50baae59b03474781f8c",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
}

#: The 40 attributes in the official column order.
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

Scale = Literal["unit", "symmetric"]
SPLITS = {"train": 0, "val": 1, "test": 2}


class CelebAFormatError(ValueError):
    """An annotation file does not have the official format."""


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path) -> dict[str, bool]:
    """MD5 of each present annotation file against :data:`OFFICIAL_MD5`; raises on a mismatch."""
    result = {}
    for name, expected in OFFICIAL_MD5.items():
        path = folder / name
        if not path.is_file():
            continue
        actual = md5sum(path)
        if actual != expected:
            raise CelebAFormatError(f"{path}: MD5 {actual} is not the official {expected} (pass verify_checksums=false to accept it)")
        result[name] = True
    return result


def read_attributes(path: Path) -> pd.DataFrame:
    """``list_attr_celeba.txt`` as a DataFrame indexed by file name, one int8 column (+-1) per attribute."""
    with open(path, encoding="ascii", newline=None) as f:
        first = f.readline().strip()
        names = f.readline().split()
    if not first.isdigit():
        raise CelebAFormatError(f"{path}: first line should be the row count, got {first[:40]!r}")
    if len(names) != 40:
        raise CelebAFormatError(f"{path}: second line should name 40 attributes, found {len(names)}")
    table = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image", *names], index_col=0, dtype={"image": str})
    if len(table) != int(first):
        raise CelebAFormatError(f"{path}: header says {first} rows, found {len(table)}")
    values = table.to_numpy()
    if not np.isin(values, (-1, 1)).all():
        raise CelebAFormatError(f"{path}: attribute values must be -1 or 1")
    return table.astype(np.int8)


def read_table(path: Path, header_lines: int = 2) -> pd.DataFrame:
    """A CelebA annotation table (bbox, landmarks: count line and header line; partition/identity: none)."""
    if header_lines == 2:
        with open(path, encoding="ascii") as f:
            f.readline()
            names = f.readline().split()
        if names and names[0] == "image_id":
            names = names[1:]
        return pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image", *names], index_col=0)
    table = pd.read_csv(path, sep=r"\s+", header=None, index_col=0, dtype={0: str})
    table.index.name = "image"
    return table


def read_partition(path: Path) -> pd.Series:
    """``list_eval_partition.txt``: file name -> 0 (train), 1 (val), 2 (test)."""
    series = read_table(path, header_lines=0).iloc[:, 0]
    if not series.isin((0, 1, 2)).all():
        raise CelebAFormatError(f"{path}: partition values must be 0, 1 or 2")
    return series


def read_identities(folder: Path) -> pd.Series | None:
    """``identity_CelebA.txt`` (or the ``.subset`` variant): file name -> identity number, or None if absent."""
    for name in IDENTITY_FILES:
        if (folder / name).is_file():
            return read_table(folder / name, header_lines=0).iloc[:, 0]
    return None


def preprocess(images: Tensor, crop_size: int | None = 148, image_size: int = 64, scale: Scale = "unit") -> Tensor:
    """uint8 ``(N, H, W, 3)`` or ``(H, W, 3)`` -> float ``(N, 3, S, S)``: centre crop, antialiased resize, scale.

    The one transform of :class:`CelebADataModule`; the factor sampler of the offline sample uses it too.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if crop_size is not None:
        h, w = x.shape[-2:]
        if crop_size > min(h, w):
            raise ValueError(f"crop_size {crop_size} is larger than the {h}x{w} images")
        top, left = (h - crop_size) // 2, (w - crop_size) // 2
        x = x[..., top : top + crop_size, left : left + crop_size]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    x = x.clamp_(0.0, 1.0)
    return x * 2.0 - 1.0 if scale == "symmetric" else x


def load_image(path: Path) -> Tensor:
    """A JPEG as uint8 ``(H, W, 3)``."""
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())


class CelebADataset(Dataset):
    """Images of ``files`` (decoded on access, or once if ``cache``) with their label rows."""

    def __init__(
        self, folder: Path, files: Sequence[str], labels: Tensor, crop_size: int | None, image_size: int, scale: Scale, cache: bool
    ) -> None:
        self.folder = folder
        self.files = list(files)
        self.labels = labels
        self.crop_size, self.image_size, self.scale = crop_size, image_size, scale
        self.cache: dict[int, Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self.cache is not None and index in self.cache:
            image = self.cache[index]
        else:
            image = preprocess(load_image(self.folder / self.files[index]), self.crop_size, self.image_size, self.scale)[0]
            if self.cache is not None:
                self.cache[index] = image
        return image, self.labels[index]


def sample_factors_from_attributes(attrs: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """The procedural sample's factor indices of every row of ``attrs`` (official columns, +-1), or (None, why not).

    A row is a sample row when its 40 attributes are exactly ``factors_to_attributes`` of the factors read
    back from it (one hair colour set, none for bald faces, ``No_Beard`` set, every other non-factor column -1).
    A bald face's hair colour is not drawn and not labelled: it reads back as the first colour, which renders the
    same face.
    """
    from datamodules.samples import celeba as sample

    missing = [a for a in ATTRIBUTES if a not in attrs.columns]
    if missing:
        return None, f"attribute columns {missing[:3]} are missing"
    values = attrs[list(ATTRIBUTES)].to_numpy()
    factors = np.zeros((len(values), len(sample.FACTOR_NAMES)), dtype=np.int64)
    for j, name in enumerate(sample.FACTOR_NAMES):
        if name == "hair_colour":
            hair = np.stack([values[:, ATTRIBUTES.index(c)] == 1 for c in sample.FACTORS[name]], axis=1)
            bald = values[:, ATTRIBUTES.index("Bald")] == 1
            bad = int((hair.sum(1) != np.where(bald, 0, 1)).sum())
            if bad:
                return None, (f"{bad} rows do not have exactly one of {', '.join(sample.FACTORS[name])} "
                              "(none for Bald faces)")
            factors[:, j] = hair.argmax(1)
        else:
            factors[:, j] = values[:, ATTRIBUTES.index(name)] == 1
    mismatch = int((sample.factors_to_attributes(factors) != values).any(axis=1).sum())
    if mismatch:
        return None, f"{mismatch} of {len(values)} attribute rows vary in columns the sample holds constant"
    return factors, ""


def _render_error(factors: np.ndarray, image: np.ndarray) -> float:
    from datamodules.samples.celeba import render_face

    drawn = np.asarray(render_face(factors), dtype=np.float32)
    return float(np.abs(drawn - image).mean()) if drawn.shape == image.shape else float("inf")


def _nearest_neighbour_error(factors: np.ndarray, image: np.ndarray) -> float:
    """The smallest render error of a face with one factor changed (the hair colour of a bald face changes nothing
    drawn, so it is not a neighbour)."""
    from datamodules.samples.celeba import FACTOR_NAMES, FACTOR_SIZES, hair_drawn

    errors = []
    for j, size in enumerate(FACTOR_SIZES):
        if FACTOR_NAMES[j] == "hair_colour" and not hair_drawn(factors):
            continue
        for value in range(size):
            if value != factors[j]:
                other = factors.copy()
                other[j] = value
                errors.append(_render_error(other, image))
    return min(errors)


class SampleFactorSampler:
    """Ground-truth factors of the procedural CelebA sample, in the metrics callback's interface.

    Factors: :data:`datamodules.samples.celeba.FACTORS` (9 binary attributes and a 4-way hair colour,
    independent and uniform). Observations are rendered (:func:`datamodules.samples.celeba.render_face`,
    JPEG round trip like the files on disk) and transformed exactly as the DataModule's images.
    """

    def __init__(self, image_size: int = 64, crop_size: int | None = 148, scale: Scale = "unit", jpeg: bool = True) -> None:
        from datamodules.samples import celeba as sample

        self.renderer = sample.FaceFactorSampler(image_size=image_size, crop_size=crop_size, scale=scale, jpeg=jpeg)
        self.factor_names: tuple[str, ...] = sample.FACTOR_NAMES
        self.factor_sizes: tuple[int, ...] = sample.FACTOR_SIZES
        self.rendered = 0

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 10)`` factor value indices, each factor uniform and independent (as the sample was drawn)."""
        from datamodules.samples.celeba import sample_factors

        return sample_factors(n, rng)

    def sample_observations_from_factors(self, factors: np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        """Images ``(n, 3, S, S)`` of the faces with these factors (deterministic: ``rng`` is unused)."""
        factors = np.atleast_2d(np.asarray(factors, dtype=np.int64))
        if factors.shape[1] != len(self.factor_sizes) or (factors < 0).any() or (factors >= np.asarray(self.factor_sizes)).any():
            raise ValueError(f"factors must be (n, {len(self.factor_sizes)}) indices below {self.factor_sizes}")
        self.rendered += len(factors)
        return self.renderer.render(factors)


class CelebADataModule(LightningDataModule):
    """CelebA from ``data_dir`` (default ``$PAPERZOO_DATA/celeba``, which holds ``celeba/``).

    Args:
        data_dir: the folder holding ``celeba/`` (torchvision's root), or ``celeba/`` itself.
        batch_size: per-process batch size.
        num_workers: DataLoader workers (JPEGs are decoded in the workers).
        image_size: side of the square output images.
        crop_size: centre crop before resizing (``None``: resize the whole 178x218 image, distorting it).
        scale: ``unit`` ([0, 1]) or ``symmetric`` ([-1, 1], for tanh generators).
        attributes: label columns to return, by name (default: all 40 in the official order).
        split: ``official`` (``list_eval_partition.txt``) or ``random`` (``val_fraction``/``test_fraction``
            of the present images, seeded by ``split_seed``).
        verify_checksums: check the annotation files' MD5 against the official release.
        max_images: use at most this many present images per split (the first in file order).
        cache: keep decoded, transformed images in memory after first use (small sets).
        val_fraction, test_fraction, split_seed: for ``split="random"``.
        factor_sampler: expose the ground-truth :class:`SampleFactorSampler` as ``self.factor_sampler``
            (for disentanglement metrics). Only the procedural sample has known factors: ``true`` raises
            on other data (real CelebA), ``"auto"`` logs a warning there and leaves it None; ``false``: None.
    """

    folder = "celeba"
    sample_name = "celeba"

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        image_size: int = 64,
        crop_size: int | None = 148,
        scale: Scale = "unit",
        attributes: list[str] | None = None,
        split: Literal["official", "random"] = "official",
        verify_checksums: bool = False,
        max_images: int | None = None,
        cache: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        factor_sampler: bool | Literal["auto"] = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if attributes is not None:
            unknown = [a for a in attributes if a not in ATTRIBUTES]
            if unknown:
                raise ValueError(f"unknown CelebA attributes {unknown}; known: {', '.join(ATTRIBUTES)}")
        self.data_dir = resolve_data_dir(data_dir, self.folder)
        self.attr_names: list[str] = list(attributes) if attributes is not None else list(ATTRIBUTES)
        self.datasets: dict[str, CelebADataset] = {}
        self.skipped: int = 0
        """Rows of ``list_attr_celeba.txt`` whose image is absent (counted in :meth:`setup`)."""
        if factor_sampler not in (True, False, "auto"):
            raise ValueError(f"factor_sampler must be true, false or 'auto', got {factor_sampler!r}")
        self.factor_sampler: SampleFactorSampler | None = None
        """Ground-truth factor sampler (set in :meth:`setup` when asked for and the data are the sample)."""

    @property
    def base_folder(self) -> Path:
        """The folder holding ``list_attr_celeba.txt`` (``data_dir/celeba`` or ``data_dir`` itself)."""
        for candidate in (self.data_dir / BASE_FOLDER, self.data_dir):
            if (candidate / ATTR_FILE).is_file():
                return candidate
        raise missing_data_error(
            "CelebA", self.data_dir, self.sample_name,
            "download img_align_celeba.zip and the annotation files from "
            f"https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into {self.data_dir / BASE_FOLDER}",
        )

    @property
    def num_attributes(self) -> int:
        return len(self.attr_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.hparams.image_size, self.hparams.image_size)

    def _present(self, folder: Path, names: pd.Index) -> np.ndarray:
        images = folder / IMAGE_FOLDER
        if not images.is_dir():
            raise missing_data_error("CelebA images", images, self.sample_name, None)
        on_disk = set(os.listdir(images))
        return np.fromiter((name in on_disk for name in names), dtype=bool, count=len(names))

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        folder = self.base_folder
        if hp.verify_checksums:
            checked = verify_checksums(folder)
            log.info("CelebA: official MD5 verified for %s", ", ".join(checked) or "no files")
        attrs = read_attributes(folder / ATTR_FILE)
        present = self._present(folder, attrs.index)
        self.skipped = int((~present).sum())
        if not present.any():
            raise FileNotFoundError(
                f"CelebA: none of the {len(attrs)} images listed in {folder / ATTR_FILE} is in {folder / IMAGE_FOLDER}"
            )
        if self.skipped:
            log.warning(
                "CelebA: %d of %d rows of %s have no image in %s; using the %d present images",
                self.skipped, len(attrs), ATTR_FILE, IMAGE_FOLDER, int(present.sum()),
            )
        attrs = attrs[present]
        if hp.factor_sampler:
            self.factor_sampler = self._make_factor_sampler(folder, attrs)
        if hp.split == "official":
            if not (folder / PARTITION_FILE).is_file():
                raise FileNotFoundError(f"{folder / PARTITION_FILE} is missing; pass split=random to split the images yourself")
            partition = read_partition(folder / PARTITION_FILE).reindex(attrs.index)
            if partition.isna().any():
                raise CelebAFormatError(f"{int(partition.isna().sum())} images have no row in {PARTITION_FILE}")
            part = partition.to_numpy().astype(int)
        else:
            rng = np.random.default_rng(hp.split_seed)
            u = rng.random(len(attrs))
            part = np.where(u < hp.test_fraction, 2, np.where(u < hp.test_fraction + hp.val_fraction, 1, 0))
        labels = torch.from_numpy((attrs[self.attr_names].to_numpy() > 0).astype(np.int64))
        for split, code in SPLITS.items():
            idx = np.flatnonzero(part == code)
            if hp.max_images is not None:
                idx = idx[: hp.max_images]
            self.datasets[split] = CelebADataset(
                folder / IMAGE_FOLDER, attrs.index[idx], labels[idx], hp.crop_size, hp.image_size, hp.scale, hp.cache
            )
        log.info(
            "CelebA: %s train / %s val / %s test images from %s",
            *(len(self.datasets[s]) for s in SPLITS), folder,
        )

    def _make_factor_sampler(self, folder: Path, attrs: pd.DataFrame) -> SampleFactorSampler | None:
        """The sample's factor sampler after checking that ``folder`` holds the procedural sample."""
        hp = self.hparams
        factors, why = sample_factors_from_attributes(attrs)
        if factors is not None:
            # the attributes fit; the first images must also be the faces their factors draw: each is closer to
            # its own rendering than to that of any face differing in one factor (JPEG noise is not enough)
            for i in range(min(3, len(factors))):
                on_disk = load_image(folder / IMAGE_FOLDER / attrs.index[i]).numpy().astype(np.float32)
                own, nearest = _render_error(factors[i], on_disk), _nearest_neighbour_error(factors[i], on_disk)
                if not own <= nearest:
                    factors, why = None, (f"{attrs.index[i]} is not the face its attributes render (mean abs error "
                                          f"{own:.1f}/255, a face with one factor changed: {nearest:.1f})")
                    break
        if factors is None:
            message = (
                f"CelebA: factor_sampler needs the procedural sample (python -m datamodules.samples celeba --root DIR), "
                f"whose images are functions of known factors; {folder} is not it: {why}. Real CelebA has no "
                "ground-truth factors: set factor_sampler=false (or 'auto' to skip the metrics there)"
            )
            if hp.factor_sampler == "auto":
                log.warning("%s; factor_sampler='auto': continuing without one", message)
                return None
            raise ValueError(message)
        log.info("CelebA: ground-truth factor sampler of the procedural sample (%d faces checked)", len(factors))
        return SampleFactorSampler(hp.image_size, hp.crop_size, hp.scale)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError("setup() has not been called")
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise ValueError(f"CelebA: the {split} split has no present images under {self.data_dir}")
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            drop_last=shuffle and len(dataset) >= self.hparams.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
