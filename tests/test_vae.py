"""The VAE module: every dSprites config trains, FactorVAE's manual optimisation, grids/GIFs, metrics callback, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Trainer

from callbacks.disentanglement import DisentanglementMetrics, evaluate_disentanglement
from datamodules.dsprites import DSpritesDataModule
from datamodules.samples import dsprites as gen
from lightning_modules.vae import VAE
from lightning_modules.vae_losses import BetaTCTerm, CapacityTerm, FactorVAETerm, IFCVAETerm, KLTerm
from tests.helpers import CONFIGS, QUIET, out_args, run_cli, scalars, version_dirs

DSPRITES_CONFIGS = sorted(p.name for p in CONFIGS.glob("*_dsprites.yaml") if p.name.split("_")[0] in
                          {"vae", "betavae", "betatcvae", "factorvae", "dipvae", "infovae", "cvae", "ifcvae"})
SMALL = ["--model.init_args.arch=mlp", '--model.init_args.arch_kwargs={"hidden": [64]}']


@pytest.fixture(scope="module")
def dsprites_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dsprites_data")
    gen.build(root, subsample=8)  # 1,440 images on a regular sub-grid, official layout
    return root


def _dm(root: Path, batch_size: int = 32) -> DSpritesDataModule:
    return DSpritesDataModule(data_dir=str(root / "dsprites"), batch_size=batch_size, val_fraction=0.1)


def _small_vae(**kwargs) -> VAE:
    return VAE(arch="mlp", arch_kwargs={"hidden": [64]}, latent_dim=4, **kwargs)


@pytest.mark.parametrize("config", DSPRITES_CONFIGS)
def test_every_dsprites_config_trains(config: str, dsprites_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(dsprites_root))
    cli = run_cli(["fit", "--config", str(CONFIGS / config), *SMALL, *QUIET, *out_args(tmp_path),
                   "--trainer.fast_dev_run=2", "--data.batch_size=16"])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/recon"] > 0
    if cli.model.automatic_optimization:  # FactorVAE: 2 optimizer steps per batch end fast_dev_run before validation
        assert torch.isfinite(metrics["val/loss"]) and metrics["val/recon"] > 0


def test_factorvae_updates_vae_and_discriminator(dsprites_root: Path) -> None:
    model = _small_vae(losses=[KLTerm(1.0), FactorVAETerm(gamma=10.0, latent_dim=4, hidden=32, layers=3)])
    assert not model.automatic_optimization
    disc0 = [p.detach().clone() for p in model.losses[1].discriminator.parameters()]
    enc0 = [p.detach().clone() for p in model.encoder.parameters()]
    trainer = Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, _dm(dsprites_root))
    assert all(not torch.equal(a, b) for a, b in zip(disc0, model.losses[1].discriminator.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(enc0, model.encoder.parameters()))
    opt_vae, opt_d = trainer.optimizers
    vae_ids = {id(p) for g in opt_vae.param_groups for p in g["params"]}
    assert not vae_ids & {id(p) for p in model.losses[1].discriminator.parameters()}  # separate optimizers
    # Lightning counts both optimizers' steps: max_steps=3 stops after 2 batches
    assert opt_d.param_groups[0]["lr"] == 1e-4 and trainer.global_step == 4
    assert int(opt_vae.state[opt_vae.param_groups[0]["params"][0]]["step"]) == 2
    assert 0.0 <= float(trainer.callback_metrics["train/factorvae_disc_acc"]) <= 1.0


def test_capacity_and_tc_terms_see_step_and_dataset_size(dsprites_root: Path) -> None:
    model = _small_vae(losses=[BetaTCTerm(beta=2.0), CapacityTerm(gamma=10.0, c_max=5.0, c_stop_steps=4)])
    trainer = Trainer(max_steps=4, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    dm = _dm(dsprites_root)
    trainer.fit(model, dm)
    assert model.dataset_size == len(dm.train_set) == 1296
    assert float(trainer.callback_metrics["train/capacity"]) == pytest.approx(3.75)  # step 3 of 4: 5 * 3/4


def test_image_grids_and_traversal_gif(dsprites_root: Path, tmp_path: Path) -> None:
    model = _small_vae(num_fixed=2, traversal_steps=5)
    trainer = Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, _dm(dsprites_root))
    grids = model.image_grids()
    assert grids["recon"][0].shape == (4, 1, 64, 64)
    assert grids["samples"][0].shape == (64, 1, 64, 64)
    trav, nrow = grids["traversal/0"]
    assert trav.shape == (4 * 5, 1, 64, 64) and nrow == 5
    # row d of the traversal changes only latent d: the middle column (value 0) differs between rows
    x, _ = model._fixed_inputs()
    t = model.traversal(x[:1])
    assert t.shape == (4, 5, 1, 64, 64) and not torch.allclose(t[:, 0], t[:, -1])
    path = model.save_traversal_gif(tmp_path / "t.gif")
    import imageio.v2 as imageio

    frames = imageio.mimread(path)
    assert len(frames) == 2 * 5 - 2 and frames[0].shape[:2] == (2 * 64, 4 * 64)


def test_ifcvae_forced_latents_predict_their_attribute(dsprites_root: Path) -> None:
    """IFCVAE on dSprites (scale as the known attribute, 6 classes): after 200 steps the 6 forced latents predict it
    on held-out images, the 4 other latents (cleared by the adversary) barely do."""
    from functools import partial

    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    dm = DSpritesDataModule(data_dir=str(dsprites_root / "dsprites"), batch_size=64, val_fraction=0.2)
    term = IFCVAETerm(attr_factors=[1], attr_classes=[6], latent_dim=10, aux_weight=100.0, adv_weight=10.0, hidden=64)
    model = VAE(arch="mlp", arch_kwargs={"hidden": [128]}, latent_dim=10, losses=[KLTerm(1.0), term],
                optimizer=partial(torch.optim.Adam, lr=2e-3))
    assert term.k == 6 and not model.automatic_optimization
    trainer = Trainer(max_steps=2 * 200, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, dm)  # 200 VAE steps + 200 adversary steps

    def codes(ds):
        x, y = zip(*(ds[i] for i in range(len(ds))))
        return model.representation(torch.stack(x)).numpy(), torch.stack(y)[:, 1].numpy()

    (m_train, y_train), (m_val, y_val) = codes(dm.train_set), codes(dm.val_set)
    aux_acc = float((term.predict(torch.as_tensor(m_val))[0].argmax(1).numpy() == y_val).mean())
    forced = LogisticRegression(max_iter=1000).fit(m_train[:, :6], y_train).score(m_val[:, :6], y_val)
    rest = LogisticRegression(max_iter=1000).fit(m_train[:, 6:], y_train).score(m_val[:, 6:], y_val)
    # measured: aux 0.44, forced 0.49, rest 0.20 (chance 1/6)
    assert aux_acc >= 0.35 and forced >= 0.35, (aux_acc, forced)
    assert rest <= forced - 0.15, (forced, rest)


def test_conditional_vae_uses_labels(dsprites_root: Path) -> None:
    model = _small_vae(cond_factors=[0], cond_classes=[3])
    x = torch.rand(2, 1, 64, 64)
    r0 = model.representation(x, torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
    r1 = model.representation(x, torch.tensor([[2, 0, 0, 0, 0], [2, 0, 0, 0, 0]]))
    assert not torch.allclose(r0, r1)
    with pytest.raises(ValueError, match="conditional"):
        model.condition(None)


def test_metrics_callback_logs_every_n_epochs_and_resumes(dsprites_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(dsprites_root))
    config = str(CONFIGS / "betatcvae_dsprites.yaml")
    override = tmp_path / "metrics.yaml"
    override.write_text(
        "trainer:\n  callbacks:\n    - class_path: DisentanglementMetrics\n      init_args:\n"
        "        every_n_epochs: 1\n        scale: 0.01\n        metrics: [mig, factor_vae, irs]\n"
    )
    common = ["fit", "--config", config, "--config", str(override), *SMALL, *QUIET, *out_args(tmp_path),
              "--data.batch_size=64", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    cli = run_cli([*common, "--trainer.max_epochs=1"])
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, DisentanglementMetrics) and c.scale == 0.01)
    assert cb.evaluations == 1 and set(cb.last_scores) == {"mig", "factor_vae", "irs"}
    logged = scalars(version_dirs(tmp_path, "metrics")[-1])  # experiment named after the last config
    assert {"val/disent/mig", "val/disent/factor_vae", "val/disent/irs"} <= set(logged)
    assert 0.0 <= logged["val/disent/factor_vae"][-1][1] <= 1.0
    # the values equal a fresh evaluation of the saved weights (same seeds)
    model = cli.model
    dm = cli.datamodule
    again, _ = evaluate_disentanglement(model, dm.factor_sampler, ("mig", "factor_vae", "irs"), scale=0.01)
    assert again == pytest.approx(cb.last_scores, abs=1e-9)
    cli2 = run_cli([*common, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    cb2 = next(c for c in cli2.trainer.callbacks if isinstance(c, DisentanglementMetrics) and c.scale == 0.01)
    assert cb2.evaluations == 2  # restored 1 from the checkpoint, then one more


@pytest.mark.realdata
@pytest.mark.parametrize("config", ["betatcvae_celeba.yaml", pytest.param("factorvae_celeba.yaml", marks=pytest.mark.slow)])
def test_celeba_configs_run_on_real_faces(config: str, shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(shared_data))
    cli = run_cli(["fit", "--config", str(CONFIGS / config), *QUIET, *out_args(tmp_path),
                   "--trainer.fast_dev_run=1", "--data.batch_size=4", "--data.cache=false", *_EVERY_EPOCH])
    assert cli.model.encoder.in_channels == 3 and sum(map(len, cli.datamodule.datasets.values())) == 600  # the real faces
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    grids = cli.model.image_grids()
    assert grids["recon"][0].shape == (2 * 3, 3, 64, 64) and grids["traversal/0"][0].shape == (10 * 9, 3, 64, 64)
    # real faces have no ground-truth factors: 'auto' leaves none and the metrics callback skips, counted
    assert cli.datamodule.factor_sampler is None
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, DisentanglementMetrics) and c.scale == 0.01)
    assert cb.skipped == 1 and cb.evaluations == 0
    assert not any(k.startswith("val/disent/") for k in cli.trainer.callback_metrics)


@pytest.mark.realdata
def test_metric_suite_reads_only_real_subset_images(shared_data: Path) -> None:
    """What the training table does (benchmarks/vae_dsprites_table.py): every metric on the real downsampled subset."""
    dm = DSpritesDataModule(data_dir=str(shared_data / "dsprites"), source="downsampled")
    dm.setup()
    scores, times = evaluate_disentanglement(_small_vae(), dm.factor_sampler, scale=0.01, scale_overrides={"dci": 0.01})
    assert set(scores) >= {"beta_vae", "factor_vae", "mig", "dci_disentanglement", "sap", "irs"}
    assert times["encoded_images"] > 500 and dm.factor_sampler.rendered == 0  # all real images, none rendered


_EVERY_EPOCH = ["--trainer.callbacks+=DisentanglementMetrics", "--trainer.callbacks.every_n_epochs=1",
                "--trainer.callbacks.scale=0.01", "--trainer.callbacks.metrics=[mig,factor_vae,dci,sap,irs,beta_vae]"]


@pytest.fixture(scope="module")
def celeba_sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.samples import celeba as faces

    root = tmp_path_factory.mktemp("celeba_sample")
    faces.build(root, seed=0, num_images=80)
    return root


@pytest.mark.parametrize("config", ["betatcvae_celeba.yaml", pytest.param("factorvae_celeba.yaml", marks=pytest.mark.slow)])
def test_celeba_configs_log_disentanglement_on_the_sample(config: str, celeba_sample_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(celeba_sample_root))
    cli = run_cli(["fit", "--config", str(CONFIGS / config), *QUIET, *out_args(tmp_path), "--data.batch_size=8",
                   "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", *_EVERY_EPOCH])
    sampler = cli.datamodule.factor_sampler
    assert sampler is not None and tuple(sampler.factor_sizes) == (2,) * 9 + (4,)
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, DisentanglementMetrics) and c.scale == 0.01)
    assert cb.evaluations == 1 and cb.skipped == 0
    logged = scalars(version_dirs(tmp_path, Path(config).stem)[-1])
    for key in ("mig", "factor_vae", "beta_vae", "dci_disentanglement", "sap", "irs"):
        assert f"val/disent/{key}" in logged, key
        assert 0.0 <= logged[f"val/disent/{key}"][-1][1] <= 1.0
    assert 1 <= sampler.rendered <= 2 ** 9 * 4  # codes cached per factor combination: at most the grid


def test_schedulers_step_in_manual_and_automatic_mode(dsprites_root: Path) -> None:
    from functools import partial

    for losses in ([KLTerm(1.0)], [KLTerm(1.0), FactorVAETerm(gamma=1.0, latent_dim=4, hidden=16, layers=2)]):
        model = _small_vae(losses=losses, optimizer=partial(torch.optim.Adam, lr=1e-3),
                           scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
        trainer = Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, _dm(dsprites_root))
        assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2.5e-4)  # halved after each epoch
