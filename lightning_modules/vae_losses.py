"""Composable loss terms of the VAE family (Disentanglement-PyTorch: mix and match compatible objectives).

A term is a small ``nn.Module``; :class:`~lightning_modules.vae.VAE` sums the reconstruction loss and
every term in its ``losses`` list. A term maps a :class:`VAEOutput` (the batch, its posterior
parameters, a sample ``z``, the global step and the data-set size) to ``(loss, logs)``: the weighted
scalar it adds to the objective and unweighted diagnostics logged as ``train/<key>``.

Objectives as lists (``class_path`` short names in a config):

==============  =================================================================
VAE             ``[KLTerm(beta=1)]``
beta-VAE        ``[KLTerm(beta=4)]``
capacity (Burgess et al.)  ``[CapacityTerm(gamma=1000, c_max=25, c_stop_steps=100000)]``
beta-TCVAE      ``[BetaTCTerm(alpha=1, beta=6, gamma=1)]`` (minibatch weighted sampling)
FactorVAE       ``[KLTerm(beta=1), FactorVAETerm(gamma=35)]`` (discriminator, own optimizer)
DIP-VAE-I/II    ``[KLTerm(beta=1), DIPTerm(kind="i"|"ii", lambda_od=10, lambda_d=100|10)]``
InfoVAE         ``[KLTerm(beta=1 - alpha), MMDTerm(weight=alpha + lambda - 1)]``
IFCVAE          ``[KLTerm(beta=1), IFCVAETerm(attr_factors=[0, 1], attr_classes=[3, 6], aux_weight=100)]`` (known attributes)
==============  =================================================================

All per-sample quantities are summed over latent dimensions / pixels and averaged over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEOutput:
    """What a loss term may look at."""

    x: Tensor  # input images (N, C, H, W)
    logits: Tensor  # decoder output for z (N, C, H, W)
    mu: Tensor  # posterior means (N, D)
    logvar: Tensor  # posterior log-variances (N, D)
    z: Tensor  # one reparameterised sample per input (N, D)
    step: int = 0  # global optimisation step (for annealed terms)
    dataset_size: int = 1  # number of training examples (beta-TCVAE's estimator)
    labels: Tensor | None = None  # the batch's label columns (factor classes / attributes), if any


# ---------------------------------------------------------------------------------------------- helpers


def kl_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample and dimension, shape of ``mu``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(z; mu, exp(logvar)) (broadcasting)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def reconstruction_loss(x: Tensor, logits: Tensor, kind: Literal["bernoulli", "gaussian"] = "bernoulli") -> Tensor:
    """Negative log-likelihood per image, summed over pixels, averaged over the batch.

    ``bernoulli``: binary cross-entropy on logits (targets in [0, 1]); ``gaussian``: squared error of
    ``sigmoid(logits)`` (unit variance, constants dropped), as disentanglement_lib's l2 loss.
    """
    if kind == "bernoulli":
        per = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "gaussian":
        per = (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r} (bernoulli or gaussian)")
    return per.flatten(1).sum(1).mean()


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle each latent dimension independently across the batch: samples of prod_j q(z_j)."""
    n, d = z.shape
    idx = torch.argsort(torch.rand(n, d, device=z.device, generator=generator), dim=0)
    return torch.gather(z, 0, idx)


def gaussian_kernel(a: Tensor, b: Tensor) -> Tensor:
    """k(a, b) = exp(-||a - b||^2 / D^2) (the InfoVAE reference's kernel: exp(-mean_d (a_d - b_d)^2 / D))."""
    d = a.shape[1]
    return torch.exp(-torch.cdist(a, b).pow(2) / (d * d))


