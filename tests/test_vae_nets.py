"""Shapes and conditioning of the VAE encoder/decoder pairs."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.nets.vae import build_decoder, build_encoder


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("conv64", 1, 64), ("conv64", 3, 64), ("conv", 1, 28), ("conv", 3, 32), ("mlp", 1, 28), ("mlp", 1, 64)],
)
@pytest.mark.parametrize("cond_dim", [0, 3])
def test_pairs_round_trip_shapes(arch: str, channels: int, size: int, cond_dim: int) -> None:
    kwargs = {"hidden": (64,)} if arch == "mlp" else {}
    enc = build_encoder(arch, channels, size, latent_dim=7, cond_dim=cond_dim, **kwargs)
    dec = build_decoder(arch, channels, size, latent_dim=7, cond_dim=cond_dim, **kwargs)
    x = torch.rand(5, channels, size, size)
    c = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1])] if cond_dim else None
    mu, logvar = enc(x, c)
    assert mu.shape == logvar.shape == (5, 7)
    logits = dec(mu, c)
    assert logits.shape == (5, channels, size, size)
    if cond_dim:  # the condition really enters both networks
        c2 = torch.eye(3)[torch.tensor([1, 2, 0, 1, 2])]
        assert not torch.allclose(enc(x, c2)[0], mu)
        assert not torch.allclose(dec(mu, c2), logits)
        with pytest.raises(ValueError, match="conditional"):
            enc(x)


def test_bad_input_is_a_clear_error() -> None:
    enc = build_encoder("conv64", 1, 64, 4)
    with pytest.raises(ValueError, match=r"expected images \(N, 1, 64, 64\)"):
        enc(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="needs 64 x 64"):
        build_encoder("conv64", 1, 32, 4)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder("resnet", 1, 64, 4)
