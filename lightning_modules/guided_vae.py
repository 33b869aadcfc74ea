"""Guided-VAE (Ding et al., CVPR 2020): a VAE whose latents are made controllable by a lightweight guide.

Two modules on the shared VAE backbones of :mod:`lightning_modules.nets.vae` (``conv``, ``conv64``, ``mlp``):

* :class:`GuidedVAE` (unsupervised): ``z = (z_def, z_cont)``; besides the main decoder a deformable-PCA
  secondary decoder reconstructs ``x`` as ``T_{tau(z_def)}(B z_cont)``; loss = negative ELBO
  + ``guide_weight * ||x - T(B z_cont)||^2`` (+ the optional unit-norm basis penalty). With
  ``guide_weight: 0`` it is the vanilla VAE (``beta: 1``) or beta-VAE (``beta > 1``) on the same backbone.
* :class:`SupervisedGuidedVAE`: for each of ``T`` attributes, latent ``z_t`` is *excited* (hinge
  ``max(0, 1 - y_t z_t)``, ``y_t`` in {-1, +1}) and the rest ``z_rst_t`` *inhibited*: an adversarial
  classifier ``C_t(z_rst_t)`` learns the attribute while the encoder is trained to defeat it. Manual
  optimisation, two injected optimizers (``optimizer`` for the VAE, ``adversary_optimizer`` for the ``C_t``),
  alternating each step: first the adversaries on detached codes, then the VAE.

Both log ``{train,val,test}/{loss,recon,kl,mse}`` (sums over pixels / latents, means over images; val/test
decode the posterior mean), take part in :class:`callbacks.images.ImageGrids` through ``image_grids()``
(reconstructions and latent traversals; the PCA basis for the unsupervised model), and provide
:meth:`latent_codes` for the probes of :func:`linear_probe_error` (``benchmarks/guided_vae_*.py``).
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
from lightning_modules.base import PaperzooModule
from lightning_modules.nets.guide import DEFORMATIONS, DeformablePCA, LatentClassifier
from lightning_modules.nets.vae import build_decoder, build_encoder

__all__ = ["GuidedVAE", "SupervisedGuidedVAE", "linear_probe_error", "chance_error"]

Likelihood = Literal["bernoulli", "gaussian"]



class _GuidedBackbone(PaperzooModule):
    """The VAE both Guided-VAEs share: encoder, main decoder, ELBO terms, reconstruction and traversal grids."""

    def _build_backbone(
        self, arch: str, in_channels: int, image_size: int, latent_dim: int, arch_kwargs: dict[str, Any] | None
    ) -> None:
        kwargs = dict(arch_kwargs or {})
        self.encoder = build_encoder(arch, in_channels, image_size, latent_dim, **kwargs)
        self.decoder = build_decoder(arch, in_channels, image_size, latent_dim, **kwargs)
        self._grid_batch: Tensor | None = None

    # ---- the VAE ---------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior ``(mu, logvar)`` of ``x``."""
        return self.encoder(x)

    def representation(self, x: Tensor, factors: Tensor | None = None) -> Tensor:
        """Posterior means: the code scored by :class:`callbacks.disentanglement.DisentanglementMetrics`."""
        return self.encoder(x)[0]

    def decode(self, z: Tensor) -> Tensor:
        """Mean image of ``p(x|z)`` in the data's range."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.hparams.likelihood == "bernoulli" else out

    def _check_images(self, x: Tensor) -> None:
        if self.hparams.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                f"the Bernoulli likelihood needs images in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
                "use the data module's unit scale (e.g. MNISTDataModule scale: unit) or likelihood: gaussian"
            )

    def _encode(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        self._check_images(x)
        mu, logvar = self.encoder(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return mu, logvar, z

    def _elbo_terms(self, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> dict[str, Tensor]:
        """Per-image sums, batch means: ``recon`` (-log p(x|z)), ``kl``, ``mse`` (squared error of the mean image)."""
        n = x.shape[0]
        out = self.decoder(z)
        if self.hparams.likelihood == "bernoulli":
            recon = F.binary_cross_entropy_with_logits(out, x, reduction="sum") / n
            mean = torch.sigmoid(out)
        else:
            recon = 0.5 * F.mse_loss(out, x, reduction="sum") / n
            mean = out
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        mse = F.mse_loss(mean.detach(), x, reduction="sum") / n
        return {"recon": recon, "kl": kl, "mse": mse}

    def _log_terms(self, stage: str, terms: dict[str, Tensor], batch_size: int) -> None:
        train = stage == "train"
        for key, value in terms.items():
            self.log(
                f"{stage}/{key}", value, on_step=train, on_epoch=not train, prog_bar=key == "loss",
                sync_dist=not train, batch_size=batch_size,
            )

    def _remember_grid_batch(self, x: Tensor, batch_idx: int) -> None:
        if batch_idx == 0 and self._grid_batch is None:
            self._grid_batch = x[:8].detach().clone()

    # ---- grids (ImageGrids callback protocol) ----------------------------------------------------------
    def traversal(self, x: Tensor, dims: Sequence[int], limit: float | None = None, steps: int | None = None) -> Tensor:
        """Decode ``mu(x)`` with each latent of ``dims`` swept over ``[-limit, limit]``: ``(len(dims) * steps, C, H, W)``."""
        limit = self.hparams.traversal_limit if limit is None else limit
        steps = self.hparams.traversal_steps if steps is None else steps
        mu, _ = self.encoder(x[:1])
        values = torch.linspace(-limit, limit, steps, device=mu.device)
        codes = mu.repeat(len(dims) * steps, 1)
        for row, d in enumerate(dims):
            codes[row * steps : (row + 1) * steps, d] = values
        return self.decode(codes)

    def _reconstruction_grid(self, x: Tensor) -> tuple[Tensor, int]:
        mu, _ = self.encoder(x)
        return torch.cat([x, self.decode(mu)]), len(x)

    def on_validation_epoch_start(self) -> None:
        self._grid_batch = None

    # ---- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def latent_codes(self, loader, max_batches: int | None = None) -> tuple[Tensor, Tensor]:
        """Posterior means ``mu`` of every image of ``loader`` and the batches' second item (labels/attributes)."""
        was_training = self.training
        self.eval()
        codes, labels = [], []
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            mu, _ = self.encoder(batch[0].to(self.device))
            codes.append(mu.cpu())
            labels.append(batch[1].cpu())
        self.train(was_training)
        return torch.cat(codes), torch.cat(labels)