def mmd(a: Tensor, b: Tensor) -> Tensor:
    """Biased (V-statistic) squared MMD between samples ``a`` and ``b`` with :func:`gaussian_kernel`."""
    return gaussian_kernel(a, a).mean() + gaussian_kernel(b, b).mean() - 2 * gaussian_kernel(a, b).mean()


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, dataset_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """beta-TCVAE's ELBO-TC decomposition (Chen et al., 2018), minibatch weighted sampling (MWS).

    With q(z|x_j) evaluated for every sample z_i of the batch (size M) and data set size N,
    ``log q(z_i) ~= logsumexp_j log q(z_i|x_j) - log(N M)`` and
    ``log prod_d q(z_id) ~= sum_d [logsumexp_j log q(z_id|x_j) - log(N M)]``.
    Returns batch means of (index-code MI, total correlation, dimension-wise KL):
    ``E[log q(z|x) - log q(z)]``, ``E[log q(z) - log prod_d q(z_d)]``, ``E[log prod_d q(z_d) - log p(z)]``.
    Their sum is ``E[log q(z|x) - log p(z)]``, a one-sample estimate of KL(q(z|x) || p(z)).
    """
    m = z.shape[0]
    log_qz_x = log_normal(z, mu, logvar).sum(1)  # (M,)
    log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    mat = log_normal(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # (M, M, D): z_i under q(.|x_j)
    log_nm = math.log(dataset_size * m)
    log_qz = torch.logsumexp(mat.sum(2), dim=1) - log_nm
    log_prod_qzd = (torch.logsumexp(mat, dim=1) - log_nm).sum(1)
    return (log_qz_x - log_qz).mean(), (log_qz - log_prod_qzd).mean(), (log_prod_qzd - log_pz).mean()


def dip_covariance(mu: Tensor, logvar: Tensor, kind: Literal["i", "ii"]) -> Tensor:
    """DIP-VAE's matrix: Cov[mu(x)] (I) or Cov_q(z) = Cov[mu(x)] + E[diag(exp(logvar))] (II)."""
    centred = mu - mu.mean(0, keepdim=True)
    cov = centred.T @ centred / mu.shape[0]
    if kind == "ii":
        cov = cov + torch.diag(logvar.exp().mean(0))
    return cov


def dip_penalty(cov: Tensor, lambda_od: float, lambda_d: float) -> Tensor:
    """lambda_od * sum_{i != j} cov_ij^2 + lambda_d * sum_i (cov_ii - 1)^2."""
    diag = torch.diagonal(cov)
    off = cov - torch.diag(diag)
    return lambda_od * off.pow(2).sum() + lambda_d * (diag - 1).pow(2).sum()


# ------------------------------------------------------------------------------------------- the terms


class LossTerm(nn.Module):
    """Base of the terms. Subclasses implement ``forward(out) -> (loss, logs)``.

    A term that owns a ``discriminator`` submodule (and ``discriminator_loss``, ``make_optimizer``) is
    trained adversarially; the module then optimises manually.
    """

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover - interface
        raise NotImplementedError


class KLTerm(LossTerm):
    """``beta * KL(q(z|x) || N(0, I))`` (closed form): VAE with beta = 1, beta-VAE with beta > 1."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        kl = kl_normal(out.mu, out.logvar).sum(1).mean()
        return self.beta * kl, {"kl": kl}


class CapacityTerm(LossTerm):
    """Controlled capacity increase (Burgess et al., 2018): ``gamma * |KL - C|``.

    ``C`` grows linearly from ``c_start`` to ``c_max`` nats over ``c_stop_steps`` optimiser steps, then stays.
    """

    def __init__(self, gamma: float = 1000.0, c_max: float = 25.0, c_stop_steps: int = 100_000, c_start: float = 0.0) -> None:
        super().__init__()
        if c_stop_steps <= 0:
            raise ValueError("c_stop_steps must be positive")
        self.gamma, self.c_max, self.c_stop_steps, self.c_start = gamma, c_max, c_stop_steps, c_start

    def capacity(self, step: int) -> float:
        frac = min(max(step, 0) / self.c_stop_steps, 1.0)
        return self.c_start + (self.c_max - self.c_start) * frac

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        kl = kl_normal(out.mu, out.logvar).sum(1).mean()
        c = self.capacity(out.step)
        return self.gamma * (kl - c).abs(), {"kl": kl, "capacity": kl.new_tensor(c)}


class BetaTCTerm(LossTerm):
    """beta-TCVAE: ``alpha * MI + beta * TC + gamma * dim-wise KL``, estimated by minibatch weighted sampling.

    (Chen et al. 2018, eq. 2 and section 3.3.) With ``alpha = beta = gamma = 1`` this is a
    stochastic estimate of the plain KL term.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        mi, tc, dwkl = tc_decomposition(out.z, out.mu, out.logvar, out.dataset_size)
        loss = self.alpha * mi + self.beta * tc + self.gamma * dwkl
        return loss, {"mi": mi, "tc": tc, "dwkl": dwkl}


class FactorDiscriminator(nn.Module):
    """FactorVAE's discriminator: an MLP (``layers`` x ``hidden`` LeakyReLU(0.2)) giving 2 logits (q(z), prod q(z_j))."""

    def __init__(self, latent_dim: int = 10, hidden: int = 1000, layers: int = 6) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = latent_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden), nn.LeakyReLU(0.2, inplace=True)]
            d = hidden
        mods.append(nn.Linear(d, 2))
        self.net = nn.Sequential(*mods)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class FactorVAETerm(LossTerm):
    """FactorVAE (Kim & Mnih, 2018): ``gamma * TC`` with ``TC ~= E[D_0(z) - D_1(z)]`` (density-ratio trick).

    The discriminator ``D`` separates samples of q(z) (class 0) from samples of prod_j q(z_j) (class 1,
    obtained by permuting each dimension across the batch). It has its own optimizer (Adam, ``lr``,
    ``betas``; the paper's 1e-4, (0.5, 0.9)) and is updated by :meth:`discriminator_loss` after every
    VAE step (manual optimisation in the module). Pair it with ``KLTerm(beta=1)``.
    """

    def __init__(
        self,
        gamma: float = 35.0,
        latent_dim: int = 10,
        hidden: int = 1000,
        layers: int = 6,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.9),
    ) -> None:
        super().__init__()
        self.gamma, self.lr, self.betas = gamma, lr, tuple(betas)
        self.discriminator = FactorDiscriminator(latent_dim, hidden, layers)

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.discriminator(out.z)
        tc = (logits[:, 0] - logits[:, 1]).mean()
        return self.gamma * tc, {"tc": tc}

    def discriminator_loss(self, out: VAEOutput) -> tuple[Tensor, Tensor]:
        """Cross-entropy of D on ``z`` (label 0) and permuted ``z`` (label 1); returns (loss, accuracy)."""
        z, z_perm = out.z.detach(), permute_dims(out.z.detach())
        logits = self.discriminator(torch.cat([z, z_perm]))
        target = torch.cat([torch.zeros(len(z), dtype=torch.long), torch.ones(len(z_perm), dtype=torch.long)]).to(z.device)
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(1) == target).float().mean()
        return loss, acc

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)


