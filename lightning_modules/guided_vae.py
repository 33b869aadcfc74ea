"""Guided-VAE (Ding et al., CVPR 2020): a VAE whose latents are made controllable by a lightweight guide.

Both modules ARE the shared VAE of :mod:`lightning_modules.vae` (subclasses of :class:`~lightning_modules.vae.VAE`):
the same encoder/decoder pairs (``conv``, ``conv64``, ``mlp``), the same objective
``reconstruction_loss + sum(term(out) for term in losses)`` with the loss terms of
:mod:`lightning_modules.vae_losses` (``KLTerm(beta)``: VAE / beta-VAE), the same logging, traversals,
image grids, GIFs, scheduler handling and ``representation()`` for the disentanglement metrics. The guides add:

* :class:`GuidedVAE` (unsupervised): ``z = (z_def, z_cont)``; one more loss term, :class:`DeformablePCATerm`,
  a deformable-PCA secondary decoder reconstructing ``x`` as ``T_{tau(z_def)}(B z_cont)``:
  ``losses = [KLTerm(beta), DeformablePCATerm(guide_weight)]``. ``guide_weight: 0`` drops the term: the plain
  VAE (``beta: 1``) or beta-VAE (``beta > 1``), exactly.
* :class:`SupervisedGuidedVAE`: for each of ``T`` attributes, latent ``z_t`` is *excited* (hinge
  ``max(0, 1 - y_t z_t)``, ``y_t`` in {-1, +1}) and the rest ``z_rst_t`` *inhibited*: an adversarial
  classifier ``C_t(z_rst_t)`` learns the attribute while the encoder is trained to defeat it. Manual
  optimisation, two injected optimizers (``optimizer`` for the VAE, ``adversary_optimizer`` for the ``C_t``),
  alternating each step: first the adversaries on detached codes, then the VAE (ELBO of the shared
  objective + excitation + inhibition).

:meth:`GuidedVAE.latent_codes` / :func:`latent_codes` and :func:`linear_probe_error` are the probes of
``benchmarks/guided_vae_*.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy

from datamodules.celeba import ATTRIBUTES as CELEBA_ATTRIBUTES
from lightning_modules.nets.guide import DEFORMATIONS, DeformablePCA, LatentClassifier
from lightning_modules.vae import VAE
from lightning_modules.vae_losses import KLTerm, LossTerm, VAEOutput, reconstruction_loss

__all__ = [
    "DeformablePCATerm", "GuidedVAE", "SupervisedGuidedVAE", "latent_codes", "linear_probe_error", "chance_error",
    "reconstruction_errors", "least_squares_r2",
]

Recon = Literal["bernoulli", "gaussian"]


class DeformablePCATerm(LossTerm):
    """The unsupervised guide as a loss term of the shared VAE objective.

    ``weight * ||x - T_{tau(z_def)}(B z_cont)||^2`` (per image, summed over pixels, batch mean) with ``z_def = z[:, :def_dim]``
    and ``z_cont = z[:, def_dim:]`` (the sampled code), plus ``unit_norm_weight * sum_k (||b_k||^2 - 1)^2``.
    Logs ``guide`` (the unweighted squared error) and ``unit_norm``.
    """

    def __init__(self, guide: DeformablePCA, def_dim: int, weight: float = 1.0, unit_norm_weight: float = 0.0) -> None:
        super().__init__()
        self.guide, self.def_dim, self.weight, self.unit_norm_weight = guide, def_dim, weight, unit_norm_weight

    def reconstruct(self, z: Tensor) -> Tensor:
        """``T_{tau(z_def)}(B z_cont)``."""
        return self.guide(z[:, : self.def_dim], z[:, self.def_dim :])

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        err = (self.reconstruct(out.z) - out.x).pow(2).flatten(1).sum(1).mean()
        loss, logs = self.weight * err, {"guide": err}
        if self.unit_norm_weight > 0:
            penalty = self.guide.unit_norm_penalty()
            loss = loss + self.unit_norm_weight * penalty
            logs["unit_norm"] = penalty
        return loss, logs


class _GuidedMixin:
    """What both Guided-VAEs add to the shared VAE: an input check, posterior means, latent codes of a loader."""

    def _check_images(self, x: Tensor) -> None:
        if x.min() < 0 or x.max() > 1:
            raise ValueError(
                f"the VAE's reconstruction loss needs images in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                "use the data module's unit scale (e.g. MNISTDataModule scale: unit)"
            )

    def _objective(self, batch: Sequence[Tensor], stage: str):
        self._check_images(batch[0] if isinstance(batch, (list, tuple)) else batch)
        return super()._objective(batch, stage)  # type: ignore[misc]

    def _encode(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(mu, logvar, z)``; ``z`` a reparameterised sample or the posterior mean."""
        self._check_images(x)
        mu, logvar = self.encode(x)  # type: ignore[attr-defined]
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return mu, logvar, z

    def latent_codes(self, loader, max_batches: int | None = None) -> tuple[Tensor, Tensor]:
        return latent_codes(self, loader, max_batches)  # type: ignore[arg-type]

    def _keep_own_hparams(self) -> None:
        """Drop the hyperparameters only the base VAE takes (the CVAE's ``cond_*``): a checkpoint's hyperparameters
        must match this class's signature (``--ckpt_path`` re-parses them; the CLI's ``_class_path`` stays)."""
        import inspect

        own = set(inspect.signature(type(self).__init__).parameters)
        for hp in (self._hparams, self._hparams_initial):  # type: ignore[attr-defined]
            for key in [k for k in hp if k not in own and not k.startswith("_")]:  # keep the CLI's _class_path
                hp.pop(key)


