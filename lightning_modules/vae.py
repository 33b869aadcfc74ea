"""One VAE LightningModule for the whole family (Disentanglement-PyTorch): the objective is a list of loss terms.

``loss = reconstruction + sum(term(out) for term in losses)`` with the terms of
:mod:`lightning_modules.vae_losses` (``KLTerm``, ``CapacityTerm``, ``BetaTCTerm``, ``FactorVAETerm``,
``DIPTerm``, ``MMDTerm``, ``IFCVAETerm``), so VAE, beta-VAE, controlled capacity, beta-TCVAE, FactorVAE, DIP-VAE-I/II and
InfoVAE and IFCVAE are configs, and compatible terms combine (e.g. beta-TCVAE + capacity). Encoder/decoder pair
(``arch``: ``conv64``, ``conv``, ``mlp``) and ``latent_dim`` are config choices. A conditional VAE (CVAE)
is the same module with ``cond_factors``: those label columns (one-hot) go into encoder and decoder.

Optimisation: automatic (one optimizer) unless a term has a discriminator (FactorVAE); then manual:
each step updates the VAE (the term's discriminator frozen), then the discriminator with its own
Adam optimizer on ``z`` (class 0) vs dimension-wise permuted ``z`` (class 1) from the same batch. Under
DDP run FactorVAE with ``--trainer.strategy=ddp_find_unused_parameters_true``. Schedulers come from the
config; ``ReduceLROnPlateau`` monitors ``monitor`` (default ``val/loss``).

Logs ``{train,val,test}/loss``, ``/recon``, and each term's diagnostics (``kl``, ``tc``, ``mi``,
``dwkl``, ``capacity``, ``dip``, ``mmd``, ``aux_ce``, ``aux_acc``, ``adv_confusion``, ``<term>_disc_loss``, ``<term>_disc_acc``). Image grids for the
``ImageGrids`` callback: reconstructions, prior samples, latent traversals (each latent swept over
``[-traversal_range, traversal_range]`` from ``num_fixed`` fixed validation inputs); optional GIFs of the
traversals in the run folder (``gif_every_n_epochs``). ``representation(x, factors)`` (posterior means)
is what the disentanglement-metrics callback scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_modules.base import PaperzooModule
from lightning_modules.nets.vae import build_decoder, build_encoder
from lightning_modules.vae_losses import KLTerm, LossTerm, VAEOutput, reconstruction_loss


class VAE(PaperzooModule):
    """VAE family with composable loss terms.

    Args:
        arch: encoder/decoder pair (``conv64`` the paper's 64 px nets, ``conv`` for 28/32 px, ``mlp``).
        in_channels, image_size, latent_dim: data and latent sizes.
        arch_kwargs: extra constructor arguments of both networks (e.g. ``{"hidden": [256]}`` for ``mlp``).
        losses: the loss terms added to the reconstruction loss (default ``[KLTerm(beta=1)]``: plain VAE).
        recon: ``bernoulli`` (BCE on logits) or ``gaussian`` (squared error of the sigmoid mean).
        dataset_size: N in beta-TCVAE's estimator (default: the size of the training set).
        cond_factors, cond_classes: CVAE: label columns used as condition and their number of classes.
        traversal_range, traversal_steps, num_fixed: latent traversal grid.
        gif_every_n_epochs: write ``traversal_epoch<E>.gif`` into the log folder every N validation epochs (0: never).
        optimizer, scheduler: injected from the config; ``monitor``: metric for ReduceLROnPlateau.

    The loss terms are modules, not saved hyperparameters: restore with the CLI and the run's config
    (``--ckpt_path``), or ``VAE.load_from_checkpoint(path, losses=[...])`` with the same terms.
    """

    hparams_metrics = ("val/loss", "val/recon", "val/disent/mig", "val/disent/factor_vae", "val/disent/beta_vae", "val/disent/dci_disentanglement")

    def __init__(
        self,
        arch: Literal["conv64", "conv", "mlp"] = "conv64",
        in_channels: int = 1,
        image_size: int = 64,
        latent_dim: int = 10,
        arch_kwargs: dict[str, Any] | None = None,
        losses: list[LossTerm] | None = None,
        recon: Literal["bernoulli", "gaussian"] = "bernoulli",
        dataset_size: int | None = None,
        cond_factors: Sequence[int] | None = None,
        cond_classes: Sequence[int] | None = None,
        traversal_range: float = 3.0,
        traversal_steps: int = 9,
        num_fixed: int = 3,
        gif_every_n_epochs: int = 0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "losses"])
        self.optimizer = optimizer
        self.scheduler = scheduler
        cond_factors, cond_classes = list(cond_factors or []), list(cond_classes or [])
        if len(cond_factors) != len(cond_classes):
            raise ValueError("cond_factors and cond_classes must have the same length")
        self.cond_factors, self.cond_classes = cond_factors, cond_classes
        cond_dim = sum(cond_classes)
        kwargs = dict(arch_kwargs or {})
        self.encoder = build_encoder(arch, in_channels, image_size, latent_dim, cond_dim, **kwargs)
        self.decoder = build_decoder(arch, in_channels, image_size, latent_dim, cond_dim, **kwargs)
        self.losses = nn.ModuleList(losses if losses is not None else [KLTerm(1.0)])
        self.adversarial = [t for t in self.losses if getattr(t, "discriminator", None) is not None]
        for t in self.adversarial:
            d_in = next(m for m in t.discriminator.modules() if isinstance(m, nn.Linear)).in_features
            expected = latent_dim - getattr(t, "k", 0)
            if d_in != expected:
                raise ValueError(f"{type(t).__name__} discriminator takes {d_in} latents, expected {expected}: set its latent_dim to {latent_dim}")
        self.automatic_optimization = not self.adversarial
        self.register_buffer("prior_noise", torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(0)), persistent=False)
        self._fixed: tuple[Tensor, Tensor | None] | None = None

    # ----------------------------------------------------------------------------------------- model

    def condition(self, factors: Tensor | None) -> Tensor | None:
        """One-hot condition of the CVAE from label columns (``None`` for an unconditional VAE)."""
        if not self.cond_factors:
            return None
        if factors is None:
            raise ValueError("this VAE is conditional (cond_factors set): batches must carry labels")
        factors = factors.long()
        if factors.dim() == 1:
            factors = factors[:, None]
        parts = [F.one_hot(factors[:, f], n).float() for f, n in zip(self.cond_factors, self.cond_classes)]
        return torch.cat(parts, dim=1)

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.encoder(x, c)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Decoder logits; ``torch.sigmoid`` of them are the Bernoulli means / images."""
        return self.decoder(z, c)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits, mu, logvar, z) with one reparameterised sample z."""
        mu, logvar = self.encode(x, c)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, c), mu, logvar, z

    @torch.no_grad()
    def representation(self, x: Tensor, factors: Tensor | None = None) -> Tensor:
        """Posterior means: the representation scored by disentanglement metrics."""
        return self.encode(x, self.condition(factors))[0]

    # --------------------------------------------------------------------------------------- training

    @property
    def dataset_size(self) -> int:
        if self.hparams.dataset_size:
            return int(self.hparams.dataset_size)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        train_set = getattr(dm, "train_set", None)
        return len(train_set) if train_set is not None else 1

    def _objective(self, batch: Sequence[Tensor], stage: str) -> tuple[Tensor, VAEOutput, dict[str, Tensor]]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        labels = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        c = self.condition(labels)
        logits, mu, logvar, z = self(x, c)
        # Lightning counts every optimizer's step in global_step: annealing follows VAE updates (= batches)
        step = self.global_step // (1 + len(self.adversarial))
        out = VAEOutput(x=x, logits=logits, mu=mu, logvar=logvar, z=z, step=step, dataset_size=self.dataset_size, labels=labels)
        recon = reconstruction_loss(x, logits, self.hparams.recon)
        logs: dict[str, Tensor] = {"recon": recon}
        loss = recon
        for term in self.losses:
            value, term_logs = term(out)
            loss = loss + value
            logs.update(term_logs)
        logs["loss"] = loss
        if stage != "train" and self._fixed is None:
            n = self.hparams.num_fixed
            self._fixed = (x[:n].detach().clone(), None if labels is None else labels[:n].detach().clone())
        return loss, out, logs

    def _log(self, logs: dict[str, Tensor], stage: str) -> None:
        train = stage == "train"
        for key, value in logs.items():
            self.log(f"{stage}/{key}", value.detach(), on_step=train, on_epoch=not train, prog_bar=key == "loss", sync_dist=not train)

    def _step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        loss, _, logs = self._objective(batch, stage)
        self._log(logs, stage)
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self._step(batch, "train")
        opt_vae, *opt_ds = self.optimizers()
        self.toggle_optimizer(opt_vae)
        loss, out, logs = self._objective(batch, "train")
        opt_vae.zero_grad()
        self.manual_backward(loss)
        opt_vae.step()
        self.untoggle_optimizer(opt_vae)
        for term, opt_d in zip(self.adversarial, opt_ds):
            self.toggle_optimizer(opt_d)
            d_loss, d_acc = term.discriminator_loss(out)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            name = type(term).__name__.removesuffix("Term").lower()
            logs.update({f"{name}_disc_loss": d_loss, f"{name}_disc_acc": d_acc})
        self._log(logs, "train")
        return None

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> dict[str, Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        labels = batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None
        c = self.condition(labels)
        mu, logvar = self.encode(x, c)
        return {"mu": mu, "logvar": logvar, "recon": torch.sigmoid(self.decode(mu, c))}

    def _vae_parameters(self) -> list[nn.Parameter]:
        disc = {id(p) for t in self.adversarial for p in t.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in disc]

    def configure_optimizers(self):
        optimizer = self.optimizer(self._vae_parameters())
        if self.automatic_optimization:
            if self.scheduler is None:
                return optimizer
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "monitor": self.hparams.monitor}}
        optimizers = [optimizer] + [t.make_optimizer() for t in self.adversarial]
        if self.scheduler is None:
            return optimizers
        return optimizers, [{"scheduler": self.scheduler(optimizer), "monitor": self.hparams.monitor}]

    def on_validation_epoch_end(self) -> None:
        # manual optimisation: Lightning does not step schedulers; do it per epoch like automatic mode
        if not self.automatic_optimization and self.scheduler is not None and not self.trainer.sanity_checking:
            sched = self.lr_schedulers()
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(self.hparams.monitor)
                if value is not None:
                    sched.step(value)
            else:
                sched.step()
        every = self.hparams.gif_every_n_epochs
        if every and not self.trainer.sanity_checking and self.current_epoch % every == 0 and self.trainer.is_global_zero:
            log_dir = self.trainer.log_dir or self.trainer.default_root_dir
            self.save_traversal_gif(Path(log_dir) / f"traversal_epoch{self.current_epoch}.gif")

    # ------------------------------------------------------------------------------------ visualising

    def _fixed_inputs(self) -> tuple[Tensor, Tensor | None]:
        if self._fixed is None:
            raise RuntimeError("no validation batch seen yet: run validation first")
        x, labels = self._fixed
        return x.to(self.device), None if labels is None else labels.to(self.device)

    @torch.no_grad()
    def traversal(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images ``(latent_dim, steps, C, H, W)``: each latent of ``x``'s mean swept over the range, others fixed."""
        c = self.condition(labels)
        mu, _ = self.encode(x[None] if x.dim() == 3 else x[:1], c[:1] if c is not None else None)
        d, steps = mu.shape[1], self.hparams.traversal_steps
        values = torch.linspace(-self.hparams.traversal_range, self.hparams.traversal_range, steps, device=mu.device)
        z = mu.repeat(d * steps, 1).view(d, steps, d)
        idx = torch.arange(d, device=mu.device)
        z[idx, :, idx] = values
        cc = None if c is None else c[:1].expand(d * steps, -1)
        return torch.sigmoid(self.decode(z.view(d * steps, d), cc)).view(d, steps, *x.shape[-3:])

    @torch.no_grad()
    def image_grids(self) -> dict[str, Tensor | tuple[Tensor, int]]:
        """Grids for the ``ImageGrids`` callback: reconstructions, prior samples, one traversal per fixed input."""
        x, labels = self._fixed_inputs()
        c = self.condition(labels)
        mu, _ = self.encode(x, c)
        grids: dict[str, Tensor | tuple[Tensor, int]] = {
            "recon": (torch.cat([x, torch.sigmoid(self.decode(mu, c))]), len(x)),
        }
        noise = self.prior_noise
        c_prior = None
        if self.cond_factors:
            first = torch.arange(len(noise), device=noise.device) % self.cond_classes[0]
            c_prior = torch.cat([F.one_hot(first, self.cond_classes[0]).float()] +
                                [torch.zeros(len(noise), n, device=noise.device) for n in self.cond_classes[1:]], dim=1)
        grids["samples"] = (torch.sigmoid(self.decode(noise, c_prior)), 8)
        for i in range(len(x)):
            trav = self.traversal(x[i : i + 1], None if labels is None else labels[i : i + 1])
            grids[f"traversal/{i}"] = (trav.flatten(0, 1), self.hparams.traversal_steps)
        return grids

    @torch.no_grad()
    def save_traversal_gif(self, path: str | Path, duration: float = 0.15) -> Path:
        """Animated GIF: frame t shows, for every fixed input (rows) and latent (columns), step t of the sweep."""
        import imageio.v2 as imageio

        was_training = self.training
        self.eval()
        x, labels = self._fixed_inputs()
        travs = torch.stack([self.traversal(x[i : i + 1], None if labels is None else labels[i : i + 1]) for i in range(len(x))])
        if was_training:
            self.train()
        n, d, steps, ch, h, w = travs.shape
        order = list(range(steps)) + list(range(steps - 2, 0, -1))  # ping-pong
        frames = []
        for t in order:
            frame = travs[:, :, t].permute(0, 3, 1, 4, 2).reshape(n * h, d * w, ch)
            frames.append((frame.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8).squeeze(-1) if ch == 1 else (frame.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimsave(path, frames, duration=duration, loop=0)
        return path

    # ------------------------------------------------------------------------------------------ state

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams_metrics:
            # the loss terms are modules (not hyperparameters): describe them once in the text tab
            text = "; ".join(f"{type(t).__name__}({_term_args(t)})" for t in self.losses)
            for logger in self.loggers:
                experiment = getattr(logger, "experiment", None)
                if hasattr(experiment, "add_text") and self.trainer.is_global_zero:
                    experiment.add_text("loss_terms", text, global_step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._fixed is not None:
            checkpoint["vae_fixed_inputs"] = [t.cpu() if t is not None else None for t in self._fixed]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fixed = checkpoint.get("vae_fixed_inputs")
        if fixed is not None:
            self._fixed = (fixed[0], fixed[1])


def _term_args(term: nn.Module) -> str:
    names = [k for k, v in vars(term).items() if not k.startswith("_") and isinstance(v, (int, float, str, tuple)) and k != "training"]
    return ", ".join(f"{k}={getattr(term, k)}" for k in names)
