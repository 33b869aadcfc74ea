"""dSprites: generator, official-layout sample, DataModule over every source, factor sampler, real-data fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import DataNotFoundError
from datamodules.dsprites import DSpritesDataModule, load_npz
from datamodules.samples import dsprites as gen


def test_factor_definition_and_index() -> None:
    classes = gen.all_classes()
    assert len(classes) == 737_280 == int(np.prod(gen.FACTOR_SIZES))
    assert (gen.factor_index(classes) == np.arange(737_280)).all()  # official order
    assert gen.FACTOR_VALUES["orientation"][-1] == pytest.approx(2 * np.pi)
    assert gen.FACTOR_VALUES["scale"].tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])


def test_render_geometry() -> None:
    # centred square at scale 1: 19 x 19 pixels (as in the official file); scale 0.5: 9 x 9
    img = gen.render_values(np.array([[1, 1.0, 0.0, 16 / 31, 16 / 31], [1, 0.5, 0.0, 16 / 31, 16 / 31]]))
    assert img[0].sum() == 361 and img[1].sum() == 81
    ys, xs = np.nonzero(img[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (23, 41, 23, 41)
    # posX moves columns, posY rows; rotation by 2 pi is the identity
    a, b = gen.render_values(np.array([[3, 0.8, 1.0, 0.0, 0.5], [3, 0.8, 1.0 + 2 * np.pi, 0.0, 0.5]]))
    assert (a == b).all() and np.nonzero(a)[1].mean() < 20
    with pytest.raises(ValueError, match="shape values"):
        gen.render_values(np.array([[4, 1.0, 0.0, 0.5, 0.5]]))


def test_sample_builder_writes_official_layout(tmp_path: Path) -> None:
    (path,) = gen.build(tmp_path, subsample=8)
    assert path == tmp_path / "dsprites" / gen.OFFICIAL_FILE
    with np.load(path, allow_pickle=True, encoding="latin1") as f:
        assert set(f.files) >= {"imgs", "latents_classes", "latents_values", "metadata"}
        assert f["imgs"].dtype == np.uint8 and f["imgs"].shape == (1440, 64, 64) and set(np.unique(f["imgs"])) == {0, 1}
        assert f["latents_classes"].shape == (1440, 6) and (f["latents_values"][:, 0] == 1).all()
        assert tuple(f["metadata"].item()["latents_sizes"]) == (1, 3, 6, 40, 32, 32)
    imgs, classes = load_npz(path)
    assert (imgs == gen.render_classes(classes)).all()


def test_datamodule_sources_and_factor_sampler(tmp_path: Path) -> None:
    gen.build(tmp_path, subsample=8)
    dm = DSpritesDataModule(data_dir=str(tmp_path / "dsprites"), batch_size=16, val_fraction=0.1)
    dm.setup("fit")
    assert dm.source == "official" and len(dm.train_set) + len(dm.val_set) == 1440
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 64, 64) and x.dtype == torch.float32 and y.shape == (16, 5)
    # each image is the rendering of its factors
    assert torch.equal(x[:, 0].to(torch.uint8), torch.from_numpy(gen.render_classes(y.numpy())))
    sampler = dm.factor_sampler
    assert sampler.factor_sizes == [3, 6, 5, 4, 4]  # the sub-grid of the file
    rng = np.random.default_rng(0)
    f = sampler.sample_factors(50, rng)
    f[:, 1] = f[0, 1]  # fix one factor, observe
    obs = sampler.sample_observations_from_factors(f, rng)
    assert obs.shape == (50, 1, 64, 64) and sampler.rendered == 0  # all read from the file
    # render source: no file at all
    dm = DSpritesDataModule(source="render", data_dir=str(tmp_path / "none"), batch_size=8)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 64, 64) and len(dm.train_set) + len(dm.val_set) == 737_280


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="python -m datamodules.samples dsprites"):
        DSpritesDataModule(data_dir=str(tmp_path)).setup()


@pytest.mark.realdata
@pytest.mark.parametrize("name", gen.SUBSET_FILES)
def test_generator_fidelity_on_real_subsets(shared_data: Path, name: str) -> None:
    """Rendered images from the real latents overlap the real images: IoU >= 0.95 per shape (300 each)."""
    imgs, classes = load_npz(shared_data / "dsprites" / name)
    rng = np.random.default_rng(0)
    for shape in range(3):
        idx = rng.choice(np.flatnonzero(classes[:, 0] == shape), 300, replace=False)
        iou = gen.iou(gen.render_classes(classes[idx]), imgs[idx])
        assert iou.mean() >= 0.95, (gen.SHAPE_NAMES[shape], iou.mean())


@pytest.mark.realdata
def test_datamodule_reads_real_subsets(shared_data: Path) -> None:
    for source, n, sizes in (("downsampled", 46_080, [3, 6, 10, 16, 16]), ("subset", 20_000, [3, 6, 40, 32, 32])):
        dm = DSpritesDataModule(data_dir=str(shared_data / "dsprites"), source=source)
        dm.setup()
        assert len(dm.train_set) + len(dm.val_set) == n and dm.factor_sampler.factor_sizes == sizes
        x, y = dm.train_set[0]
        assert x.shape == (1, 64, 64) and set(torch.unique(x).tolist()) <= {0.0, 1.0}
    # the downsampled grid is complete: metrics read only real images
    dm = DSpritesDataModule(data_dir=str(shared_data / "dsprites"), source="downsampled")
    dm.setup()
    f = dm.factor_sampler.sample_factors(200, np.random.default_rng(0))
    dm.factor_sampler.sample_observations_from_factors(f)
    assert dm.factor_sampler.rendered == 0
