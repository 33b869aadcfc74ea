"""Guided-VAE's deformable-PCA guide: the affine transform reproduces known rotations and scalings."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.nets.guide import DeformablePCA, DeformationHead, LatentClassifier, affine_theta, warp

SIDE = 28


def _coords() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel-centre coordinates (x right, y down) of a SIDE x SIDE image (align_corners=False)."""
    c = (torch.arange(SIDE, dtype=torch.float64) * 2 + 1) / SIDE - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    return x, y


def _blob(angle: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """An elongated Gaussian, analytically rotated by ``angle`` (clockwise as displayed) and enlarged by ``scale``."""
    x, y = _coords()
    # undo the transform: p_src = R(-angle) p / scale
    xs = (math.cos(angle) * x + math.sin(angle) * y) / scale
    ys = (-math.sin(angle) * x + math.cos(angle) * y) / scale
    return torch.exp(-(xs / 0.4) ** 2 - (ys / 0.2) ** 2).float()[None, None]


def _asymmetric() -> torch.Tensor:
    img = torch.zeros(1, 1, SIDE, SIDE)
    img[0, 0, 2:6, 3:20] = 1.0  # an "L": rotation and flips are all distinguishable
    img[0, 0, 2:15, 3:6] = 1.0
    return img


def test_quarter_turn_is_exactly_a_clockwise_rot90() -> None:
    img = _asymmetric()
    out = warp(img, affine_theta(torch.tensor([math.pi / 2])))
    assert torch.allclose(out, torch.rot90(img, -1, dims=(-2, -1)), atol=1e-5)
    assert not torch.allclose(out, torch.rot90(img, 1, dims=(-2, -1)), atol=0.5)


@pytest.mark.parametrize(("angle", "scale"), [(math.radians(30), 1.0), (0.0, 1.5), (0.0, 0.7), (math.radians(-40), 1.3)])
def test_warp_reproduces_a_known_rotation_and_scaling_of_a_smooth_image(angle: float, scale: float) -> None:
    out = warp(_blob(), affine_theta(torch.tensor([angle]), torch.tensor([scale])))
    expected = _blob(angle, scale)
    error = (out - expected).abs().max()
    assert error < 0.04  # bilinear resampling error only
    # ... which is small beside the change the transform makes
    assert error < 0.2 * (_blob() - expected).abs().max()


def test_zero_deformation_code_is_the_identity() -> None:
    img = _asymmetric().expand(3, -1, -1, -1)
    for deformation, def_dim in (("rotation", 1), ("scaling", 1), ("both", 2), ("affine", 4)):
        head = DeformationHead(deformation, def_dim)
        theta = head(torch.zeros(3, def_dim))
        assert torch.allclose(warp(img, theta), img, atol=1e-5), deformation
    assert DeformationHead("none", 0)(torch.zeros(3, 0)) is None


def test_deformable_pca_reproduces_a_rotated_and_scaled_basis_image() -> None:
    """Dec_sub with basis b_1 = blob and z = (angle, log scale, e_1) gives the blob rotated and scaled."""
    pca = DeformablePCA((1, SIDE, SIDE), cont_dim=3, def_dim=2, deformation="both", mean_image=False, output="linear")
    with torch.no_grad():
        pca.bases.zero_()
        pca.bases[1] = _blob().flatten()
    angle, scale = math.radians(25), 1.4
    z_def = torch.tensor([[angle, math.log(scale)]])
    z_cont = torch.tensor([[0.0, 1.0, 0.0]])
    out = pca(z_def, z_cont)
    # the log scale passes through a tanh bound (max_log_scale=1): map it back for the expected image
    eff_scale = math.exp(math.tanh(math.log(scale)))
    assert (out - _blob(angle, eff_scale)).abs().max() < 0.04
    assert torch.allclose(pca.basis_images()[1], _blob()[0])
    # the content is linear in z_cont: 2 * e_1 doubles the image
    assert torch.allclose(pca(z_def, 2 * z_cont), 2 * out, atol=1e-5)


def test_rotation_only_guide_ignores_other_variables_and_passes_gradients() -> None:
    pca = DeformablePCA((1, SIDE, SIDE), cont_dim=2, def_dim=1, deformation="rotation")
    z_def = torch.tensor([[0.3], [-0.2]], requires_grad=True)
    z_cont = torch.randn(2, 2, requires_grad=True)
    out = pca(z_def, z_cont)
    assert out.shape == (2, 1, SIDE, SIDE) and 0 <= out.min() and out.max() <= 1  # sigmoid output
    out.square().sum().backward()
    assert z_def.grad.abs().sum() > 0 and z_cont.grad.abs().sum() > 0
    assert pca.deform.gain.grad is not None


def test_unit_norm_penalty_is_zero_for_unit_bases() -> None:
    pca = DeformablePCA((1, 4, 4), cont_dim=3, def_dim=1, deformation="scaling")
    with torch.no_grad():
        pca.bases.copy_(torch.nn.functional.normalize(torch.randn(3, 16), dim=1))
    assert pca.unit_norm_penalty().item() < 1e-10
    with torch.no_grad():
        pca.bases.mul_(2.0)
    assert pca.unit_norm_penalty().item() == pytest.approx(3 * 9.0, rel=1e-4)


def test_bad_configuration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs at least 2"):
        DeformationHead("both", 1)
    with pytest.raises(ValueError, match="unknown deformation"):
        DeformationHead("shear", 2)
    with pytest.raises(ValueError, match="theta"):
        warp(torch.zeros(2, 1, 4, 4), torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="at least one"):
        LatentClassifier(0)


def test_standardised_latent_classifier_ignores_the_scale_of_each_latent() -> None:
    torch.manual_seed(0)
    clf = LatentClassifier(4, hidden=8, standardize=True)
    z = torch.randn(32, 4)
    scaled = z * torch.tensor([1e-2, 10.0, 1.0, 0.1]) + 5.0  # an attribute hidden at a tiny scale is still read
    assert torch.allclose(clf(z), clf(scaled), atol=1e-3)
    raw = LatentClassifier(4, hidden=8)
    assert not torch.allclose(raw(z), raw(scaled), atol=1e-3)
    assert isinstance(LatentClassifier(4, layers=0).net[0], torch.nn.Linear)  # layers=0: a linear classifier
