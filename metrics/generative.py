"""Generative-model metrics: the 8-Gaussians scores of the EWC-GAN paper, and FID / IS feature extractors.

Mixture of Gaussians (``K`` isotropic components with equal weights, centres ``mu_k``, std ``sigma``):

* **ICP** (:func:`mixture_inception_score`): the inception score with the mixture's exact posterior
  ``p(k | x)`` as the classifier: ``exp(E_x KL(p(k|x) || p(k)))`` with ``p(k) = E_x p(k|x)`` over the
  generated samples. At most ``K``; the true data of 8 Gaussians (radius 2, covariance 0.02 I) score
  ~7.99 with this exact posterior (the paper quotes 7.870 for its true data).
* **Symmetric KL** (:func:`mixture_symmetric_kl`), the estimator: a ``bins x bins`` grid over
  ``[-extent, extent]^2`` (default 60 x 60 over [-3, 3]^2). ``p`` = the true mixture's probability of each
  cell (exact, from normal CDFs, renormalised over the grid); ``q`` = the generated samples' cell
  frequencies. Both are smoothed by mixing with the uniform distribution, ``(1 - eps) p + eps / C``
  with ``eps = 1e-3``, then ``KL(p || q) + KL(q || p)`` (nats).
* **modes covered**: components that own at least ``min_fraction`` (default 1%) of the generated samples
  as *high-quality* samples; **high-quality fraction**: samples within ``3 sigma`` of their nearest centre.

:class:`MixtureScores` is a ``torchmetrics.Metric`` (samples gathered with ``dist_reduce_fx="cat"``).

Images: :class:`FeatureExtractor` turns any classifier ``nn.Module`` into the ``feature`` network of
``torchmetrics``' ``FrechetInceptionDistance`` (features of a named layer, ``num_features`` set) or
``InceptionScore`` (its logits); :class:`RandomConvFeatures` is a fixed-seed, untrained conv net for
data sets with no trained network at hand (FID in random features: comparable between runs that use
the same seed, not with published numbers); :func:`inception_v3_features` loads a torchvision
Inception-v3 from a local weights file. Nothing here downloads anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def mixture_centers(modes: int = 8, radius: float = 2.0) -> Tensor:
    """``modes`` points evenly spaced on a circle of ``radius`` (the first at angle 0)."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], dim=1)


def mixture_posterior(x: Tensor, centers: Tensor, std: float) -> Tensor:
    """``p(k | x)`` for an equal-weight isotropic Gaussian mixture: ``(N, K)``."""
    d2 = torch.cdist(x.double(), centers.double()).pow(2)
    return torch.softmax(-d2 / (2 * std**2), dim=1)


def mixture_inception_score(x: Tensor, centers: Tensor, std: float) -> Tensor:
    """ICP: the inception score with the mixture posterior as classifier."""
    p_yx = mixture_posterior(x, centers, std)
    p_y = p_yx.mean(0, keepdim=True)
    kl = (p_yx * (torch.log(p_yx.clamp_min(1e-30)) - torch.log(p_y.clamp_min(1e-30)))).sum(1)
    return kl.mean().exp()


def _normal_cdf(t: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(t / math.sqrt(2)))


def mixture_cell_probabilities(centers: Tensor, std: float, bins: int = 60, extent: float = 3.0) -> Tensor:
    """Exact probability of each grid cell under the mixture, renormalised over the grid: ``(bins, bins)``."""
    edges = torch.linspace(-extent, extent, bins + 1, dtype=torch.float64)
    probs = torch.zeros(bins, bins, dtype=torch.float64)
    for cx, cy in centers.double():
        px = _normal_cdf((edges[1:] - cx) / std) - _normal_cdf((edges[:-1] - cx) / std)
        py = _normal_cdf((edges[1:] - cy) / std) - _normal_cdf((edges[:-1] - cy) / std)
        probs += torch.outer(px, py)
    return probs / probs.sum()


def mixture_symmetric_kl(
    x: Tensor, centers: Tensor, std: float, bins: int = 60, extent: float = 3.0, eps: float = 1e-3
) -> Tensor:
    """Symmetric KL between the true mixture and the samples ``x`` on a grid (see the module docstring)."""
    p = mixture_cell_probabilities(centers, std, bins, extent).flatten()
    x = x.double()
    idx = ((x + extent) / (2 * extent) * bins).floor().long()
    inside = ((idx >= 0) & (idx < bins)).all(1)
    idx = idx[inside]
    q = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins * bins).double()
    q = q / max(len(x), 1)  # samples outside the grid are mass that p lacks: leave it out of q's cells
    cells = bins * bins
    p = (1 - eps) * p + eps / cells
    q = (1 - eps) * q / q.sum().clamp_min(1e-30) + eps / cells
    return (p * (p / q).log()).sum() + (q * (q / p).log()).sum()


