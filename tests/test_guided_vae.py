"""Guided-VAE modules: the unsupervised deformable-PCA guide and the supervised excitation/inhibition game."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from lightning import Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.guided_vae import (
    DeformablePCATerm, GuidedVAE, SupervisedGuidedVAE, chance_error, latent_codes, least_squares_r2, linear_probe_error,
    reconstruction_errors,
)
from lightning_modules.vae import VAE
from lightning_modules.vae_losses import KLTerm
from tests.helpers import CONFIGS, QUIET, out_args, plugin_tags, run_cli, scalars, version_dirs

MNIST_CONFIG = str(CONFIGS / "guided_vae_mnist.yaml")
MLP = {"hidden": [64]}


# ---------------------------------------------------------------------------------------------------------
# unsupervised
# ---------------------------------------------------------------------------------------------------------
def test_guided_loss_is_the_shared_vae_objective_plus_the_weighted_guide_term() -> None:
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    guided = GuidedVAE(latent_dim=6, def_dim=2, deformation="both", arch="mlp", arch_kwargs=MLP, guide_weight=2.5)
    plain = GuidedVAE(latent_dim=6, def_dim=2, deformation="both", arch="mlp", arch_kwargs=MLP, guide_weight=0.0)
    shared = VAE(arch="mlp", in_channels=1, image_size=28, latent_dim=6, arch_kwargs=MLP, losses=[KLTerm(1.0)])
    # guide_weight 0: no guide at all; the model is the shared VAE with KLTerm(beta=1), parameter for parameter
    assert plain.guide is None and isinstance(guided.guide_term, DeformablePCATerm)
    assert set(plain.state_dict()) == set(shared.state_dict())
    plain.load_state_dict(guided.state_dict(), strict=False)
    shared.load_state_dict(plain.state_dict())
    results = {}
    for name, m in (("guided", guided), ("plain", plain), ("shared", shared)):
        torch.manual_seed(1)  # the same reparameterisation noise
        results[name] = m._objective((x,), "val")
    loss_guided, out, logs = results["guided"]
    guide = ((guided.guide_reconstruction(out.z) - x) ** 2).sum() / len(x)
    assert torch.allclose(logs["guide"], guide)
    assert torch.allclose(loss_guided, results["plain"][0] + 2.5 * guide, rtol=1e-5)
    assert torch.allclose(results["plain"][0], results["shared"][0])
    assert torch.allclose(results["plain"][0], logs["recon"] + logs["kl"], rtol=1e-5)
    # the guide's parameters are optimised with the VAE's
    guided.optimizer = lambda p: torch.optim.SGD(p, lr=0.1)
    opt = guided.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in guided.parameters())


def test_bad_configuration_and_bad_input_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="at least one content variable"):
        GuidedVAE(latent_dim=4, def_dim=4)
    with pytest.raises(ValueError, match="needs def_dim >= 2"):
        GuidedVAE(latent_dim=8, def_dim=1, deformation="both")
    model = GuidedVAE(latent_dim=4, def_dim=1, deformation="rotation", arch="mlp", arch_kwargs=MLP)
    with pytest.raises(ValueError, match="scale: unit"):
        model._step((torch.randn(2, 1, 28, 28) * 3,), "train")  # standardised images under a Bernoulli likelihood


def test_cli_fit_logs_losses_and_traversal_grids(sample_data: Path, tmp_path: Path) -> None:
    run_cli(["fit", "--config", MNIST_CONFIG, *out_args(tmp_path), *QUIET, "--trainer.max_epochs=2",
             "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=2", "--trainer.log_every_n_steps=1"])
    (log_dir,) = version_dirs(tmp_path, "guided_vae_mnist")
    tags = scalars(log_dir)
    assert {"train/loss", "train/recon", "train/kl", "train/guide", "val/loss", "val/recon", "val/kl", "val/guide"} <= set(tags)
    # 16 steps of training lower the reconstruction term and the guide's error
    assert tags["train/recon"][-1][1] < tags["train/recon"][0][1]
    assert tags["val/guide"][-1][1] < tags["train/guide"][0][1]
    images = plugin_tags(log_dir, "images")
    assert {"traversal_guided/0", "traversal/0", "recon", "samples", "pca_basis", "guide_recon"} <= images
    ckpt = tmp_path / "guided_vae_mnist" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 16 and state["hyper_parameters"]["deformation"] == "both"
    # resume continues from the checkpoint
    cli = run_cli(["fit", "--config", MNIST_CONFIG, *out_args(tmp_path), *QUIET, "--trainer.max_epochs=3",
                   "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=2", "--ckpt_path", str(ckpt)])
    assert cli.trainer.global_step == 24


def test_guided_traversal_grid_sweeps_z_def_and_the_probes_read_posterior_means() -> None:
    torch.manual_seed(0)
    model = GuidedVAE(latent_dim=6, def_dim=2, arch="mlp", arch_kwargs=MLP, traversal_steps=5, num_fixed=2).eval()
    x = torch.rand(4, 1, 28, 28)
    model._objective((x, torch.arange(4)), "val")  # remembers the fixed inputs, like validation
    grids = model.image_grids()
    rows, nrow = grids["traversal_guided/1"]
    assert nrow == 5 and rows.shape == (2 * 5, 1, 28, 28)  # rows z1 (rotation) and z2 (scale)
    assert torch.allclose(rows, model.traversal(x[1:2])[:2].flatten(0, 1))
    assert grids["pca_basis"].shape == (4, 1, 28, 28) and grids["guide_recon"][0].shape == (4, 1, 28, 28)
    loader = DataLoader(TensorDataset(x, torch.arange(4)), batch_size=3)
    codes, labels = latent_codes(model, loader)
    assert torch.allclose(codes, model.encode(x)[0]) and labels.tolist() == [0, 1, 2, 3]
    nll, sse = reconstruction_errors(model, loader)
    logits = model.decode(model.encode(x)[0])
    assert nll == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum").item() / 4, rel=1e-5)
    assert sse == pytest.approx(((torch.sigmoid(logits) - x) ** 2).sum().item() / 4, rel=1e-5)


def test_linear_probe_and_chance_error() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g)
    informative = torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(600, 3, generator=g)
    noise = torch.randn(600, 3, generator=g)
    assert linear_probe_error(informative[:400], y[:400], informative[400:], y[400:]) < 0.02
    assert linear_probe_error(noise[:400], y[:400], noise[400:], y[400:]) > 0.5
    assert chance_error(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError, match="single class"):
        linear_probe_error(noise, torch.zeros(600), noise, y)


# ---------------------------------------------------------------------------------------------------------
# supervised: excitation and inhibition
# ---------------------------------------------------------------------------------------------------------
def _attribute_batch(n: int = 64, side: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose left half brightness is attribute 0 and right half attribute 1 (plus noise)."""
    g = torch.Generator().manual_seed(0)
    attrs = torch.randint(0, 2, (n, 2), generator=g)
    x = 0.1 + 0.2 * torch.rand(n, 3, side, side, generator=g)
    x[:, :, :, : side // 2] += 0.6 * attrs[:, 0, None, None, None]
    x[:, :, :, side // 2 :] += 0.6 * attrs[:, 1, None, None, None]
    return x.clamp(0, 1), attrs


def _attached_model(inhibition: str = "maximize", lr: float = 1e-2) -> tuple[SupervisedGuidedVAE, torch.Tensor, torch.Tensor]:
    """A small supervised model, attached to a trainer by one step of fit on the fixed batch."""
    torch.manual_seed(0)
    x, attrs = _attribute_batch()
    model = SupervisedGuidedVAE(
        in_channels=3, image_size=8, latent_dim=6, guide_attributes=[0, 1], arch="mlp", arch_kwargs=MLP,
        inhibition=inhibition, inhibition_weight=10.0,
        optimizer=lambda p: torch.optim.Adam(p, lr=lr), adversary_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
    )
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(x, attrs), batch_size=len(x)))
    return model, x, model.targets(attrs)