class GuidedVAE(_GuidedMixin, VAE):
    """Unsupervised Guided-VAE: deformable-PCA guidance of ``z = (z_def, z_cont)`` on the shared VAE.

    Args:
        in_channels, image_size: image shape (MNIST: 1, 28).
        latent_dim: bottleneck size ``d_z``.
        def_dim: the first ``def_dim`` latents are ``z_def``, the others ``z_cont`` (``K = latent_dim - def_dim``
            basis images). ``rotation``/``scaling`` use ``z_1``; ``both``: ``z_1`` rotation, ``z_2`` scaling;
            ``affine``: all of ``z_def`` through a learned linear map.
        deformation: ``rotation``, ``scaling``, ``both``, ``affine`` or ``none`` (the PCA-only ablation).
        arch, arch_kwargs: backbone pair of :mod:`lightning_modules.nets.vae` and its extra arguments.
        beta: weight of the KL term (``KLTerm(beta)``; 1: VAE; > 1: beta-VAE).
        guide_weight: weight of the deformable-PCA term (0: no guide at all, the plain VAE / beta-VAE).
        unit_norm_weight: weight of ``sum_k (||b_k||^2 - 1)^2`` (0: off).
        mean_image: the PCA learns a mean image (its centring).
        recon: the shared reconstruction loss (``bernoulli`` or ``gaussian``; images in [0, 1]).
        traversal_range, traversal_steps, num_fixed, gif_every_n_epochs, monitor, dataset_size: as :class:`VAE`.
    """

    hparams_metrics = ("val/loss", "val/recon", "val/kl", "val/guide")

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 10,
        def_dim: int = 2,
        deformation: Literal["rotation", "scaling", "both", "affine", "none"] = "both",
        arch: Literal["conv64", "conv", "mlp"] = "conv",
        arch_kwargs: dict[str, Any] | None = None,
        beta: float = 1.0,
        guide_weight: float = 1.0,
        unit_norm_weight: float = 0.0,
        mean_image: bool = True,
        recon: Recon = "bernoulli",
        dataset_size: int | None = None,
        traversal_range: float = 3.0,
        traversal_steps: int = 9,
        num_fixed: int = 8,
        gif_every_n_epochs: int = 0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        monitor: str = "val/loss",
    ) -> None:
        if not 0 <= def_dim < latent_dim:
            raise ValueError(f"def_dim must leave at least one content variable: 0 <= def_dim < latent_dim={latent_dim}, got {def_dim}")
        if deformation != "affine" and def_dim < DEFORMATIONS[deformation]:
            raise ValueError(f"deformation {deformation!r} needs def_dim >= {DEFORMATIONS[deformation]}, got {def_dim}")
        if guide_weight < 0 or unit_norm_weight < 0:
            raise ValueError(f"guide_weight and unit_norm_weight must be >= 0, got {guide_weight} and {unit_norm_weight}")
        losses: list[LossTerm] = [KLTerm(beta)]
        if guide_weight > 0:
            guide = DeformablePCA((in_channels, image_size, image_size), latent_dim - def_dim, def_dim, deformation, mean_image)
            losses.append(DeformablePCATerm(guide, def_dim, guide_weight, unit_norm_weight))
        super().__init__(
            arch=arch, in_channels=in_channels, image_size=image_size, latent_dim=latent_dim, arch_kwargs=arch_kwargs,
            losses=losses, recon=recon, dataset_size=dataset_size, traversal_range=traversal_range,
            traversal_steps=traversal_steps, num_fixed=num_fixed, gif_every_n_epochs=gif_every_n_epochs,
            optimizer=optimizer, scheduler=scheduler, monitor=monitor,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self._keep_own_hparams()

    @property
    def guide_term(self) -> DeformablePCATerm | None:
        return next((t for t in self.losses if isinstance(t, DeformablePCATerm)), None)

    @property
    def guide(self) -> DeformablePCA | None:
        """The secondary decoder (``None`` with ``guide_weight: 0``); only needed in training."""
        term = self.guide_term
        return None if term is None else term.guide

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_def, z_cont)``."""
        d = self.hparams.def_dim
        return z[:, :d], z[:, d:]

    def guide_reconstruction(self, z: Tensor) -> Tensor:
        """The secondary decoder's ``T_{tau(z_def)}(B z_cont)``."""
        if self.guide_term is None:
            raise RuntimeError("this model has no guide (guide_weight: 0)")
        return self.guide_term.reconstruct(z)

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = super().predict_step(batch, batch_idx)
        out["z_def"], out["z_cont"] = self.split(out["mu"])
        return out

    @torch.no_grad()
    def image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]:
        """The shared VAE's grids (``recon``, ``samples``, ``traversal/<i>``) plus ``traversal_guided/<i>`` (the rows of
        ``z_def``: z1 rotation, z2 scale), ``guide_recon`` (inputs over the deformable PCA's output) and ``pca_basis``."""
        grids = super().image_grids()
        x, _ = self._fixed_inputs()
        d, steps = self.hparams.def_dim, self.hparams.traversal_steps
        if d > 0:
            for i in range(len(x)):
                grids[f"traversal_guided/{i}"] = (self.traversal(x[i : i + 1])[:d].flatten(0, 1), steps)
        if self.guide is not None:
            mu, _ = self.encode(x)
            grids["guide_recon"] = (torch.cat([x, self.guide_reconstruction(mu)]), len(x))
            grids["pca_basis"] = self.guide.basis_images()
        return grids


