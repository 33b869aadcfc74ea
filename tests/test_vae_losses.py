"""Each VAE loss term against a direct computation on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_modules.vae_losses import (
    BetaTCTerm, CapacityTerm, DIPTerm, FactorVAETerm, KLTerm, MMDTerm, VAEOutput, dip_covariance, mmd,
    permute_dims, reconstruction_loss, tc_decomposition,
)


def _out(n=6, d=3, seed=0, **kw) -> VAEOutput:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g)
    logvar = torch.randn(n, d, generator=g) * 0.3
    z = mu + torch.randn(n, d, generator=g) * (0.5 * logvar).exp()
    x = (torch.rand(n, 1, 4, 4, generator=g) > 0.5).float()
    logits = torch.randn(n, 1, 4, 4, generator=g)
    return VAEOutput(x=x, logits=logits, mu=mu, logvar=logvar, z=z, **kw)


def test_kl_term_matches_torch_distributions() -> None:
    out = _out()
    direct = kl_divergence(Normal(out.mu, (0.5 * out.logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    loss, logs = KLTerm(beta=4.0)(out)
    assert torch.allclose(logs["kl"], direct, atol=1e-5)
    assert torch.allclose(loss, 4.0 * direct, atol=1e-5)


def test_reconstruction_bernoulli_is_summed_bce() -> None:
    out = _out()
    p = torch.sigmoid(out.logits)
    direct = -(out.x * p.log() + (1 - out.x) * (1 - p).log()).flatten(1).sum(1).mean()
    assert torch.allclose(reconstruction_loss(out.x, out.logits), direct, atol=1e-4)
    assert torch.allclose(reconstruction_loss(out.x, out.logits, "gaussian"), (p - out.x).pow(2).flatten(1).sum(1).mean())


def test_capacity_anneals_linearly_and_penalises_the_gap() -> None:
    term = CapacityTerm(gamma=100.0, c_max=20.0, c_stop_steps=1000)
    assert [term.capacity(s) for s in (0, 250, 1000, 5000)] == [0.0, 5.0, 20.0, 20.0]
    out = _out(step=500)
    kl = kl_divergence(Normal(out.mu, (0.5 * out.logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    loss, logs = term(out)
    assert float(logs["capacity"]) == 10.0
    assert torch.allclose(loss, 100.0 * (kl - 10.0).abs(), atol=1e-3)


def test_tc_decomposition_matches_explicit_loops() -> None:
    out = _out(n=4, d=3, dataset_size=50)
    mi, tc, dwkl = tc_decomposition(out.z, out.mu, out.logvar, 50)
    m, d = out.z.shape
    q = Normal(out.mu, (0.5 * out.logvar).exp())
    log_qz, log_prod, log_qzx, log_pz = [], [], [], []
    for i in range(m):
        dens = torch.stack([Normal(out.mu[j], (0.5 * out.logvar[j]).exp()).log_prob(out.z[i]) for j in range(m)])  # (M, D)
        log_qz.append(math.log(sum(math.exp(float(dens[j].sum())) for j in range(m)) / (50 * m)))
        log_prod.append(sum(math.log(sum(math.exp(float(dens[j, k])) for j in range(m)) / (50 * m)) for k in range(d)))
        log_qzx.append(float(q.log_prob(out.z)[i].sum()))
        log_pz.append(float(Normal(0.0, 1.0).log_prob(out.z[i]).sum()))
    log_qz, log_prod, log_qzx, log_pz = map(np.array, (log_qz, log_prod, log_qzx, log_pz))
    assert float(mi) == pytest.approx(np.mean(log_qzx - log_qz), abs=1e-4)
    assert float(tc) == pytest.approx(np.mean(log_qz - log_prod), abs=1e-4)
    assert float(dwkl) == pytest.approx(np.mean(log_prod - log_pz), abs=1e-4)


def test_tc_terms_sum_to_the_kl_in_expectation() -> None:
    """MI + TC + dim-wise KL = E[log q(z|x) - log p(z)]: a one-sample estimate of the closed-form KL."""
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g) * 0.3
    closed = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    totals = []
    for _ in range(400):
        z = mu + torch.randn(64, 5, generator=g) * (0.5 * logvar).exp()
        totals.append(sum(tc_decomposition(z, mu, logvar, 1000)).item())
    totals = np.array(totals)
    assert abs(totals.mean() - closed.item()) < 4 * totals.std() / np.sqrt(len(totals)) + 1e-3
    loss, logs = BetaTCTerm(alpha=1.0, beta=1.0, gamma=1.0)(_out(dataset_size=100))
    assert torch.allclose(loss, logs["mi"] + logs["tc"] + logs["dwkl"])


def test_permute_dims_keeps_each_marginal_and_breaks_the_joint() -> None:
    z = torch.arange(40.0).view(10, 4)
    p = permute_dims(z, torch.Generator().manual_seed(0))
    for k in range(4):
        assert sorted(p[:, k].tolist()) == z[:, k].tolist()
    assert not torch.equal(p, z)


def test_factorvae_term_and_discriminator_loss() -> None:
    term = FactorVAETerm(gamma=10.0, latent_dim=3, hidden=16, layers=3)
    out = _out()
    logits = term.discriminator(out.z)
    loss, logs = term(out)
    assert torch.allclose(logs["tc"], (logits[:, 0] - logits[:, 1]).mean())
    assert torch.allclose(loss, 10.0 * logs["tc"])
    d_loss, acc = term.discriminator_loss(out)
    assert d_loss.item() > 0 and 0.0 <= acc.item() <= 1.0
    assert not d_loss.requires_grad or all(p.grad is None for p in [out.z])


def _whitened(n: int, d: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    cov = x.T @ x / n
    w = torch.linalg.cholesky(torch.linalg.inv(cov))
    return x @ w  # covariance exactly I


def test_dip_terms_vanish_for_unit_diagonal_covariance_and_match_numpy() -> None:
    mu = _whitened(200, 4)
    out = VAEOutput(x=torch.zeros(1), logits=torch.zeros(1), mu=mu, logvar=torch.full_like(mu, -30.0), z=mu)
    assert DIPTerm("i", 10.0)(out)[0].item() == pytest.approx(0.0, abs=1e-8)
    half = mu * math.sqrt(0.5)  # Cov[mu] = I/2, E[sigma^2] = 1/2: Cov_q(z) = I
    out2 = VAEOutput(x=torch.zeros(1), logits=torch.zeros(1), mu=half, logvar=torch.full_like(mu, math.log(0.5)), z=half)
    assert DIPTerm("ii", 10.0)(out2)[0].item() == pytest.approx(0.0, abs=1e-8)
    assert DIPTerm("i", 10.0)(out2)[0].item() > 1.0  # DIP-I sees Cov[mu] = I/2
    # general case against numpy
    o = _out(n=50, d=3)
    cov = np.cov(o.mu.numpy().T, bias=True) + np.diag(o.logvar.exp().mean(0).numpy())
    direct = 2.0 * (cov[~np.eye(3, dtype=bool)] ** 2).sum() + 3.0 * ((np.diag(cov) - 1) ** 2).sum()
    assert DIPTerm("ii", lambda_od=2.0, lambda_d=3.0)(o)[0].item() == pytest.approx(direct, rel=1e-4)
    assert torch.allclose(dip_covariance(o.mu, o.logvar, "i"), torch.tensor(np.cov(o.mu.numpy().T, bias=True), dtype=torch.float32), atol=1e-5)


def test_mmd_matches_double_loop_and_is_zero_for_identical_samples() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g) + 1.0

    def k(u, v):
        return math.exp(-float(((u - v) ** 2).mean()) / 3)

    direct = (sum(k(x, y) for x in a for y in a) / 25 + sum(k(x, y) for x in b for y in b) / 16
              - 2 * sum(k(x, y) for x in a for y in b) / 20)
    assert mmd(a, b).item() == pytest.approx(direct, abs=1e-5)
    assert mmd(a, a).item() == pytest.approx(0.0, abs=1e-6)
    loss, logs = MMDTerm(weight=7.0, n_prior=500)(_out())
    assert torch.allclose(loss, 7.0 * logs["mmd"]) and logs["mmd"].item() > 0


def test_ifcvae_term_matches_direct_cross_entropies() -> None:
    from lightning_modules.vae_losses import IFCVAETerm

    term = IFCVAETerm(attr_factors=[1], attr_classes=[3], latent_dim=3, num_attr_latents=1, aux_weight=2.0, adv_weight=5.0, hidden=8, code="z")
    out = _out(n=6, d=3)
    out.labels = torch.tensor([[9, 0], [9, 1], [9, 2], [9, 0], [9, 1], [9, 2]])
    y = out.labels[:, 1]
    aux = torch.nn.functional.cross_entropy(term.auxiliary(out.z[:, :1]), y)
    adv_logits = term.discriminator(out.z[:, 1:])
    confusion = -torch.log_softmax(adv_logits, 1).mean()  # cross-entropy against the uniform distribution
    loss, logs = term(out)
    assert torch.allclose(loss, 2.0 * aux + 5.0 * confusion, atol=1e-5)
    d_loss, _ = term.discriminator_loss(out)
    assert torch.allclose(d_loss, torch.nn.functional.cross_entropy(adv_logits, y), atol=1e-5)
    with pytest.raises(ValueError, match="labelled"):
        term(_out(n=6, d=3))
    # default: both classifiers read the posterior means; one forced latent per class
    term_mu = IFCVAETerm(attr_factors=[1], attr_classes=[3], latent_dim=5, hidden=8)
    out = _out(n=6, d=5)
    out.labels = torch.tensor([[9, 0], [9, 1], [9, 2], [9, 0], [9, 1], [9, 2]])
    assert term_mu.k == 3 and term_mu.code == "mu"
    aux_mu = torch.nn.functional.cross_entropy(term_mu.auxiliary(out.mu[:, :3]), out.labels[:, 1])
    _, logs = term_mu(out)
    assert torch.allclose(logs["aux_ce"], aux_mu, atol=1e-6)
    with pytest.raises(ValueError, match="num_attr_latents"):
        IFCVAETerm(attr_factors=[1], attr_classes=[6], latent_dim=6)