@pytest.mark.parametrize("inhibition", ["maximize", "confuse"])
def test_inhibition_step_raises_the_adversarys_loss_on_a_fixed_batch(inhibition: str) -> None:
    model, x, y = _attached_model(inhibition)
    model.train()
    for _ in range(150):  # a well-trained adversary: it reads the attributes off z_rst
        with torch.no_grad():
            z = model._encode(x, sample=False)[2]
        model.adversary_step(z, y)

    def adversary_loss(m: SupervisedGuidedVAE) -> float:
        with torch.no_grad():
            return m.adversary_loss(m._encode(x, sample=False)[2], y).item()

    before = adversary_loss(model)
    control = copy.deepcopy(model)
    control._trainer = model._trainer
    control.hparams.inhibition_weight = 0.0
    torch.manual_seed(1)
    model.vae_step(x, y)
    torch.manual_seed(1)
    control.vae_step(x, y)
    after, after_control = adversary_loss(model), adversary_loss(control)
    assert after > before * 1.05, (before, after)
    assert after > after_control, (after, after_control)


def test_least_squares_r2_is_the_explained_variance_of_the_linear_fit() -> None:
    from sklearn.linear_model import LinearRegression

    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 5, generator=g, dtype=torch.float64)
    y = (z[:, 0] - 0.5 * z[:, 3] + 0.8 * torch.randn(256, generator=g, dtype=torch.float64) > 0).double()
    expected = LinearRegression().fit(z.numpy(), y.numpy()).score(z.numpy(), y.numpy())
    assert least_squares_r2(z, y, ridge=0.0).item() == pytest.approx(expected, rel=1e-6)
    assert least_squares_r2(z, y).item() == pytest.approx(expected, rel=3e-3)  # the default ridge barely moves it
    # equal class means -> 0, even when the classes differ in spread; and a differentiable loss
    same_means = torch.cat([z[:64], -z[:64], 3 * z[64:128], -3 * z[64:128]])
    classes = torch.cat([torch.ones(128), torch.zeros(128)]).double()
    assert least_squares_r2(same_means, classes).item() < 1e-12
    z.requires_grad_(True)
    least_squares_r2(z, y).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_least_squares_inhibition_lowers_the_closed_form_adversarys_fit() -> None:
    """Paired from the same weights and optimizer state: 10 VAE steps with the inhibition vs the same 10 without."""
    model, x, y = _attached_model("least_squares", lr=3e-4)
    model.train()
    opt = model.optimizers()[0].optimizer
    weights, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    def fit() -> float:  # the closed-form adversary's R^2, summed over the two attributes
        with torch.no_grad():
            return model.inhibition_loss(model._encode(x, sample=False)[2], y).item()

    before, after = fit(), {}
    for weight in (0.0, 10.0):
        model.load_state_dict(weights)
        opt.load_state_dict(opt_state)
        model.hparams.inhibition_weight = weight
        for _ in range(10):
            torch.manual_seed(1)
            model.vae_step(x, y)
        after[weight] = fit()
    assert before > 1.0, before  # the attributes are readable off z_rst at first (half-image brightness)
    assert after[0.0] > before  # without inhibition the ELBO makes them more readable ...
    assert after[10.0] < 0.7 * before, (before, after)  # ... with it the best linear adversary loses ground


