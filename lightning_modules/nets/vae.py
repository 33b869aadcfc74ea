"""Encoder/decoder pairs for VAEs: Gaussian encoders returning ``(mu, logvar)``, decoders returning logits.

Three pairs, all with the same small API (so a module can swap them from a config string):

* ``conv64``: the Disentanglement-PyTorch paper's networks for 64 x 64 images. Encoder: 5 convolutions
  (3 x 3, stride 2, 32 -> 256 kernels, ReLU) then one dense layer giving the Gaussian posterior.
  Decoder: one 1 x 1 convolution, then 6 transposed convolutions (4 x 4 kernels, stride 2, 256 kernels
  decreasing to the image's channels; the last one 3 x 3, stride 1, to land exactly on 64 x 64); ReLU
  everywhere except after the last layer of each network.
* ``conv``: a small pair for 28 or 32 px images (MNIST-size): 4 x 4 stride-2 convolutions
  (``channels``), a dense layer, and the mirror image with transposed convolutions.
* ``mlp``: fully connected pair for any small input (``hidden`` widths).

API (every class)::

    enc = build_encoder("conv64", in_channels=1, image_size=64, latent_dim=10, cond_dim=0)
    mu, logvar = enc(x)            # x: (N, C, H, W); with cond_dim > 0: enc(x, c), c: (N, cond_dim)
    dec = build_decoder("conv64", in_channels=1, image_size=64, latent_dim=10, cond_dim=0)
    logits = dec(z)                # (N, C, H, W) logits (apply sigmoid for Bernoulli means); dec(z, c)

``cond_dim`` > 0 makes a conditional pair (CVAE): the encoder sees ``c`` as extra constant image
channels (tiled over H x W), the decoder sees ``[z, c]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Conv64Encoder",
    "Conv64Decoder",
    "SmallConvEncoder",
    "SmallConvDecoder",
    "MLPEncoder",
    "MLPDecoder",
    "build_encoder",
    "build_decoder",
    "ARCHITECTURES",
]


def _tile(x: Tensor, c: Tensor | None, cond_dim: int) -> Tensor:
    """Append the condition ``c`` (N, cond_dim) to ``x`` (N, C, H, W) as constant channels."""
    if cond_dim == 0:
        return x
    if c is None or c.shape != (x.shape[0], cond_dim):
        raise ValueError(f"this network is conditional: pass c of shape ({x.shape[0]}, {cond_dim}), got {None if c is None else tuple(c.shape)}")
    return torch.cat([x, c.to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1)


def _cat(z: Tensor, c: Tensor | None, cond_dim: int) -> Tensor:
    if cond_dim == 0:
        return z
    if c is None or c.shape != (z.shape[0], cond_dim):
        raise ValueError(f"this network is conditional: pass c of shape ({z.shape[0]}, {cond_dim}), got {None if c is None else tuple(c.shape)}")
    return torch.cat([z, c.to(z.dtype)], dim=1)


def _check_input(x: Tensor, in_channels: int, image_size: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[-1] != image_size or x.shape[-2] != image_size:
        raise ValueError(f"expected images (N, {in_channels}, {image_size}, {image_size}), got {tuple(x.shape)}")


class _GaussianHead(nn.Module):
    """Shared by the encoders: features -> (mu, logvar) through one dense layer."""

    latent_dim: int

    def _split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar


class Conv64Encoder(_GaussianHead):
    """The paper's 64 x 64 encoder: 5 convs (3 x 3, stride 2, ReLU) then a dense layer to ``2 * latent_dim``."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        latent_dim: int = 10,
        cond_dim: int = 0,
        channels: Sequence[int] = (32, 64, 128, 256, 256),
    ) -> None:
        super().__init__()
        if image_size != 64:
            raise ValueError(f"Conv64Encoder needs 64 x 64 images, got image_size={image_size} (use 'conv' or 'mlp')")
        self.in_channels, self.image_size, self.latent_dim, self.cond_dim = in_channels, image_size, latent_dim, cond_dim
        layers: list[nn.Module] = []
        c_in = in_channels + cond_dim
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        side = image_size // 2 ** len(channels)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c_in * side * side, 2 * latent_dim)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_input(x, self.in_channels, self.image_size)
        return self._split(self.head(self.features(_tile(x, c, self.cond_dim))))