class DIPTerm(LossTerm):
    """DIP-VAE (Kumar et al., 2018): moments of the aggregate posterior pushed towards the identity.

    ``kind="i"``: on Cov[mu(x)]; ``kind="ii"``: on Cov_q(z) = Cov[mu(x)] + E[diag(sigma^2(x))].
    Penalty ``lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2``
    (disentanglement_lib: lambda_d = 10 * lambda_od for I, lambda_d = lambda_od for II). Pair with ``KLTerm``.
    """

    def __init__(self, kind: Literal["i", "ii"] = "i", lambda_od: float = 10.0, lambda_d: float | None = None) -> None:
        super().__init__()
        if kind not in ("i", "ii"):
            raise ValueError(f"DIP kind must be 'i' or 'ii', got {kind!r}")
        self.kind, self.lambda_od = kind, lambda_od
        self.lambda_d = lambda_d if lambda_d is not None else (10.0 if kind == "i" else 1.0) * lambda_od

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        cov = dip_covariance(out.mu, out.logvar, self.kind)
        return dip_penalty(cov, self.lambda_od, self.lambda_d), {"dip": dip_penalty(cov, 1.0, 1.0)}


class MMDTerm(LossTerm):
    """InfoVAE / MMD-VAE (Zhao et al., 2019): ``weight * MMD^2(q(z), N(0, I))``.

    Kernel: :func:`gaussian_kernel`, ``exp(-||a - b||^2 / D^2)``; ``n_prior`` prior samples per step
    (biased V-statistic). InfoVAE's objective is ``recon + (1 - alpha) KL + (alpha + lambda - 1) MMD``:
    combine with ``KLTerm(beta=1 - alpha)`` and ``weight = alpha + lambda - 1``.
    """

    def __init__(self, weight: float = 500.0, n_prior: int = 1000) -> None:
        super().__init__()
        self.weight, self.n_prior = weight, n_prior

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        prior = torch.randn(self.n_prior, out.z.shape[1], device=out.z.device, dtype=out.z.dtype)
        value = mmd(prior, out.z)
        return self.weight * value, {"mmd": value}