def test_excitation_makes_z_t_predict_the_attribute() -> None:
    model, x, y = _attached_model()
    model.train()
    with torch.no_grad():
        initial = model.excitation_loss(model._encode(x, sample=False)[2], y).item()
    for _ in range(60):
        objective = model.objective(x)
        model.adversary_step(objective[1].mu, y)
        model.vae_step(x, y, objective)
    mu = model._encode(x, sample=False)[2]
    excitation_error = ((mu[:, :2] > 0).float() != y).float().mean().item()
    assert excitation_error < 0.1
    assert model.excitation_loss(mu, y).item() < 0.5 * initial


def test_attribute_names_resolve_against_the_data() -> None:
    model = SupervisedGuidedVAE(latent_dim=16, guide_attributes=["Smiling", "Male", "Black_Hair"])
    model.resolve_attributes()  # the official CelebA order
    assert model.attribute_columns.tolist() == [31, 20, 8]
    model.resolve_attributes(["Male", "Smiling", "Black_Hair"])
    assert model.attribute_columns.tolist() == [1, 0, 2]
    attrs = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert model.targets(attrs).tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert model.targets(attrs * 2 - 1).tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]  # +-1 encoding too
    with pytest.raises(ValueError, match="unknown attribute 'Smiling'"):
        model.resolve_attributes(["Male"])
    with pytest.raises(ValueError, match="1 <= number of attributes"):
        SupervisedGuidedVAE(latent_dim=2, guide_attributes=["Male", "Smiling"])
    with pytest.raises(ValueError, match="adversary_input must be"):
        SupervisedGuidedVAE(latent_dim=16, adversary_input="z")


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small offline CelebA sample (synthetic faces with known attributes)."""
    from datamodules.samples import celeba

    root = tmp_path_factory.mktemp("celeba_data")
    celeba.build(root, num_images=60)
    return root


def test_supervised_cli_fit_logs_game_terms_accuracies_and_traversals(
    celeba_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(celeba_root))
    common = ["--config", str(CONFIGS / "guided_vae_celeba.yaml"), *out_args(tmp_path), *QUIET,
              "--data.batch_size=8", "--data.image_size=32", "--model.image_size=32", "--model.arch=conv",
              "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
              "--trainer.log_every_n_steps=1"]
    cli = run_cli(["fit", *common, "--trainer.max_epochs=1"])
    assert cli.model.attribute_columns.tolist() == [31, 20, 8]  # names resolved against the data module
    assert cli.trainer.global_step == 18  # manual optimisation: 5 adversary steps and 1 VAE step per batch
    (log_dir,) = version_dirs(tmp_path, "guided_vae_celeba")
    tags = scalars(log_dir)
    assert {"train/loss", "train/excitation", "train/inhibition", "train/adversary", "val/excitation_err",
            "val/adversary_err", "val/excitation_acc/Smiling", "val/adversary_acc/Black_Hair"} <= set(tags)
    assert all(0.0 <= v <= 3.0 for _, v in tags["train/inhibition"])  # least_squares: a sum of three R^2
    assert all(v > 0.0 for _, v in tags["train/adversary"])  # the C_t monitors are trained and logged
    assert {"traversal_attr/Smiling", "traversal_attr/Male", "traversal_attr/Black_Hair", "recon", "traversal/0"} <= plugin_tags(
        log_dir, "images")
    ckpt = tmp_path / "guided_vae_celeba" / "checkpoints" / "last.ckpt"
    cli = run_cli(["fit", *common, "--trainer.max_epochs=2", "--ckpt_path", str(ckpt)])
    assert cli.trainer.global_step == 36