class Conv64Decoder(nn.Module):
    """The paper's 64 x 64 decoder: 1 x 1 conv, then 6 transposed convs (kernel 4, stride 2; last 3 x 3, stride 1).

    Spatial sizes: 1 -> 2 -> 6 -> 14 -> 30 -> 62 -> 64.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 64,
        latent_dim: int = 10,
        cond_dim: int = 0,
        channels: Sequence[int] = (256, 256, 128, 128, 64, 64),
    ) -> None:
        super().__init__()
        if image_size != 64:
            raise ValueError(f"Conv64Decoder makes 64 x 64 images, got image_size={image_size} (use 'conv' or 'mlp')")
        if len(channels) != 6:
            raise ValueError("Conv64Decoder needs 6 channel widths (1 conv + 5 strided transposed convs)")
        self.in_channels, self.image_size, self.latent_dim, self.cond_dim = in_channels, image_size, latent_dim, cond_dim
        ch = list(channels)
        layers: list[nn.Module] = [nn.Conv2d(latent_dim + cond_dim, ch[0], 1), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(ch[0], ch[1], 4, 2, 1), nn.ReLU(inplace=True)]  # 2 x 2
        for a, b in zip(ch[1:-1], ch[2:]):  # 6, 14, 30, 62
            layers += [nn.ConvTranspose2d(a, b, 4, 2), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(ch[-1], in_channels, 3, 1))  # 64
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.main(_cat(z, c, self.cond_dim)[:, :, None, None])


class SmallConvEncoder(_GaussianHead):
    """Conv encoder for small images (28 or 32 px): 4 x 4 stride-2 convs + ReLU, dense hidden layer, Gaussian head."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 10,
        cond_dim: int = 0,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.latent_dim, self.cond_dim = in_channels, image_size, latent_dim, cond_dim
        if image_size % 2 ** len(channels):
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(channels) = {2 ** len(channels)}")
        layers: list[nn.Module] = []
        c_in = in_channels + cond_dim
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU(inplace=True)]
            c_in = c_out
        side = image_size // 2 ** len(channels)
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_input(x, self.in_channels, self.image_size)
        return self._split(self.head(self.features(_tile(x, c, self.cond_dim))))


class SmallConvDecoder(nn.Module):
    """Mirror of :class:`SmallConvEncoder`: dense layers, then 4 x 4 stride-2 transposed convs to logits."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 10,
        cond_dim: int = 0,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.latent_dim, self.cond_dim = in_channels, image_size, latent_dim, cond_dim
        if image_size % 2 ** len(channels):
            raise ValueError(f"image_size {image_size} must be divisible by 2**len(channels) = {2 ** len(channels)}")
        ch = list(channels)[::-1]
        self.side = image_size // 2 ** len(ch)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, ch[0] * self.side * self.side), nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for a, b in zip(ch, ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), nn.ReLU(inplace=True)]
        layers.append(nn.ConvTranspose2d(ch[-1], in_channels, 4, 2, 1))
        self.main = nn.Sequential(*layers)
        self.first_channels = ch[0]

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.fc(_cat(z, c, self.cond_dim)).view(-1, self.first_channels, self.side, self.side)
        return self.main(h)


class MLPEncoder(_GaussianHead):
    """Fully connected Gaussian encoder: flatten, ``hidden`` ReLU layers, dense head."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 10,
        cond_dim: int = 0,
        hidden: Sequence[int] = (1200, 1200),
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.latent_dim, self.cond_dim = in_channels, image_size, latent_dim, cond_dim
        layers: list[nn.Module] = []
        d = in_channels * image_size * image_size + cond_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, 2 * latent_dim)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_input(x, self.in_channels, self.image_size)
        return self._split(self.head(self.features(_cat(x.flatten(1), c, self.cond_dim))))


class MLPDecoder(nn.Module):
    """Fully connected decoder: ``hidden`` ReLU layers (in reverse order) to pixel logits."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 10,
        cond_dim: int = 0,
        hidden: Sequence[int] = (1200, 1200),
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.latent_dim, self.cond_dim = in_channels, image_size, latent_dim, cond_dim
        layers: list[nn.Module] = []
        d = latent_dim + cond_dim
        for h in list(hidden)[::-1]:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        layers.append(nn.Linear(d, in_channels * image_size * image_size))
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return self.main(_cat(z, c, self.cond_dim)).view(-1, self.in_channels, self.image_size, self.image_size)


ARCHITECTURES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "conv64": (Conv64Encoder, Conv64Decoder),
    "conv": (SmallConvEncoder, SmallConvDecoder),
    "mlp": (MLPEncoder, MLPDecoder),
}


def _arch(name: str) -> tuple[type[nn.Module], type[nn.Module]]:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def build_encoder(arch: str, in_channels: int, image_size: int, latent_dim: int, cond_dim: int = 0, **kwargs) -> nn.Module:
    """The encoder of pair ``arch`` (``conv64``, ``conv``, ``mlp``); ``kwargs`` go to its constructor."""
    return _arch(arch)[0](in_channels=in_channels, image_size=image_size, latent_dim=latent_dim, cond_dim=cond_dim, **kwargs)


def build_decoder(arch: str, in_channels: int, image_size: int, latent_dim: int, cond_dim: int = 0, **kwargs) -> nn.Module:
    """The decoder of pair ``arch``; ``kwargs`` go to its constructor."""
    return _arch(arch)[1](in_channels=in_channels, image_size=image_size, latent_dim=latent_dim, cond_dim=cond_dim, **kwargs)