class SupervisedGuidedVAE(_GuidedMixin, VAE):
    """Supervised Guided-VAE on the shared VAE: adversarial excitation (``z_t``) and inhibition (``z_rst_t``) of ``T`` attributes.

    Batches are ``(images, attributes)`` with ``attributes`` ``(N, A)`` in {0, 1} (or {-1, +1}); the chosen
    attribute columns are given by name (resolved against the data module's ``attribute_names`` /
    ``attr_names``, else the 40 official CelebA names) or index. Latent ``z_{t}`` (``t = 0..T-1``, the first
    ``T`` latents) carries attribute ``t``.

    Args:
        guide_attributes: the ``T`` guided attributes (names or column indices; ``attributes`` is the data module's).
        beta: weight of the shared ``KLTerm``.
        excitation_weight: weight of the hinge ``max(0, 1 - y_t z_t)`` (summed over attributes).
        inhibition_weight: weight of the encoder's adversarial term.
        inhibition: the encoder's side of the game. ``maximize`` (the paper: the encoder maximises the ``C_t``'s
            cross-entropy), ``confuse`` (the encoder drives the ``C_t``'s prediction to 1/2; a bounded variant) or
            ``least_squares``: the adversary is the least-squares linear classifier of ``y_t`` on ``z_rst_t`` of the
            batch, solved in closed form (so it is always at its optimum, no lag behind the encoder), and the encoder
            minimises its explained variance ``R^2`` (:func:`least_squares_r2`). ``R^2 = 0`` means the class means of
            ``z_rst_t`` coincide, the condition under which no linear probe beats chance (linear guardedness,
            Belrose et al. 2023, "LEACE"). The ``C_t`` are still trained and logged, as monitors.
        adversary_input: what ``C_t`` reads in training: ``mean`` (the posterior means ``mu_rst_t``, the code a
            probe reads afterwards) or ``sample`` (the reparameterised ``z_rst_t``).
        adversary_hidden: width of the ``C_t`` MLPs.
        adversary_layers: hidden layers of the ``C_t`` (2: the authors' MLP with LayerNorm; 0: a linear classifier, the
            family of the linear probes that score ``z_rst_t`` afterwards).
        adversary_steps: updates of the ``C_t`` per batch (on the same detached codes) before the VAE's
            update: the inhibition needs an adversary close to "the best possible classifier".
        optimizer: for the encoder and decoder; adversary_optimizer: for the ``C_t``.
        Others as :class:`GuidedVAE` / :class:`VAE`.
    """

    hparams_metrics = ("val/loss", "val/recon", "val/excitation_err", "val/adversary_err")

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 64,
        latent_dim: int = 16,
        guide_attributes: list[str | int] = ("Smiling", "Male", "Black_Hair"),  # type: ignore[assignment]
        arch: Literal["conv64", "conv", "mlp"] = "conv64",
        arch_kwargs: dict[str, Any] | None = None,
        beta: float = 1.0,
        excitation_weight: float = 1.0,
        inhibition_weight: float = 1.0,
        inhibition: Literal["maximize", "confuse", "least_squares"] = "maximize",
        adversary_input: Literal["mean", "sample"] = "mean",
        adversary_hidden: int = 32,
        adversary_layers: int = 2,
        adversary_standardize: bool = False,
        adversary_steps: int = 1,
        recon: Recon = "bernoulli",
        dataset_size: int | None = None,
        traversal_range: float = 3.0,
        traversal_steps: int = 9,
        num_fixed: int = 4,
        gif_every_n_epochs: int = 0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        adversary_optimizer: OptimizerCallable = torch.optim.Adam,
        monitor: str = "val/loss",
    ) -> None:
        guide_attributes = list(guide_attributes)
        if not 1 <= len(guide_attributes) < latent_dim:
            raise ValueError(f"need 1 <= number of attributes < latent_dim={latent_dim}, got {len(guide_attributes)}")
        if adversary_layers < 0:
            raise ValueError(f"adversary_layers must be >= 0, got {adversary_layers}")
        if adversary_steps < 1:
            raise ValueError(f"adversary_steps must be >= 1, got {adversary_steps}")
        if inhibition not in ("maximize", "confuse", "least_squares"):
            raise ValueError(f"inhibition must be 'maximize', 'confuse' or 'least_squares', got {inhibition!r}")
        if adversary_input not in ("mean", "sample"):
            raise ValueError(f"adversary_input must be 'mean' or 'sample', got {adversary_input!r}")
        super().__init__(
            arch=arch, in_channels=in_channels, image_size=image_size, latent_dim=latent_dim, arch_kwargs=arch_kwargs,
            losses=[KLTerm(beta)], recon=recon, dataset_size=dataset_size, traversal_range=traversal_range,
            traversal_steps=traversal_steps, num_fixed=num_fixed, gif_every_n_epochs=gif_every_n_epochs,
            optimizer=optimizer, monitor=monitor,
        )
        self.save_hyperparameters(ignore=["optimizer", "adversary_optimizer"])
        self._keep_own_hparams()
        self.hparams.guide_attributes = guide_attributes
        self.automatic_optimization = False
        self.adversary_optimizer = adversary_optimizer
        self.adversaries = nn.ModuleList(LatentClassifier(latent_dim - 1, adversary_hidden, adversary_layers, adversary_standardize)
            for _ in guide_attributes
        )
        self.register_buffer("attribute_columns", torch.tensor(
            [a if isinstance(a, int) else -1 for a in guide_attributes], dtype=torch.long))
        for stage in ("train", "val", "test"):
            for kind in ("excitation", "adversary"):
                setattr(self, f"{stage}_{kind}_acc", nn.ModuleList(BinaryAccuracy() for _ in guide_attributes))

    # ---- attributes -------------------------------------------------------------------------------------
    @property
    def attribute_names(self) -> list[str]:
        return [str(a) for a in self.hparams.guide_attributes]

    def setup(self, stage: str) -> None:
        """Resolve attribute names to columns with the data module's names (else keep what :meth:`resolve_attributes` set,
        else the official CelebA order)."""
        names = None
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for attr in ("attribute_names", "attr_names"):
            names = names or (list(getattr(dm, attr)) if dm is not None and getattr(dm, attr, None) is not None else None)
        if names is not None or (self.attribute_columns < 0).any():
            self.resolve_attributes(names)

    def resolve_attributes(self, names: Sequence[str] | None = None) -> None:
        names = list(names) if names is not None else list(CELEBA_ATTRIBUTES)
        columns = []
        for a in self.hparams.guide_attributes:
            if isinstance(a, int):
                columns.append(a)
            elif a in names:
                columns.append(names.index(a))
            else:
                raise ValueError(f"unknown attribute {a!r}; the data has {names}")
        self.attribute_columns.copy_(torch.tensor(columns, device=self.attribute_columns.device))

    def targets(self, attrs: Tensor) -> Tensor:
        """``(N, T)`` labels in {0, 1} of the guided attributes."""
        if (self.attribute_columns < 0).any():
            self.resolve_attributes()
        if attrs.dim() != 2 or int(self.attribute_columns.max()) >= attrs.shape[1]:
            raise ValueError(f"expected attributes (N, A) with A > {int(self.attribute_columns.max())}, got {tuple(attrs.shape)}")
        y = attrs[:, self.attribute_columns].float()
        return (y > 0).float()  # {0,1} and {-1,+1} encodings alike

    def rest(self, z: Tensor, t: int) -> Tensor:
        """``z_rst_t``: every latent but ``z_t``."""
        return torch.cat([z[:, :t], z[:, t + 1 :]], dim=1)

    # ---- losses -----------------------------------------------------------------------------------------
    def excitation_loss(self, z: Tensor, y: Tensor) -> Tensor:
        """Hinge ``sum_t mean_i max(0, 1 - y_t z_t)`` with ``y_t`` in {-1, +1}."""
        T = y.shape[1]
        return F.relu(1.0 - (2 * y - 1) * z[:, :T]).mean(0).sum()

    def adversary_loss(self, z: Tensor, y: Tensor) -> Tensor:
        """``sum_t`` cross-entropy of ``C_t(z_rst_t)`` (what the adversaries minimise)."""
        return sum(
            F.binary_cross_entropy_with_logits(c(self.rest(z, t)), y[:, t]) for t, c in enumerate(self.adversaries)
        )

    def inhibition_loss(self, z: Tensor, y: Tensor) -> Tensor:
        """The encoder's side of the game (minimised): ``-adversary_loss``, the cross-entropy to 1/2, or
        ``sum_t R^2`` of the batch's closed-form least-squares adversaries."""
        if self.hparams.inhibition == "maximize":
            return -self.adversary_loss(z, y)
        if self.hparams.inhibition == "least_squares":
            return sum(least_squares_r2(self.rest(z, t), y[:, t]) for t in range(y.shape[1]))
        half = torch.full_like(y[:, 0], 0.5)
        return sum(F.binary_cross_entropy_with_logits(c(self.rest(z, t)), half) for t, c in enumerate(self.adversaries))

    def _adversary_code(self, out: VAEOutput) -> Tensor:
        return out.mu if self.hparams.adversary_input == "mean" else out.z

    def adversary_step(self, z: Tensor, y: Tensor) -> Tensor:
        """One update of the ``C_t`` (second optimizer) on the detached codes ``z``; returns their loss."""
        opt = self.optimizers()[1]
        self.toggle_optimizer(opt)
        loss = self.adversary_loss(z.detach(), y)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        return loss.detach()

    def objective(self, x: Tensor, attrs: Tensor | None = None, stage: str = "train") -> tuple[Tensor, VAEOutput, dict[str, Tensor]]:
        """The shared VAE objective (reconstruction + ``KLTerm``) of a batch: ``(loss, out, logs)``."""
        return self._objective((x,) if attrs is None else (x, attrs), stage)

    def vae_step(self, x: Tensor, y: Tensor, objective: tuple[Tensor, VAEOutput, dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """One update of encoder and decoder (first optimizer): shared ELBO + excitation + inhibition, the ``C_t`` held fixed.

        ``objective``: :meth:`objective` of ``x`` when already computed (the training step shares one forward pass).
        """
        opt = self.optimizers()[0]
        self.toggle_optimizer(opt)
        elbo, out, logs = objective if objective is not None else self.objective(x)
        logs["excitation"] = self.excitation_loss(out.z, y)
        logs["inhibition"] = self.inhibition_loss(self._adversary_code(out), y)
        loss = elbo + self.hparams.excitation_weight * logs["excitation"] + self.hparams.inhibition_weight * logs["inhibition"]
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        logs["loss"] = loss
        return {key: value.detach() for key, value in logs.items()}

    def _accuracies(self, stage: str, z: Tensor, y: Tensor) -> None:
        for t, c in enumerate(self.adversaries):
            exc = getattr(self, f"{stage}_excitation_acc")[t]
            adv = getattr(self, f"{stage}_adversary_acc")[t]
            exc(z[:, t], y[:, t])  # z_t > 0 predicts the attribute (the hinge's decision rule)
            adv(torch.sigmoid(c(self.rest(z, t))), y[:, t])
            name = self.attribute_names[t]
            self.log(f"{stage}/excitation_acc/{name}", exc, on_step=False, on_epoch=True)
            self.log(f"{stage}/adversary_acc/{name}", adv, on_step=False, on_epoch=True)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        """Alternating updates on one forward pass: the adversaries on detached codes, then the VAE."""
        x, y = batch[0], self.targets(batch[1])
        objective = self.objective(x, batch[1])
        code = self._adversary_code(objective[1])
        for _ in range(self.hparams.adversary_steps):
            adversary = self.adversary_step(code, y)
        logs = self.vae_step(x, y, objective)
        logs["adversary"] = adversary
        self._log(logs, "train")
        with torch.no_grad():
            self._accuracies("train", code.detach(), y)

    def _eval_step(self, batch: Sequence[Tensor], stage: str) -> None:
        x, y = batch[0], self.targets(batch[1])
        loss, out, logs = self.objective(x, batch[1], stage)
        mu = out.mu  # decisions on the posterior means
        logs["excitation"] = self.excitation_loss(out.z, y)
        logs["adversary"] = self.adversary_loss(mu, y)
        logs["loss"] = loss + self.hparams.excitation_weight * logs["excitation"]
        logs["excitation_err"] = ((mu[:, : y.shape[1]] > 0).float() != y).float().mean()
        adv_pred = torch.stack([(c(self.rest(mu, t)) > 0).float() for t, c in enumerate(self.adversaries)], 1)
        logs["adversary_err"] = (adv_pred != y).float().mean()
        self._log(logs, stage)
        self._accuracies(stage, mu, y)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        out = super().predict_step((batch[0],), batch_idx)
        T = len(self.hparams.guide_attributes)
        out["z_t"] = out["mu"][:, :T]
        return out

    def configure_optimizers(self):
        vae = self.optimizer([*self.encoder.parameters(), *self.decoder.parameters()])
        adversary = self.adversary_optimizer(self.adversaries.parameters())
        return [vae, adversary]

    @torch.no_grad()
    def image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]:
        """The shared VAE's grids plus ``traversal_attr/<name>``: ``z_t`` swept for each fixed input (the paper's Fig. 4)."""
        grids = super().image_grids()
        x, _ = self._fixed_inputs()
        for t, name in enumerate(self.attribute_names):
            rows = [self.traversal(x[i : i + 1])[t] for i in range(len(x))]
            grids[f"traversal_attr/{name}"] = (torch.cat(rows), self.hparams.traversal_steps)
        return grids


def least_squares_r2(z: Tensor, y: Tensor, ridge: float = 1e-3) -> Tensor:
    """Fraction of the variance of ``y`` (N,) explained by the least-squares linear fit on ``z`` (N, D), with intercept.

    ``R^2 = c^T (S + r I)^-1 c / var(y)`` with ``S`` the covariance of ``z``, ``c`` its covariance with ``y`` and a
    ridge ``r = ridge * mean(diag S)`` (held constant in the gradient) that keeps the solve well posed for
    collapsed latents. Differentiable in ``z``; 0 exactly when ``c = 0`` (every class of ``y`` has the same mean ``z``).
    Computed in at least float32, outside autocast (half-precision ``linalg.solve`` is not available everywhere).
    """
    with torch.autocast(z.device.type, enabled=False):
        return _least_squares_r2(z if z.dtype == torch.float64 else z.float(), y, ridge)


def _least_squares_r2(z: Tensor, y: Tensor, ridge: float) -> Tensor:
    zc = z - z.mean(0)
    yc = y.to(z.dtype) - y.to(z.dtype).mean()
    n, d = zc.shape
    cov = zc.T @ zc / n
    cross = zc.T @ yc / n
    scale = cov.diagonal().mean().detach().clamp_min(1e-8)
    w = torch.linalg.solve(cov + ridge * scale * torch.eye(d, dtype=z.dtype, device=z.device), cross)
    return (cross @ w) / (yc.pow(2).mean() + 1e-8)


@torch.no_grad()
def latent_codes(model: VAE, loader, max_batches: int | None = None) -> tuple[Tensor, Tensor]:
    """Posterior means ``mu`` of every image of ``loader`` and the batches' second item (labels/attributes)."""
    was_training = model.training
    model.eval()
    codes, labels = [], []
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        mu, _ = model.encode(batch[0].to(model.device))
        codes.append(mu.cpu())
        labels.append(batch[1].cpu())
    model.train(was_training)
    return torch.cat(codes), torch.cat(labels)


@torch.no_grad()
def reconstruction_errors(model: VAE, loader) -> tuple[float, float]:
    """Means per image over ``loader`` of the shared reconstruction loss (Bernoulli NLL with ``recon: bernoulli``) and
    the squared error of the mean image, the posterior mean decoded (the paper's Table 1)."""
    was_training = model.training
    model.eval()
    nll = sse = 0.0
    n = 0
    for batch in loader:
        x = batch[0].to(model.device)
        logits = model.decode(model.encode(x)[0])
        nll += reconstruction_loss(x, logits, model.hparams.recon).item() * len(x)
        sse += (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1).sum().item()
        n += len(x)
    model.train(was_training)
    return nll / n, sse / n


def linear_probe_error(
    train_x: Tensor | np.ndarray,
    train_y: Tensor | np.ndarray,
    test_x: Tensor | np.ndarray,
    test_y: Tensor | np.ndarray,
    max_iter: int = 1000,
) -> float:
    """Test error of a linear classifier (scikit-learn's multinomial logistic regression on standardised features).

    The probe of the paper's Tables 2-3 (digit error from ``z``, ``z_def``, ``z_cont``) and of the attribute
    errors from ``z_t`` and ``z_rst_t``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def _np(a):
        return a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)

    train_x, train_y, test_x, test_y = map(_np, (train_x, train_y, test_x, test_y))
    if train_x.ndim == 1:
        train_x, test_x = train_x[:, None], test_x[:, None]
    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe's training labels hold a single class; nothing to learn")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(train_x, train_y)
    return float(np.mean(probe.predict(test_x) != test_y))


def chance_error(train_y: Tensor | np.ndarray, test_y: Tensor | np.ndarray) -> float:
    """Error of always predicting the training set's majority class."""
    train_y = train_y.cpu().numpy() if isinstance(train_y, Tensor) else np.asarray(train_y)
    test_y = test_y.cpu().numpy() if isinstance(test_y, Tensor) else np.asarray(test_y)
    values, counts = np.unique(train_y, return_counts=True)
    return float(np.mean(test_y != values[np.argmax(counts)]))

