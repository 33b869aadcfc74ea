"""GANs with manual optimisation: MLP GAN (2-D toys), DCGAN (28/32/64 px), WGAN-GP and SN-DCGAN.

Paper: "Generative Adversarial Network Training is a Continual Learning Problem" (EWC-GAN / IS-GAN).
The continual-learning penalties are callbacks (:mod:`callbacks.continual`), so any variant here becomes
EWC-GAN or IS-GAN by adding ``EWCPenalty`` / ``ISPenalty`` (target ``discriminator``) to the trainer's
callbacks. EWC's default ``fisher="deferred"`` needs nothing from the module: the importance of a task comes
from the next discriminator step's own gradient (new real batch, new generated samples) at the task's end
parameters. For ``fisher="extra_pass"`` the module provides ``importance_loss()``: the discriminator loss on
the previous step's real batch (fresh to the current parameters) and freshly generated samples (no gradient
penalty).

Variants (``arch`` x ``loss`` x ``spectral_norm``):

* GAN / SN-GAN on the toy: ``arch=mlp``, ``loss=gan`` (non-saturating), ``spectral_norm`` false/true;
* DCGAN: ``arch=dcgan``, ``loss=gan``; SN-DCGAN: plus ``spectral_norm=true`` (batch norm off in D);
* WGAN-GP: ``arch=dcgan``, ``loss=wgan-gp`` (layer norm in D, ``n_critic`` D steps per G step).

Logged: ``train/d_loss``, ``train/g_loss``; on toys with a known mixture (a DataModule with ``centers``
and ``std``) ``val/icp``, ``val/sym_kl``, ``val/modes``, ``val/hq_fraction`` at every validation
(``trainer.val_check_interval`` sets "every N steps"); on images ``val/fid`` (and ``val/is`` with a
classifier or Inception network), ``test/fid``, ``test/is`` against the real validation / test images.
``image_grids()`` gives fixed-noise samples (images) or a 2-D histogram of samples (toys) for
:class:`callbacks.images.ImageGrids`.

FID / IS features (``fid_network``): ``classifier`` = the paper-agnostic ``ImageClassifier`` checkpoint at
``fid_weights`` (e.g. trained with ``lightning fit --config configs/classifier_mnist.yaml``; features of its
``fc`` layer, IS from its logits); ``random`` = :class:`metrics.generative.RandomConvFeatures` (fixed
seed, untrained: FID comparable only between our own runs); ``inception`` = a torchvision Inception-v3
state dict at ``fid_weights``; ``auto`` = ``classifier`` if ``fid_weights`` exists, else ``random`` (with
a warning); ``none`` = no FID. FID in random features is logged as ``val/fid_random`` / ``test/fid_random``
so that it is never mistaken for a classifier or Inception FID.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lightning_modules.base import PaperzooModule
from lightning_modules.nets.gan import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator
from metrics.generative import FeatureExtractor, MixtureScores, RandomConvFeatures, inception_v3_features

log = logging.getLogger(__name__)

Arch = Literal["mlp", "dcgan"]
Loss = Literal["gan", "wgan-gp", "hinge"]
FidNetwork = Literal["auto", "classifier", "random", "inception", "none"]


def _adam(params):
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class GAN(PaperzooModule):
    """A generator/discriminator pair trained alternately with manual optimisation.

    Args:
        arch: ``mlp`` (2-D data) or ``dcgan`` (images).
        loss: ``gan`` (non-saturating BCE), ``wgan-gp`` (critic + gradient penalty) or ``hinge``.
        spectral_norm: spectral normalisation on every discriminator layer (SN-GAN).
        latent_dim: size of z (standard normal).
        data_dim: dimension of the 2-D toy's points (``mlp``).
        hidden, layers: width and depth of the MLPs.
        image_size, channels, base_channels: DCGAN shape (28/32/64 px; 1 or 3 channels; width of the first layer).
        d_norm: discriminator normalisation; ``auto`` = batch (gan), none (spectral norm), layer (wgan-gp).
        n_critic: discriminator steps per generator step (one D step per batch).
        gp_weight: WGAN-GP's gradient-penalty weight.
        optimizer_g, optimizer_d: optimizers (injected from the config).
        eval_samples: generated samples scored at each validation on toys.
        fid_network, fid_weights: see the module docstring; ``fid_samples`` caps the real images per stage.
        fid_mean, fid_std: normalisation of the classifier's inputs (MNIST standardisation by default).
        num_grid: fixed-noise samples in the image grid.
    """

    hparams_metrics = ("val/fid", "val/fid_random", "val/icp", "val/sym_kl", "val/modes")

    def __init__(
        self,
        arch: Arch = "dcgan",
        loss: Loss = "gan",
        spectral_norm: bool = False,
        latent_dim: int = 100,
        data_dim: int = 2,
        hidden: int = 128,
        layers: int = 2,
        image_size: int = 32,
        channels: int = 1,
        base_channels: int = 64,
        d_norm: Literal["auto", "batch", "layer", "none"] = "auto",
        n_critic: int = 1,
        gp_weight: float = 10.0,
        optimizer_g: OptimizerCallable = _adam,
        optimizer_d: OptimizerCallable = _adam,
        eval_samples: int = 10_000,
        fid_network: FidNetwork = "random",
        fid_weights: str | None = None,
        fid_samples: int = 10_000,
        fid_mean: float | Sequence[float] = 0.1307,
        fid_std: float | Sequence[float] = 0.3081,
        num_grid: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer_g", "optimizer_d"])
        self.automatic_optimization = False
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        if d_norm == "auto":
            d_norm = "layer" if loss == "wgan-gp" else "none" if spectral_norm else "batch"
        if loss == "wgan-gp" and d_norm == "batch":
            raise ValueError("WGAN-GP's gradient penalty is per sample: use d_norm layer or none, not batch")
        if arch == "mlp":
            self.generator: nn.Module = MLPGenerator(latent_dim, data_dim, hidden, layers)
            self.discriminator: nn.Module = MLPDiscriminator(data_dim, hidden, layers, spectral_norm)
        elif arch == "dcgan":
            self.generator = DCGANGenerator(latent_dim, channels, image_size, base_channels)
            self.discriminator = DCGANDiscriminator(channels, image_size, base_channels, d_norm, spectral_norm)
        else:
            raise ValueError(f"unknown arch {arch!r}")
        self.register_buffer("fixed_z", torch.randn(num_grid, latent_dim, generator=torch.Generator().manual_seed(0)))
        self._previous_real: Tensor | None = None
        self._current_real: Tensor | None = None
        self._metrics: dict[str, Any] = {}  # FID/IS/mixture metrics: not children, so not in the state dict
        self.last_scores: dict[str, float] = {}
        self._fid_real_seen = {"val": 0, "test": 0}

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def sample(self, n: int) -> Tensor:
        """``n`` generated samples (no gradient)."""
        with torch.no_grad():
            return self.generator(torch.randn(n, self.hparams.latent_dim, device=self.device))

    # ------------------------------------------------------------------ losses
    def d_loss(self, real: Tensor, fake: Tensor, penalty: bool = True) -> Tensor:
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        kind = self.hparams.loss
        if kind == "gan":
            return F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy_with_logits(
                d_fake, torch.zeros_like(d_fake)
            )
        if kind == "hinge":
            return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        loss = d_fake.mean() - d_real.mean()
        if penalty:
            loss = loss + self.hparams.gp_weight * self.gradient_penalty(real, fake)
        return loss

    def g_loss(self, fake: Tensor) -> Tensor:
        d_fake = self.discriminator(fake)
        if self.hparams.loss == "gan":
            return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
        return -d_fake.mean()

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        """WGAN-GP: ``(||grad_x D(x_hat)|| - 1)^2`` at random interpolates of real and fake samples."""
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        eps = torch.rand(shape, device=real.device, dtype=real.dtype)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(x_hat).sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def importance_loss(self) -> Tensor:
        """The discriminator loss on a fresh minibatch (for the EWC penalty's Fisher information)."""
        real = self._previous_real if self._previous_real is not None else self._current_real
        if real is None:
            raise RuntimeError("importance_loss() is only available during training")
        fake = self.sample(real.shape[0])
        return self.d_loss(real, fake, penalty=False)

    # ------------------------------------------------------------------ training
    @staticmethod
    def _real(batch: Any) -> Tensor:
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = self._real(batch)
        opt_g, opt_d = self.optimizers()
        n = real.shape[0]
        self._current_real = real.detach()

        self.toggle_optimizer(opt_d)
        fake = self.sample(n)
        d_loss = self.d_loss(real, fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self._previous_real = real.detach()
        self.log("train/d_loss", d_loss.detach(), prog_bar=True)

        if (batch_idx + 1) % self.hparams.n_critic == 0:
            self.toggle_optimizer(opt_g)
            fake = self.generator(torch.randn(n, self.hparams.latent_dim, device=self.device))
            g_loss = self.g_loss(fake)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            opt_g.step()
            self.untoggle_optimizer(opt_g)
            self.log("train/g_loss", g_loss.detach(), prog_bar=True)

    # ------------------------------------------------------------------ evaluation
    def _mixture(self) -> tuple[Tensor, float] | None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "centers") and hasattr(dm, "std"):
            return dm.centers, float(dm.std)
        return None

    def _image_metrics(self, stage: str) -> dict[str, Any]:
        if stage not in self._metrics:
            self._metrics[stage] = self._build_image_metrics()
        metrics = self._metrics[stage]
        for metric in metrics.values():
            metric.to(self.device)
        return metrics

    def _build_image_metrics(self) -> dict[str, Any]:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        hp = self.hparams
        kind = self.fid_kind
        if kind == "none":
            return {}
        if kind == "random":
            net = RandomConvFeatures(hp.channels, seed=0)
            features = FeatureExtractor(net, None, net.num_features, in_range=(-1.0, 1.0), mean=0.5, std=0.5)
            return {"fid_random": FrechetInceptionDistance(feature=features, normalize=True, sync_on_compute=True)}
        if hp.fid_weights is None or not Path(hp.fid_weights).is_file():
            hint = (
                "train the classifier first: lightning fit --config configs/classifier_mnist.yaml "
                "(writes runs/classifier_mnist/checkpoints/last.ckpt)"
                if kind == "classifier"
                else "give a torchvision Inception-v3 state dict (inception_v3_google-0cc3c7bd.pth)"
            )
            raise FileNotFoundError(f"fid_network={kind} needs fid_weights, not found: {hp.fid_weights!r}; {hint}, "
                                    "or use fid_network=random")
        if kind == "classifier":
            from lightning_modules.classifier import ImageClassifier

            clf = ImageClassifier.load_from_checkpoint(hp.fid_weights, map_location="cpu")
            size, channels, hidden = clf.hparams.image_size, clf.hparams.in_channels, clf.hparams.hidden
            common = dict(image_size=size, in_range=(-1.0, 1.0), mean=hp.fid_mean, std=hp.fid_std, channels=channels)
            feats = FeatureExtractor(clf.net, "fc", hidden, **common)
            clf_logits = ImageClassifier.load_from_checkpoint(hp.fid_weights, map_location="cpu")
            logits = FeatureExtractor(clf_logits.net, None, clf.hparams.num_classes, **common)
        else:
            imagenet = dict(image_size=299, in_range=(-1.0, 1.0), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channels=3)
            feats = FeatureExtractor(inception_v3_features(hp.fid_weights), None, 2048, **imagenet)
            head = inception_v3_features(hp.fid_weights, logits=True)
            logits = FeatureExtractor(head, None, head.num_features, **imagenet)
        return {
            "fid": FrechetInceptionDistance(feature=feats, normalize=True, sync_on_compute=True),
            "is": InceptionScore(feature=logits, normalize=False, splits=1, sync_on_compute=True),
        }

    @property
    def fid_kind(self) -> str:
        """The feature network in use (``auto`` resolved)."""
        kind, weights = self.hparams.fid_network, self.hparams.fid_weights
        if kind == "auto":
            kind = "classifier" if weights is not None and Path(weights).is_file() else "random"
            if kind == "random" and not getattr(self, "_warned_fid", False):
                log.warning("fid_network=auto: %r not found, logging FID in random features (*/fid_random); "
                            "train the classifier (lightning fit --config configs/classifier_mnist.yaml) for val/fid",
                            weights)
                self._warned_fid = True
        return kind

    def _eval_step(self, batch: Any, stage: str) -> None:
        if self.hparams.arch == "mlp":
            return
        metrics = self._image_metrics(stage)
        fid = metrics.get("fid") or metrics.get("fid_random")
        if fid is None or self._fid_real_seen[stage] >= self.hparams.fid_samples:
            return
        real = self._real(batch)[: self.hparams.fid_samples - self._fid_real_seen[stage]]
        self._fid_real_seen[stage] += real.shape[0]
        fid.update(real, real=True)
        for chunk in self.sample(real.shape[0]).split(256):
            fid.update(chunk, real=False)
            if "is" in metrics:
                metrics["is"].update(chunk)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_end(self, stage: str) -> None:
        scores: dict[str, Tensor] = {}
        mixture = self._mixture() if self.hparams.arch == "mlp" else None
        if mixture is not None:
            scores = self.mixture_scores(self.hparams.eval_samples)
        elif self.hparams.arch != "mlp":
            metrics = self._image_metrics(stage)
            if self._fid_real_seen[stage] > 1:
                for key in ("fid", "fid_random"):
                    if key in metrics:
                        scores[key] = metrics[key].compute()
                if "is" in metrics:
                    scores["is"] = metrics["is"].compute()[0]
            for metric in metrics.values():
                metric.reset()
            self._fid_real_seen[stage] = 0
        if scores and not self.trainer.sanity_checking:
            self.log_dict({f"{stage}/{k}": v.float().to(self.device) for k, v in scores.items()}, sync_dist=False)
        self.last_scores = {k: float(v) for k, v in scores.items()}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def mixture_scores(self, n: int = 10_000) -> dict[str, Tensor]:
        """ICP, symmetric KL, modes covered and high-quality fraction of ``n`` samples (the toy's metrics)."""
        mixture = self._mixture()
        if mixture is None:
            raise RuntimeError("mixture_scores() needs a DataModule with `centers` and `std` (GaussianMixtureDataModule)")
        centers, std = mixture
        metric = MixtureScores(centers, std)
        metric.update(self.sample(n).cpu())
        return metric.compute()

    # ------------------------------------------------------------------ hooks
    def configure_optimizers(self):
        return [self.optimizer_g(self.generator.parameters()), self.optimizer_d(self.discriminator.parameters())]

    def image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]:
        """Fixed-noise samples (images), or a 2-D histogram of ``eval_samples`` samples (toys)."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            if self.hparams.arch == "mlp":
                x = self.sample(self.hparams.eval_samples).cpu().double()
                hist = torch.histogramdd(x, bins=[128, 128], range=[-3.0, 3.0, -3.0, 3.0]).hist
                img = (hist / hist.max().clamp_min(1)).sqrt().t().flip(0)  # y up
                return {"samples/histogram": (img[None, None].float() * 2 - 1, 1)}
            return {"samples/fixed_noise": self.generator(self.fixed_z.to(self.device))}
        finally:
            self.generator.train(was_training)