class IFCVAETerm(LossTerm):
    """Information factorisation (after Creswell et al., 2017, as in Disentanglement-PyTorch's IFCVAE).

    The first ``num_attr_latents`` latents (default ``sum(attr_classes)``: one per class, like the reference's
    label code of ``total_num_classes`` units) are forced to encode known attributes (label columns
    ``attr_factors`` with ``attr_classes`` classes): a positive *auxiliary* classifier on them (linear, or an
    MLP with ``aux_hidden`` units) is trained with the VAE (``aux_weight * CE``). The other latents are
    cleared of the attributes by a negative *adversarial* discriminator (an MLP with its own Adam optimizer)
    that predicts the attributes from them; the VAE minimises ``adv_weight * CE(adversary, uniform)`` (the
    adversary's confusion). Both classifiers read ``code``: the posterior means ``mu`` (default: the
    representation that is scored and traversed; the reference's label encoder is deterministic too) or the
    sample ``z``.
    """

    def __init__(
        self,
        attr_factors: list[int],
        attr_classes: list[int],
        latent_dim: int = 10,
        num_attr_latents: int | None = None,
        aux_weight: float = 10.0,
        adv_weight: float = 10.0,
        hidden: int = 256,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        code: Literal["mu", "z"] = "mu",
        aux_hidden: int = 0,
    ) -> None:
        super().__init__()
        if len(attr_factors) != len(attr_classes) or not attr_factors:
            raise ValueError("attr_factors and attr_classes must be non-empty and of the same length")
        if code not in ("mu", "z"):
            raise ValueError(f"code must be 'mu' or 'z', got {code!r}")
        self.attr_factors, self.attr_classes = list(attr_factors), list(attr_classes)
        self.k = num_attr_latents if num_attr_latents is not None else sum(attr_classes)
        if not 0 < self.k < latent_dim:
            raise ValueError(f"num_attr_latents must be in (0, latent_dim={latent_dim}), got {self.k}")
        self.aux_weight, self.adv_weight, self.lr, self.betas, self.code = aux_weight, adv_weight, lr, tuple(betas), code
        self.auxiliary = (
            nn.Sequential(nn.Linear(self.k, aux_hidden), nn.LeakyReLU(0.2), nn.Linear(aux_hidden, sum(attr_classes)))
            if aux_hidden else nn.Linear(self.k, sum(attr_classes))
        )
        self.discriminator = nn.Sequential(
            nn.Linear(latent_dim - self.k, hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, sum(attr_classes)),
        )

    def _targets(self, out: VAEOutput) -> list[Tensor]:
        if out.labels is None:
            raise ValueError("IFCVAETerm needs labelled batches (images, labels)")
        labels = out.labels.long()
        if labels.dim() == 1:
            labels = labels[:, None]
        return [labels[:, f] for f in self.attr_factors]

    def _split(self, logits: Tensor) -> list[Tensor]:
        return list(logits.split(self.attr_classes, dim=1))

    def _code(self, out: VAEOutput) -> Tensor:
        return out.mu if self.code == "mu" else out.z

    def predict(self, code: Tensor) -> list[Tensor]:
        """Auxiliary classifier: class logits of each attribute from a ``(N, latent_dim)`` code's forced latents."""
        return self._split(self.auxiliary(code[:, : self.k]))

    def forward(self, out: VAEOutput) -> tuple[Tensor, dict[str, Tensor]]:
        targets = self._targets(out)
        code = self._code(out)
        aux = self.predict(code)
        aux_ce = sum(F.cross_entropy(a, t) for a, t in zip(aux, targets))
        aux_acc = torch.stack([(a.argmax(1) == t).float().mean() for a, t in zip(aux, targets)]).mean()
        adv = self._split(self.discriminator(code[:, self.k :]))
        confusion = sum(-F.log_softmax(a, dim=1).mean(1).mean() for a in adv)
        loss = self.aux_weight * aux_ce + self.adv_weight * confusion
        return loss, {"aux_ce": aux_ce, "aux_acc": aux_acc, "adv_confusion": confusion}

    def discriminator_loss(self, out: VAEOutput) -> tuple[Tensor, Tensor]:
        """The adversary's cross-entropy predicting the attributes from the non-attribute latents."""
        targets = self._targets(out)
        adv = self._split(self.discriminator(self._code(out)[:, self.k :].detach()))
        loss = sum(F.cross_entropy(a, t) for a, t in zip(adv, targets))
        acc = torch.stack([(a.argmax(1) == t).float().mean() for a, t in zip(adv, targets)]).mean()
        return loss, acc

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas)
