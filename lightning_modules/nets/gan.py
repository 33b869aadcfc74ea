"""Generators and discriminators: an MLP pair for 2-D toys and DCGANs for 28, 32 and 64 px images.

Discriminators output one raw score per sample (a logit for the GAN loss, a critic value for WGAN-GP).
``norm`` of a discriminator: ``batch`` (DCGAN), ``layer`` (WGAN-GP: its penalty forbids batch statistics)
or ``none``; ``spectral_norm=True`` wraps every weight layer in spectral normalisation (SN-GAN).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

Norm = Literal["batch", "layer", "none"]


def _maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return _sn(layer) if enabled else layer


class MLPGenerator(nn.Module):
    """``latent_dim`` -> ``layers`` x (Linear, ReLU) of ``hidden`` -> ``out_dim`` (Metz et al.'s toy generator)."""

    def __init__(self, latent_dim: int = 256, out_dim: int = 2, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        d = latent_dim
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(d, out_dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``in_dim`` -> ``layers`` x (Linear, ReLU) of ``hidden`` -> 1."""

    def __init__(self, in_dim: int = 2, hidden: int = 128, layers: int = 2, spectral_norm: bool = False) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            blocks += [_maybe_sn(nn.Linear(d, hidden), spectral_norm), nn.ReLU()]
            d = hidden
        self.net = nn.Sequential(*blocks, _maybe_sn(nn.Linear(d, 1), spectral_norm))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def _plan(image_size: int) -> tuple[int, int]:
    """(start side, number of x2 stages): 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4)."""
    plans = {28: (7, 2), 32: (4, 3), 64: (4, 4)}
    if image_size not in plans:
        raise ValueError(f"DCGAN supports image sizes {sorted(plans)}, got {image_size}")
    return plans[image_size]


def _init_dcgan(module: nn.Module) -> None:
    """Radford et al.: N(0, 0.02) weights, N(1, 0.02) batch-norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z -> (start x start x base * 2^stages) -> stride-2 transposed convs with batch norm -> tanh image."""

    def __init__(self, latent_dim: int = 100, channels: int = 1, image_size: int = 64, base: int = 64) -> None:
        super().__init__()
        start, stages = _plan(image_size)
        width = base * 2 ** (stages - 1)
        self.latent_dim = latent_dim
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width, start, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)
        ]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_dcgan(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image -> stride-2 convs (LeakyReLU 0.2, ``norm``) -> a (start x start) conv to one score."""

    def __init__(
        self, channels: int = 1, image_size: int = 64, base: int = 64, norm: Norm = "batch", spectral_norm: bool = False
    ) -> None:
        super().__init__()
        start, stages = _plan(image_size)
        layers: list[nn.Module] = []
        c, width, side = channels, base, image_size
        for i in range(stages):
            layers.append(_maybe_sn(nn.Conv2d(c, width, 4, 2, 1, bias=norm == "none" or i == 0), spectral_norm))
            side //= 2
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            elif i > 0 and norm == "layer":
                layers.append(nn.GroupNorm(1, width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c, width = width, width * 2
        layers.append(_maybe_sn(nn.Conv2d(c, 1, side, 1, 0), spectral_norm))
        self.net = nn.Sequential(*layers)
        _init_dcgan(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten()
