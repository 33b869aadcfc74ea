"""GAN modules (MLP GAN, DCGAN, WGAN-GP, SN-DCGAN) through the real CLI: toy scores, FID, image grids, EWC."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.gan import GAN
from metrics.generative import mixture_centers, mixture_inception_score, mixture_mode_stats, mixture_symmetric_kl
from tests.helpers import CONFIGS, QUIET, out_args, plugin_tags, run_cli, scalars, version_dirs

TINY = ["--trainer.max_epochs=1", "--trainer.log_every_n_steps=1", *QUIET]


def test_mixture_metrics_on_true_and_collapsed_samples() -> None:
    c, std = mixture_centers(), math.sqrt(0.02)
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, 8, (10_000,), generator=g)
    true = c[k].float() + std * torch.randn(10_000, 2, generator=g)
    two = c[k % 2].float() + std * torch.randn(10_000, 2, generator=g)
    assert float(mixture_inception_score(true, c, std)) == pytest.approx(8.0, abs=0.02)  # paper: ~7.87
    assert float(mixture_inception_score(two, c, std)) == pytest.approx(2.0, abs=0.02)
    assert float(mixture_symmetric_kl(true, c, std)) < 0.2 < 5 < float(mixture_symmetric_kl(two, c, std))
    assert [int(v) if i == 0 else round(float(v), 2) for i, v in enumerate(mixture_mode_stats(two, c, std))] == [2, 0.99]


@pytest.mark.parametrize("loss, sn", [("gan", False), ("wgan-gp", False), ("hinge", True)])
def test_variants_train(loss: str, sn: bool) -> None:
    model = GAN(arch="dcgan", loss=loss, spectral_norm=sn, image_size=32, channels=1, base_channels=8, latent_dim=16,
                n_critic=2 if loss == "wgan-gp" else 1, fid_network="none", num_grid=4)
    data = DataLoader(TensorDataset(torch.rand(16, 1, 32, 32) * 2 - 1), batch_size=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, data)
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p)]
    # both players updated; the output bias has gradient exactly 0 under the Wasserstein loss (and under the
    # hinge loss while every margin is active: -1 from the real half, +1 from the fake half)
    out_bias = f"discriminator.net.{len(model.discriminator.net) - 1}.bias"
    assert unchanged == ([out_bias] if loss != "gan" else [])
    assert model.image_grids()["samples/fixed_noise"].shape == (4, 1, 32, 32)
    if sn:
        assert any("parametrizations" in n for n, _ in model.discriminator.named_parameters())


def test_ewc_gan_gaussians_logs_scores_and_penalty(tmp_path: Path) -> None:
    run_cli(["fit", "--config", str(CONFIGS / "ewc_gan_gaussians.yaml"), *TINY, *out_args(tmp_path),
             "--trainer.max_steps=60", "--trainer.val_check_interval=15", "--data.init_args.train_size=4096",
             "--data.init_args.batch_size=128", "--model.init_args.eval_samples=2000",
             "--trainer.callbacks.alpha=5"])
    (log_dir,) = version_dirs(tmp_path, "ewc_gan_gaussians")
    logged = scalars(log_dir)
    for key in ("train/d_loss", "train/g_loss", "train/ewc_penalty", "val/icp", "val/sym_kl", "val/modes", "val/hq_fraction"):
        assert key in logged, key
    assert all(v >= 0 for _, v in logged["train/ewc_penalty"])
    assert 1.0 <= logged["val/icp"][-1][1] <= 8.0
    assert len(logged["val/icp"]) == 2  # 30 iterations, scored every 15
    assert "samples/histogram" in plugin_tags(log_dir, "images")
    ckpt = torch.load(tmp_path / "ewc_gan_gaussians" / "checkpoints" / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("EWCPenalty")]
    # 30 D steps / alpha 5 = 6 tasks; the deferred Fisher of the 6th comes from step 31 (pending in the checkpoint)
    assert state["tasks"] == 5 and state["pending"] and len(state["S"]) == 6  # 3 Linear layers x (weight, bias)


def test_ewc_gan_mnist_logs_samples_and_fid(sample_data: Path, tmp_path: Path) -> None:
    run_cli(["fit", "--config", str(CONFIGS / "ewc_gan_mnist.yaml"), *TINY, *out_args(tmp_path),
             "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2", "--data.init_args.batch_size=32",
             "--model.init_args.base_channels=16", "--model.init_args.fid_weights=missing.ckpt", "--trainer.callbacks.alpha=2"])
    (log_dir,) = version_dirs(tmp_path, "ewc_gan_mnist")
    logged = scalars(log_dir)
    assert logged["val/fid_random"][-1][1] > 0 and "train/ewc_penalty" in logged
    assert "samples/fixed_noise" in plugin_tags(log_dir, "images")


@pytest.mark.slow
def test_gan_mnist_classifier_fid(sample_data: Path, tmp_path: Path) -> None:
    """With the foundation's classifier as feature network: a classifier-feature FID and IS."""
    run_cli(["fit", "--config", str(CONFIGS / "classifier_mnist.yaml"), *TINY, *out_args(tmp_path),
             "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=1"])
    clf = tmp_path / "classifier_mnist" / "checkpoints" / "last.ckpt"
    run_cli(["fit", "--config", str(CONFIGS / "gan_mnist.yaml"), *TINY, *out_args(tmp_path),
             "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--data.init_args.batch_size=32",
             "--model.init_args.base_channels=16", f"--model.init_args.fid_weights={clf}"])
    (log_dir,) = version_dirs(tmp_path, "gan_mnist")
    logged = scalars(log_dir)
    assert logged["val/fid"][-1][1] > 0 and 1.0 <= logged["val/is"][-1][1] <= 10.0
    assert "samples/fixed_noise" in plugin_tags(log_dir, "images")


