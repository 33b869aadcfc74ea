"""CelebA DataModule (official layout, partial image folders, checksums on request) and its offline sample."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import DataNotFoundError
from datamodules.celeba import ATTRIBUTES, CelebADataModule, CelebAFormatError, read_attributes, read_table
from datamodules.samples import celeba as sample


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("celeba_data")
    sample.build(root, seed=0, num_images=60)
    return root


def test_sample_files_have_official_format(celeba_root: Path) -> None:
    folder = celeba_root / "celeba" / "celeba"
    raw = (folder / "list_attr_celeba.txt").read_bytes()
    lines = raw.split(b"\r\n")
    assert lines[0] == b"60" and lines[1].decode().split() == list(ATTRIBUTES) and lines[1].endswith(b" ")
    assert lines[2].startswith(b"000001.jpg ") and len(lines[2].split()) == 41
    attrs = read_attributes(folder / "list_attr_celeba.txt")
    assert attrs.shape == (60, 40)
    marks = read_table(folder / "list_landmarks_align_celeba.txt")
    assert list(marks.columns)[:2] == ["lefteye_x", "lefteye_y"] and len(marks) == 60
    assert len(read_table(folder / "list_bbox_celeba.txt")) == 60
    from PIL import Image

    with Image.open(folder / "img_align_celeba" / "000001.jpg") as im:
        assert im.size == (178, 218) and im.mode == "RGB"


def test_attributes_are_the_known_factors(celeba_root: Path) -> None:
    factors = sample.sample_factors(60, np.random.default_rng(0))
    attrs = read_attributes(celeba_root / "celeba" / "celeba" / "list_attr_celeba.txt")
    for j, name in enumerate(sample.FACTOR_NAMES):
        if name == "hair_colour":  # labelled where hair is drawn: not on bald faces (CelebA's convention)
            drawn = factors[:, sample.FACTOR_NAMES.index("Bald")] == 0
            for value, column in enumerate(sample.FACTORS[name]):
                assert ((attrs[column].to_numpy() == 1) == ((factors[:, j] == value) & drawn)).all()
        else:
            assert ((attrs[name].to_numpy() == 1) == (factors[:, j] == 1)).all()
    # independently sampled: no factor pair is strongly correlated
    corr = np.corrcoef(factors.T)
    assert np.abs(corr - np.eye(len(sample.FACTOR_NAMES))).max() < 0.5


def test_factor_sampler_renders_distinct_faces_per_factor() -> None:
    gt = sample.FaceFactorSampler(image_size=32, crop_size=148)
    base = np.zeros(len(sample.FACTOR_NAMES), dtype=np.int64)
    x0 = gt.render(base)
    assert x0.shape == (1, 3, 32, 32) and 0.0 <= float(x0.min()) and float(x0.max()) <= 1.0
    for j in range(len(base)):
        if j == sample.FACTOR_NAMES.index("hair_colour"):
            continue  # visible only with hair; checked below
        other = base.copy()
        other[j] = 1
        assert (gt.render(other) - x0).abs().max() > 0.05, sample.FACTOR_NAMES[j]
    hair = base.copy()
    hair[-1] = 1
    assert (gt.render(hair) - x0).abs().max() > 0.05
    # the hair colour shows under a hat (so it stays labelled) and not at all on a bald face (not labelled)
    hat, bald = sample.FACTOR_NAMES.index("Wearing_Hat"), sample.FACTOR_NAMES.index("Bald")
    hatted = np.stack([base, hair]); hatted[:, hat] = 1
    assert (gt.render(hatted[1]) - gt.render(hatted[0])).abs().max() > 0.05
    bald_faces = np.stack([base, hair]); bald_faces[:, bald] = 1
    assert torch.equal(gt.render(bald_faces[1]), gt.render(bald_faces[0]))
    hair_columns = [list(sample._attr_columns()).index(c) for c in sample.FACTORS["hair_colour"]]
    assert (sample.factors_to_attributes(bald_faces)[:, hair_columns] == -1).all()
    assert (sample.factors_to_attributes(hatted)[:, hair_columns] == 1).sum() == 2
    assert torch.equal(gt.render(base), x0)  # deterministic


def test_datamodule_batches(celeba_root: Path) -> None:
    dm = CelebADataModule(data_dir=str(celeba_root / "celeba"), batch_size=8, scale="symmetric", image_size=64)
    dm.setup("fit")
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [48, 6, 6]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 64, 64) and y.shape == (8, 40) and y.dtype == torch.long
    assert -1.0 <= float(x.min()) < 0.0 < float(x.max()) <= 1.0
    assert set(y.unique().tolist()) <= {0, 1}
    assert dm.skipped == 0
    picked = CelebADataModule(data_dir=str(celeba_root / "celeba"), attributes=["Smiling", "Male"], image_size=32)
    picked.setup("fit")
    _, y2 = picked.datasets["train"][0]
    assert y2.shape == (2,)
    with pytest.raises(ValueError, match="unknown CelebA attributes"):
        CelebADataModule(attributes=["Smiles"])


def test_partial_image_folder_counts_skips(celeba_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "celeba" / "celeba"
    shutil.copytree(celeba_root / "celeba" / "celeba", folder)
    for i in range(1, 11):
        (folder / "img_align_celeba" / f"{i:06d}.jpg").unlink()
    dm = CelebADataModule(data_dir=str(tmp_path / "celeba"))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.skipped == 10 and len(dm.datasets["train"]) == 38
    assert "10 of 60 rows" in caplog.text
    for path in (folder / "img_align_celeba").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match="none of the 60 images"):
        CelebADataModule(data_dir=str(tmp_path / "celeba")).setup("fit")


def test_checksums_only_when_asked(celeba_root: Path, tmp_path: Path) -> None:
    CelebADataModule(data_dir=str(celeba_root / "celeba")).setup("fit")  # sample files accepted by default
    with pytest.raises(CelebAFormatError, match="not the official"):
        CelebADataModule(data_dir=str(celeba_root / "celeba"), verify_checksums=True).setup("fit")
    with pytest.raises(DataNotFoundError, match="python -m datamodules.samples celeba"):
        CelebADataModule(data_dir=str(tmp_path / "nothing")).setup("fit")


@pytest.mark.realdata
def test_real_partial_celeba(shared_data: Path) -> None:
    dm = CelebADataModule(data_dir=str(shared_data / "celeba"), verify_checksums=True, batch_size=16)
    dm.setup("fit")
    assert dm.skipped == 202_599 - 600
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [420, 90, 90]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 64, 64) and y.shape == (16, 40)


def test_factor_sampler_of_the_sample_matches_its_images(celeba_root: Path) -> None:
    assert CelebADataModule(data_dir=str(celeba_root / "celeba")).factor_sampler is None  # opt-in
    dm = CelebADataModule(data_dir=str(celeba_root / "celeba"), image_size=32, factor_sampler=True)
    dm.setup("fit")
    gt = dm.factor_sampler
    assert gt is not None and tuple(gt.factor_sizes) == sample.FACTOR_SIZES
    f = gt.sample_factors(500, np.random.default_rng(0))
    assert f.shape == (500, 10) and (f.min(0) == 0).all() and (f.max(0) == np.asarray(sample.FACTOR_SIZES) - 1).all()
    # the rendered observation of an image's factors is that image (same JPEG, same transform)
    x, _ = dm.datasets["train"][0]
    attrs = read_attributes(celeba_root / "celeba" / "celeba" / "list_attr_celeba.txt")
    first = sample.sample_factors(60, np.random.default_rng(0))[attrs.index.get_loc(dm.datasets["train"].files[0])]
    rendered = gt.sample_observations_from_factors(first[None], np.random.default_rng(1))
    assert rendered.shape == (1, 3, 32, 32)
    assert float((rendered[0] - x).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="indices below"):
        gt.sample_observations_from_factors(np.full((1, 10), 5))


def test_factor_sampler_refuses_data_that_is_not_the_sample(celeba_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "celeba" / "celeba"
    shutil.copytree(celeba_root / "celeba" / "celeba", folder)
    path = folder / "list_attr_celeba.txt"
    lines = path.read_bytes().split(b"\r\n")
    row = lines[5].split()
    row[1 + ATTRIBUTES.index("Attractive")] = b"1"  # a column the sample keeps constant
    lines[5] = b" ".join(row)
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(ValueError, match="procedural sample.*1 of 60 attribute rows"):
        CelebADataModule(data_dir=str(tmp_path / "celeba"), factor_sampler=True).setup("fit")
    auto = CelebADataModule(data_dir=str(tmp_path / "celeba"), factor_sampler="auto")
    with caplog.at_level(logging.WARNING):
        auto.setup("fit")
    assert auto.factor_sampler is None and "continuing without one" in caplog.text
    assert len(auto.datasets["train"]) == 48  # the data themselves still load
    # attributes fit but the image is not the face they draw
    shutil.copytree(celeba_root / "celeba" / "celeba", tmp_path / "b" / "celeba", dirs_exist_ok=True)
    images = tmp_path / "b" / "celeba" / "img_align_celeba"
    shutil.copy(images / "000002.jpg", images / "000001.jpg")
    factors = sample.sample_factors(60, np.random.default_rng(0))
    if (factors[0] != factors[1]).any():
        with pytest.raises(ValueError, match="is not the face its attributes render"):
            CelebADataModule(data_dir=str(tmp_path / "b"), factor_sampler=True).setup("fit")
    with pytest.raises(ValueError, match="true, false or 'auto'"):
        CelebADataModule(factor_sampler="yes")  # type: ignore[arg-type]


@pytest.mark.realdata
def test_real_celeba_has_no_factor_sampler(shared_data: Path) -> None:
    with pytest.raises(ValueError, match="Real CelebA has no ground-truth factors"):
        CelebADataModule(data_dir=str(shared_data / "celeba"), factor_sampler=True).setup("fit")
    dm = CelebADataModule(data_dir=str(shared_data / "celeba"), factor_sampler="auto")
    dm.setup("fit")
    assert dm.factor_sampler is None and len(dm.datasets["train"]) == 420