class GuidedVAE(_GuidedBackbone):
    """Unsupervised Guided-VAE: deformable-PCA guidance of ``z = (z_def, z_cont)``.

    Args:
        in_channels, image_size: image shape (MNIST: 1, 28).
        latent_dim: bottleneck size ``d_z``.
        def_dim: the first ``def_dim`` latents are ``z_def``, the others ``z_cont`` (``K = latent_dim - def_dim``
            basis images). ``rotation``/``scaling`` use ``z_1``; ``both``: ``z_1`` rotation, ``z_2`` scaling;
            ``affine``: all of ``z_def`` through a learned linear map.
        deformation: ``rotation``, ``scaling``, ``both``, ``affine`` or ``none`` (the PCA-only ablation).
        arch, arch_kwargs: backbone pair of :mod:`lightning_modules.nets.vae` and its extra arguments.
        beta: weight of the KL term (1: VAE; > 1: beta-VAE).
        guide_weight: weight of the deformable-PCA loss (0 switches the guide off: plain VAE / beta-VAE).
        unit_norm_weight: weight of ``sum_k (||b_k||^2 - 1)^2`` (0: off).
        likelihood: ``bernoulli`` (images in [0, 1], decoder logits) or ``gaussian`` (unit variance).
        traversal_limit, traversal_steps: the latent sweep of the traversal grids.
    """

    hparams_metrics = ("val/loss", "val/recon", "val/mse", "val/guide")

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 10,
        def_dim: int = 2,
        deformation: Literal["rotation", "scaling", "both", "affine", "none"] = "both",
        arch: str = "conv",
        arch_kwargs: dict[str, Any] | None = None,
        beta: float = 1.0,
        guide_weight: float = 1.0,
        unit_norm_weight: float = 0.0,
        mean_image: bool = True,
        likelihood: Likelihood = "bernoulli",
        traversal_limit: float = 3.0,
        traversal_steps: int = 9,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        if not 0 <= def_dim < latent_dim:
            raise ValueError(f"def_dim must leave at least one content variable: 0 <= def_dim < latent_dim={latent_dim}, got {def_dim}")
        if deformation != "affine" and def_dim < DEFORMATIONS[deformation]:
            raise ValueError(f"deformation {deformation!r} needs def_dim >= {DEFORMATIONS[deformation]}, got {def_dim}")
        self.optimizer, self.scheduler = optimizer, scheduler
        self._build_backbone(arch, in_channels, image_size, latent_dim, arch_kwargs)
        self.guide = DeformablePCA(
            (in_channels, image_size, image_size), latent_dim - def_dim, def_dim, deformation, mean_image,
            "sigmoid" if likelihood == "bernoulli" else "linear",
        )

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_def, z_cont)``."""
        d = self.hparams.def_dim
        return z[:, :d], z[:, d:]

    def guide_reconstruction(self, z: Tensor) -> Tensor:
        """The secondary decoder's ``T_{tau(z_def)}(B z_cont)``."""
        return self.guide(*self.split(z))

    def _step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x = batch[0]
        mu, logvar, z = self._encode(x, sample=stage == "train")
        terms = self._elbo_terms(x, mu, logvar, z)
        loss = terms["recon"] + self.hparams.beta * terms["kl"]
        if self.hparams.guide_weight > 0:
            terms["guide"] = F.mse_loss(self.guide_reconstruction(z), x, reduction="sum") / x.shape[0]
            loss = loss + self.hparams.guide_weight * terms["guide"]
        if self.hparams.unit_norm_weight > 0:
            terms["unit_norm"] = self.guide.unit_norm_penalty()
            loss = loss + self.hparams.unit_norm_weight * terms["unit_norm"]
        terms["loss"] = loss
        self._log_terms(stage, terms, x.shape[0])
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._remember_grid_batch(batch[0], batch_idx)
        self._step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        mu, logvar = self.encoder(batch[0])
        z_def, z_cont = self.split(mu)
        return {"mu": mu, "logvar": logvar, "z_def": z_def, "z_cont": z_cont, "reconstruction": self.decode(mu)}

    def configure_optimizers(self):
        params = [p for name, p in self.named_parameters() if self.hparams.guide_weight > 0 or not name.startswith("guide.")]
        optimizer = self.optimizer(params)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": "val/loss"}}

    def image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]:
        """Reconstructions, traversals of the guided latents ``z_def`` (and all latents), the PCA guide's output and basis."""
        if self._grid_batch is None:
            return {}
        x = self._grid_batch
        steps = self.hparams.traversal_steps
        d = self.hparams.def_dim
        grids: dict[str, Tensor | tuple[Tensor, int]] = {
            "val/reconstructions": self._reconstruction_grid(x),
            "val/traversal_all": (self.traversal(x, range(self.hparams.latent_dim)), steps),
        }
        if d > 0:
            grids["val/traversal_guided"] = (self.traversal(x, range(d)), steps)
        if self.hparams.guide_weight > 0:
            mu, _ = self.encoder(x)
            grids["val/guide_reconstructions"] = (torch.cat([x, self.guide_reconstruction(mu)]), len(x))
            grids["val/pca_basis"] = self.guide.basis_images()
        return grids