def mixture_mode_stats(x: Tensor, centers: Tensor, std: float, min_fraction: float = 0.01) -> tuple[Tensor, Tensor]:
    """(modes covered, fraction of high-quality samples): high quality = within 3 std of the nearest centre."""
    dist = torch.cdist(x.double(), centers.double())
    nearest, which = dist.min(1)
    good = nearest < 3 * std
    counts = torch.bincount(which[good], minlength=len(centers))
    covered = (counts >= max(1, math.ceil(min_fraction * len(x)))).sum()
    return covered, good.double().mean()


class MixtureScores(Metric):
    """ICP, symmetric KL, modes covered and high-quality fraction of 2-D samples against a known mixture.

    ``update(samples)`` gathers samples; ``compute()`` returns ``{"icp", "sym_kl", "modes", "hq_fraction"}``.
    """

    full_state_update = False

    def __init__(self, centers: Tensor, std: float, bins: int = 60, extent: float = 3.0, min_fraction: float = 0.01,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("centers", centers.double().clone(), persistent=False)
        self.std, self.bins, self.extent, self.min_fraction = float(std), bins, extent, min_fraction
        self.add_state("samples", default=[], dist_reduce_fx="cat")

    def update(self, samples: Tensor) -> None:
        if samples.dim() != 2 or samples.shape[1] != 2:
            raise ValueError(f"MixtureScores expects (N, 2) samples, got {tuple(samples.shape)}")
        self.samples.append(samples.detach().double())

    def compute(self) -> dict[str, Tensor]:
        x = dim_zero_cat(self.samples).cpu()
        centers = self.centers.cpu()
        modes, hq = mixture_mode_stats(x, centers, self.std, self.min_fraction)
        return {
            "icp": mixture_inception_score(x, centers, self.std).float(),
            "sym_kl": mixture_symmetric_kl(x, centers, self.std, self.bins, self.extent).float(),
            "modes": modes.float(),
            "hq_fraction": hq.float(),
        }


class FeatureExtractor(nn.Module):
    """A frozen network as FID / IS feature extractor.

    Args:
        net: the network (kept in eval mode, no gradients).
        layer: name of the submodule whose (flattened) output are the features; ``None``: the output.
        num_features: feature size (torchmetrics reads it).
        image_size: resize inputs (bilinear) to this side first; ``None``: leave them.
        in_range: the range of the images given to ``forward`` (e.g. ``(-1, 1)`` for tanh generators).
        mean, std: normalisation the network was trained with, applied after mapping to [0, 1].
        channels: repeat a grey channel to this many channels (3 for RGB networks), or average RGB to 1.
    """

    def __init__(
        self,
        net: nn.Module,
        layer: str | None,
        num_features: int,
        image_size: int | None = None,
        in_range: tuple[float, float] = (-1.0, 1.0),
        mean: float | tuple[float, ...] = 0.0,
        std: float | tuple[float, ...] = 1.0,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.layer, self.num_features, self.image_size = layer, num_features, image_size
        self.in_range, self.channels = in_range, channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False)
        self._captured: Tensor | None = None
        if layer is not None:
            net.get_submodule(layer).register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        self._captured = output

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        lo, hi = self.in_range
        x = (x - lo) / (hi - lo)
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.repeat(1, self.channels, 1, 1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        out = self.net(x)
        if self.layer is not None:
            out = self._captured
            self._captured = None
        return out.flatten(1).float()


class RandomConvFeatures(nn.Module):
    """An untrained conv net with fixed-seed weights: 4 stride-2 conv + LeakyReLU blocks, global average pool.

    Deterministic for a given ``seed``; features of size ``width * 8``.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        c = in_channels
        for mult in (1, 2, 4, 8):
            conv = nn.Conv2d(c, width * mult, 4, 2, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (c * 16)))
                conv.bias.zero_()
            layers += [conv, nn.LeakyReLU(0.2)]
            c = width * mult
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def inception_v3_features(weights_path: str, logits: bool = False) -> nn.Module:
    """torchvision's Inception-v3 from a local state-dict file (e.g. ``inception_v3_google-0cc3c7bd.pth``).

    Features: the 2048-d pooled output (``logits=False``) or the 1008/1000 class logits. Inputs: wrap it in
    :class:`FeatureExtractor` with ``image_size=299``, ``channels=3`` and the ImageNet mean/std.
    """
    from torchvision.models import inception_v3

    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    net = inception_v3(weights=None, aux_logits="AuxLogits.fc.weight" in state, init_weights=False, num_classes=num_classes)
    net.load_state_dict(state)
    if not logits:
        net.fc = nn.Identity()
    net.num_features = 2048 if not logits else num_classes
    return net


FeatureFactory = Callable[[], nn.Module]