def _random_inception_file(path: Path) -> Path:
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    return path


def test_inception_weights_file_loads(tmp_path: Path) -> None:
    """inception_v3_features loads a torchvision Inception-v3 state dict file: its weights, 2048-d pooled features."""
    from metrics.generative import inception_v3_features

    weights = _random_inception_file(tmp_path / "inception_v3_random.pth")
    state = torch.load(weights, weights_only=True)
    net = inception_v3_features(str(weights))
    assert torch.equal(net.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert net.num_features == 2048 and isinstance(net.fc, torch.nn.Identity)
    head = inception_v3_features(str(weights), logits=True)
    assert head.num_features == 1000 and torch.equal(head.fc.weight, state["fc.weight"])
    with torch.no_grad():
        out = net.eval()(torch.rand(2, 3, 75, 75))  # the smallest input Inception-v3 takes (FID resizes to 299)
    assert out.shape == (2, 2048) and bool(torch.isfinite(out).all())


@pytest.mark.slow
def test_inception_weights_file_gives_finite_fid(tmp_path: Path) -> None:
    """fid_network=inception end to end (299 px Inception-v3 from a file, randomly initialised): finite FID and IS."""
    weights = _random_inception_file(tmp_path / "inception_v3_random.pth")
    model = GAN(arch="dcgan", image_size=32, channels=1, base_channels=8, latent_dim=16, fid_network="inception",
                fid_weights=str(weights), fid_samples=3, num_grid=4)
    assert model.fid_kind == "inception"
    data = DataLoader(TensorDataset(torch.rand(4, 1, 32, 32) * 2 - 1), batch_size=3)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).test(model, data, verbose=False)
    assert isinstance(model._metrics["test"]["fid"].inception.net.fc, torch.nn.Identity)  # 2048-d pooled features
    assert set(model.last_scores) == {"fid", "is"}
    assert math.isfinite(model.last_scores["fid"]) and model.last_scores["fid"] > 0
    assert 1.0 <= model.last_scores["is"] <= 1000.0  # 3 images, 1000 random-network classes
    with pytest.raises(FileNotFoundError, match="Inception-v3 state dict"):
        GAN(arch="dcgan", image_size=32, fid_network="inception", fid_weights=str(tmp_path / "none.pth"))._build_image_metrics()


def test_ewc_gan_celeba_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datamodules.samples import celeba

    celeba.build(tmp_path / "data", num_images=40)
    monkeypatch.setenv("PAPERZOO_DATA", str(tmp_path / "data"))
    run_cli(["fit", "--config", str(CONFIGS / "ewc_gan_celeba.yaml"), *TINY, *out_args(tmp_path),
             "--trainer.limit_train_batches=3", "--data.init_args.batch_size=8", "--model.init_args.base_channels=8",
             "--trainer.callbacks.alpha=1"])
    (log_dir,) = version_dirs(tmp_path, "ewc_gan_celeba")
    logged = scalars(log_dir)
    assert logged["val/fid_random"][-1][1] > 0 and "train/ewc_penalty" in logged
    assert "samples/fixed_noise" in plugin_tags(log_dir, "images")


@pytest.mark.realdata
@pytest.mark.slow
def test_ewc_gan_celeba_real_images(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(shared_data))
    run_cli(["fit", "--config", str(CONFIGS / "ewc_gan_celeba.yaml"), *TINY, *out_args(tmp_path),
             "--trainer.limit_train_batches=2", "--data.init_args.batch_size=16", "--model.init_args.base_channels=8"])
    logged = scalars(version_dirs(tmp_path, "ewc_gan_celeba")[0])
    assert logged["val/fid_random"][-1][1] > 0