class SupervisedGuidedVAE(_GuidedBackbone):
    """Supervised Guided-VAE: adversarial excitation (``z_t``) and inhibition (``z_rst_t``) of ``T`` attributes.

    Batches are ``(images, attributes)`` with ``attributes`` ``(N, A)`` in {0, 1} (or {-1, +1}); the chosen
    attribute columns are given by name (resolved against the data module's ``attribute_names`` /
    ``attr_names``, else the 40 official CelebA names) or index. Latent ``z_{t}`` (``t = 0..T-1``, the first
    ``T`` latents) carries attribute ``t``.

    Args:
        guide_attributes: the ``T`` guided attributes (names or column indices; ``attributes`` is the data module's).
        excitation_weight: weight of the hinge ``max(0, 1 - y_t z_t)`` (summed over attributes).
        inhibition_weight: weight of the encoder's adversarial term.
        inhibition: ``maximize`` (the paper: the encoder maximises the adversary's cross-entropy) or
            ``confuse`` (the encoder drives the adversary's prediction to 1/2; a bounded variant).
        adversary_hidden: width of the ``C_t`` MLPs.
        adversary_steps: updates of the ``C_t`` per batch (on the same detached codes) before the VAE's
            update: the inhibition needs an adversary close to "the best possible classifier".
        optimizer: for the encoder and decoder; adversary_optimizer: for the ``C_t``.
        Others as :class:`GuidedVAE`.
    """

    hparams_metrics = ("val/loss", "val/recon", "val/excitation_err", "val/adversary_err")

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 64,
        latent_dim: int = 16,
        guide_attributes: list[str | int] = ("Smiling", "Male", "Black_Hair"),  # type: ignore[assignment]
        arch: str = "conv64",
        arch_kwargs: dict[str, Any] | None = None,
        beta: float = 1.0,
        excitation_weight: float = 1.0,
        inhibition_weight: float = 1.0,
        inhibition: Literal["maximize", "confuse"] = "maximize",
        adversary_hidden: int = 32,
        adversary_steps: int = 1,
        likelihood: Likelihood = "bernoulli",
        traversal_limit: float = 3.0,
        traversal_steps: int = 9,
        optimizer: OptimizerCallable = torch.optim.Adam,
        adversary_optimizer: OptimizerCallable = torch.optim.Adam,
    ) -> None:
        super().__init__()
        guide_attributes = list(guide_attributes)
        self.save_hyperparameters(ignore=["optimizer", "adversary_optimizer"])
        if not 1 <= len(guide_attributes) < latent_dim:
            raise ValueError(f"need 1 <= number of attributes < latent_dim={latent_dim}, got {len(guide_attributes)}")
        if adversary_steps < 1:
            raise ValueError(f"adversary_steps must be >= 1, got {adversary_steps}")
        if inhibition not in ("maximize", "confuse"):
            raise ValueError(f"inhibition must be 'maximize' or 'confuse', got {inhibition!r}")
        self.automatic_optimization = False
        self.optimizer, self.adversary_optimizer = optimizer, adversary_optimizer
        self._build_backbone(arch, in_channels, image_size, latent_dim, arch_kwargs)
        self.adversaries = nn.ModuleList(LatentClassifier(latent_dim - 1, adversary_hidden) for _ in guide_attributes)
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
        """The encoder's side of the game (minimised): ``-adversary_loss`` or the cross-entropy to 1/2."""
        if self.hparams.inhibition == "maximize":
            return -self.adversary_loss(z, y)
        half = torch.full_like(y[:, 0], 0.5)
        return sum(F.binary_cross_entropy_with_logits(c(self.rest(z, t)), half) for t, c in enumerate(self.adversaries))

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

    def vae_step(self, x: Tensor, y: Tensor, encoded: tuple[Tensor, Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """One update of encoder and decoder (first optimizer): ELBO + excitation + inhibition, the ``C_t`` held fixed.

        ``encoded``: ``(mu, logvar, z)`` of ``x`` when already computed (the training step shares one forward pass).
        """
        opt = self.optimizers()[0]
        self.toggle_optimizer(opt)
        mu, logvar, z = encoded if encoded is not None else self._encode(x, sample=True)
        terms = self._elbo_terms(x, mu, logvar, z)
        terms["excitation"] = self.excitation_loss(z, y)
        terms["inhibition"] = self.inhibition_loss(z, y)
        loss = (
            terms["recon"] + self.hparams.beta * terms["kl"]
            + self.hparams.excitation_weight * terms["excitation"] + self.hparams.inhibition_weight * terms["inhibition"]
        )
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.untoggle_optimizer(opt)
        terms["loss"] = loss.detach()
        return {key: value.detach() for key, value in terms.items()}

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
        encoded = self._encode(x, sample=True)
        for _ in range(self.hparams.adversary_steps):
            adversary = self.adversary_step(encoded[2], y)
        terms = self.vae_step(x, y, encoded)
        terms["adversary"] = adversary
        self._log_terms("train", terms, x.shape[0])
        with torch.no_grad():
            self._accuracies("train", encoded[2].detach(), y)

    def _eval_step(self, batch: Sequence[Tensor], stage: str) -> None:
        x, y = batch[0], self.targets(batch[1])
        mu, logvar, z = self._encode(x, sample=False)
        terms = self._elbo_terms(x, mu, logvar, z)
        terms["excitation"] = self.excitation_loss(z, y)
        terms["adversary"] = self.adversary_loss(z, y)
        terms["loss"] = terms["recon"] + self.hparams.beta * terms["kl"] + self.hparams.excitation_weight * terms["excitation"]
        z_t_pred = (z[:, : y.shape[1]] > 0).float()
        terms["excitation_err"] = (z_t_pred != y).float().mean()
        adv_pred = torch.stack([(c(self.rest(z, t)) > 0).float() for t, c in enumerate(self.adversaries)], 1)
        terms["adversary_err"] = (adv_pred != y).float().mean()
        self._log_terms(stage, terms, x.shape[0])
        self._accuracies(stage, z, y)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._remember_grid_batch(batch[0], batch_idx)
        self._eval_step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        mu, logvar = self.encoder(batch[0])
        T = len(self.hparams.guide_attributes)
        return {"mu": mu, "logvar": logvar, "z_t": mu[:, :T], "attribute_probs": torch.sigmoid(mu[:, :T])}

    def configure_optimizers(self):
        vae = self.optimizer([*self.encoder.parameters(), *self.decoder.parameters()])
        adversary = self.adversary_optimizer(self.adversaries.parameters())
        return [vae, adversary]

    def image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]:
        """Reconstructions and, per attribute, a traversal of ``z_t`` for a few images."""
        if self._grid_batch is None:
            return {}
        x = self._grid_batch
        steps = self.hparams.traversal_steps
        grids: dict[str, Tensor | tuple[Tensor, int]] = {"val/reconstructions": self._reconstruction_grid(x)}
        for t, name in enumerate(self.attribute_names):
            rows = [self.traversal(x[i : i + 1], [t]) for i in range(min(4, len(x)))]
            grids[f"val/traversal/{name}"] = (torch.cat(rows), steps)
        return grids


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

