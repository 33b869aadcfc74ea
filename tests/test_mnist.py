"""MNIST / Fashion-MNIST DataModules and the MNIST sample builder."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import torch

from datamodules import DataNotFoundError, FashionMNISTDataModule, MNISTDataModule
from datamodules.mnist import read_idx
from datamodules.samples import builders
from datamodules.samples import mnist as mnist_sample
from datamodules.samples.__main__ import main as samples_main


def test_sample_builder_writes_official_idx_files(tmp_path: Path, capsys) -> None:
    assert samples_main(["mnist", "--root", str(tmp_path)]) == 0
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(p) for p in raw.iterdir())
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "rb") as f:
        header = f.read(16)
    assert int.from_bytes(header[:4], "big") == 2051  # official magic of image files
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        assert int.from_bytes(f.read(4), "big") == 2049
    train_x, train_y = read_idx(raw / "train-images-idx3-ubyte.gz"), read_idx(raw / "train-labels-idx1-ubyte.gz")
    test_y = read_idx(raw / "t10k-labels-idx1-ubyte.gz")
    assert train_x.shape == (4000, 28, 28) and train_x.dtype == torch.uint8
    assert torch.bincount(train_y).tolist() == [400] * 10  # stratified split of the 5,000 real digits
    assert torch.bincount(test_y).tolist() == [100] * 10


def test_sample_builder_is_reproducible(tmp_path: Path) -> None:
    digest = []
    for run in ("a", "b"):
        files = mnist_sample.build(tmp_path / run, seed=3)
        digest.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in files])
    assert digest[0] == digest[1]
    assert "mnist" in builders()


def test_split_is_seeded_and_classes_are_relabelled(sample_data: Path) -> None:
    a, b = MNISTDataModule(split_seed=1), MNISTDataModule(split_seed=1)
    a.setup("fit"), b.setup("fit")
    assert (len(a.train_set), len(a.val_set)) == (3600, 400)
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    c = MNISTDataModule(split_seed=2)
    c.setup("fit")
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])

    dm = MNISTDataModule(classes=[7, 3])
    dm.setup()
    assert dm.num_classes == 2
    assert sorted(dm.test_set.tensors[1].unique().tolist()) == [0, 1]
    assert len(dm.test_set) == 200
    # relabelled in the given order: 7 -> 0, 3 -> 1
    full = MNISTDataModule(scale="unit")
    full.setup("test")
    sevens = full.test_set.tensors[0][full.test_set.tensors[1] == 7]
    dm_unit = MNISTDataModule(classes=[7, 3], scale="unit")
    dm_unit.setup("test")
    assert torch.equal(dm_unit.test_set.tensors[0][dm_unit.test_set.tensors[1] == 0], sevens)


@pytest.mark.parametrize(("scale", "low", "high"), [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_scales_and_resize(sample_data: Path, scale: str, low: float, high: float) -> None:
    dm = MNISTDataModule(scale=scale, image_size=32)
    dm.setup("test")
    x = dm.test_set.tensors[0]
    assert x.shape[1:] == (1, 32, 32)
    assert x.min() >= low - 1e-6 and x.max() <= high + 1e-6
    assert x.min() < low + 0.05 and x.max() > high - 0.05


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        MNISTDataModule(data_dir=str(tmp_path / "nowhere")).setup("fit")
    message = str(err.value)
    assert "--data.download true" in message
    assert "python -m datamodules.samples mnist" in message
    with pytest.raises(DataNotFoundError) as err:
        FashionMNISTDataModule(data_dir=str(tmp_path / "nowhere")).setup("fit")
    assert "FashionMNIST" in str(err.value) and "datamodules.samples" not in str(err.value)


def test_truncated_idx_file_is_a_clear_error(tmp_path: Path) -> None:
    files = mnist_sample.build(tmp_path)
    images = files[0]
    data = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        MNISTDataModule(data_dir=str(tmp_path / "mnist")).setup("fit")


def test_invalid_classes_rejected() -> None:
    with pytest.raises(ValueError, match="classes"):
        MNISTDataModule(classes=[1, 1])
    with pytest.raises(ValueError, match="classes"):
        MNISTDataModule(classes=[10])


@pytest.mark.realdata
def test_real_mnist_counts(shared_data: Path) -> None:
    dm = MNISTDataModule(data_dir=str(shared_data / "mnist"), val_fraction=0.0, scale="unit")
    dm.setup()
    assert len(dm.train_set) == 60_000 and len(dm.test_set) == 10_000
    assert torch.bincount(dm.train_set.tensors[1]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(dm.test_set.tensors[1]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert dm.train_set.tensors[0].mean().item() * 255 == pytest.approx(33.318, abs=1e-3)


@pytest.mark.realdata
def test_real_fashion_mnist_counts(shared_data: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(shared_data / "fashion_mnist"), val_fraction=0.1)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 60_000 and len(dm.test_set) == 10_000
    assert torch.bincount(dm.test_set.tensors[1]).tolist() == [1000] * 10
    labels = torch.cat([dm.train_set.tensors[1], dm.val_set.tensors[1]])
    assert torch.bincount(labels).tolist() == [6000] * 10
