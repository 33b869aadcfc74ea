"""Guided-VAE's lightweight guides: the deformable-PCA secondary decoder and the latent attribute classifiers.

* :func:`affine_theta` / :func:`warp`: the spatial transform ``T``. ``warp(images, affine_theta(angle, scale))``
  rotates each image by ``angle`` radians (clockwise as displayed, i.e. with rows running downwards) and
  enlarges it by ``scale`` about the image centre, through ``affine_grid``/``grid_sample``.
* :class:`DeformationHead`: maps the deformation code ``z_def`` to the transform. ``rotation``: ``z1`` gives
  the angle; ``scaling``: ``z1`` gives the log scale; ``both``: ``z1`` rotation, ``z2`` scaling; ``affine``: a
  linear map from all of ``z_def`` to the 6 parameters of a general affine transform (for the paper's
  Table 3 setting, where ``z_def`` is half the bottleneck). Each code passes through a learned scalar
  gain and offset (as in the authors' code); gains start at 1 and offsets at 0 so ``z_def = 0`` is the identity.
* :class:`DeformablePCA`: ``T_{z_def}(B z_cont)``, with ``K`` learned basis images ``B`` (plus a learned mean
  image, and a sigmoid output for images in [0, 1], both optional) and the optional unit-norm penalty
  ``sum_k (||b_k||^2 - 1)^2``. It is only a training guide; the VAE does not need it afterwards.
* :class:`LatentClassifier`: the small MLP used for the excitation/inhibition classifiers ``C_t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["affine_theta", "warp", "DeformationHead", "DeformablePCA", "LatentClassifier", "DEFORMATIONS"]

Deformation = Literal["rotation", "scaling", "both", "affine", "none"]
DEFORMATIONS: dict[str, int] = {"rotation": 1, "scaling": 1, "both": 2, "none": 0}
"""Number of ``z_def`` variables each fixed deformation uses (``affine`` uses all of ``z_def``)."""


def affine_theta(angle: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """The ``(N, 2, 3)`` sampling matrices of ``affine_grid`` that rotate by ``angle`` and enlarge by ``scale``.

    ``grid_sample`` reads the output pixel at normalised position ``p`` from the input at ``theta @ p``,
    so the matrix is the inverse of the image transform: ``R(-angle) / scale``.
    """
    if angle is None and scale is None:
        raise ValueError("give an angle, a scale or both")
    ref = angle if angle is not None else scale
    angle = torch.zeros_like(ref) if angle is None else angle.reshape(-1)
    scale = torch.ones_like(ref) if scale is None else scale.reshape(-1)
    if angle.shape != scale.shape:
        raise ValueError(f"angle and scale must have one value per image, got {tuple(angle.shape)} and {tuple(scale.shape)}")
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    return torch.stack([torch.stack([cos, sin, zero], -1), torch.stack([-sin, cos, zero], -1)], 1)


def warp(images: Tensor, theta: Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> Tensor:
    """Apply the sampling matrices ``theta`` ``(N, 2, 3)`` to ``images`` ``(N, C, H, W)`` (``align_corners=False``)."""
    if images.dim() != 4 or theta.shape != (images.shape[0], 2, 3):
        raise ValueError(f"expected images (N, C, H, W) and theta (N, 2, 3), got {tuple(images.shape)} and {tuple(theta.shape)}")
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


class DeformationHead(nn.Module):
    """``z_def`` to the sampling matrices of the deformation ``tau(z_def)`` (see the module docstring)."""

    def __init__(self, deformation: Deformation = "both", def_dim: int = 2, max_log_scale: float = 1.0) -> None:
        super().__init__()
        if deformation not in (*DEFORMATIONS, "affine"):
            raise ValueError(f"unknown deformation {deformation!r}; choose rotation, scaling, both, affine or none")
        needed = DEFORMATIONS.get(deformation, 1)
        if def_dim < needed:
            raise ValueError(f"deformation {deformation!r} needs at least {needed} deformation variables, got def_dim={def_dim}")
        self.deformation, self.def_dim, self.max_log_scale = deformation, def_dim, max_log_scale
        if deformation == "affine":
            self.linear = nn.Linear(def_dim, 6)
            nn.init.normal_(self.linear.weight, std=0.2 / math.sqrt(def_dim))
            with torch.no_grad():
                self.linear.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        else:
            self.gain = nn.Parameter(torch.ones(needed))
            self.offset = nn.Parameter(torch.zeros(needed))

    def forward(self, z_def: Tensor) -> Tensor | None:
        """``(N, 2, 3)`` sampling matrices, or ``None`` for ``deformation='none'`` (plain PCA)."""
        if self.deformation == "none":
            return None
        if self.deformation == "affine":
            return self.linear(z_def).view(-1, 2, 3)
        code = z_def[:, : self.gain.numel()] * self.gain + self.offset
        angle = scale = None
        if self.deformation in ("rotation", "both"):
            angle = code[:, 0]
        if self.deformation in ("scaling", "both"):
            # bounded log scale keeps the sampling grid inside a sane zoom range (e^-1 .. e^1 by default)
            log_scale = code[:, -1]
            scale = torch.exp(self.max_log_scale * torch.tanh(log_scale / self.max_log_scale))
        return affine_theta(angle, scale)


class DeformablePCA(nn.Module):
    """The unsupervised Guided-VAE's secondary decoder ``Dec_sub``: ``T_{tau(z_def)}(B z_cont)``.

    Args:
        image_shape: ``(C, H, W)`` of the images to reconstruct.
        cont_dim: ``K``, the number of basis images (one per content variable).
        def_dim: number of deformation variables fed to :class:`DeformationHead`.
        deformation: ``rotation``, ``scaling``, ``both``, ``affine`` or ``none`` (the ablation: PCA only).
        mean_image: learn a mean image added to ``B z_cont`` (PCA's centring).
        output: ``sigmoid`` (images in [0, 1]) or ``linear``.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        cont_dim: int = 8,
        def_dim: int = 2,
        deformation: Deformation = "both",
        mean_image: bool = True,
        output: Literal["sigmoid", "linear"] = "sigmoid",
    ) -> None:
        super().__init__()
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear', got {output!r}")
        if cont_dim < 1:
            raise ValueError(f"the deformable PCA needs at least one content variable, got cont_dim={cont_dim}")
        self.image_shape = tuple(int(s) for s in image_shape)
        self.cont_dim, self.def_dim, self.output = cont_dim, def_dim, output
        size = math.prod(self.image_shape)
        self.bases = nn.Parameter(torch.randn(cont_dim, size) / math.sqrt(size))
        self.mean = nn.Parameter(torch.zeros(size)) if mean_image else None
        self.deform = DeformationHead(deformation, def_dim)

    def content(self, z_cont: Tensor) -> Tensor:
        """The undeformed PCA image ``B z_cont (+ mean)`` ``(N, C, H, W)``."""
        flat = z_cont @ self.bases
        if self.mean is not None:
            flat = flat + self.mean
        if self.output == "sigmoid":
            flat = torch.sigmoid(flat)
        return flat.view(-1, *self.image_shape)

    def forward(self, z_def: Tensor, z_cont: Tensor) -> Tensor:
        image = self.content(z_cont)
        theta = self.deform(z_def)
        return image if theta is None else warp(image, theta)

    def basis_images(self) -> Tensor:
        """The basis ``b_1..b_K`` as images ``(K, C, H, W)`` (for the paper's Figure 3)."""
        return self.bases.detach().view(-1, *self.image_shape)

    def unit_norm_penalty(self) -> Tensor:
        """``sum_k (||b_k||^2 - 1)^2``: the optional term forcing unit-length basis vectors."""
        return ((self.bases.pow(2).sum(dim=1) - 1.0) ** 2).sum()


class LatentClassifier(nn.Module):
    """A small MLP on latent variables giving one logit: the attribute classifiers ``C_t`` of the paper.

    Layers: ``in_dim -> hidden -> hidden -> 1`` with LayerNorm and LeakyReLU(0.2) (the authors' choice); ``layers=0``
    is a linear classifier. ``standardize``: first standardise each input variable with batch statistics
    (``BatchNorm1d`` without affine parameters, running statistics in eval mode), like the probes' ``StandardScaler``:
    an adversary on raw codes can be fooled by shrinking an attribute's direction to a tiny scale.
    """

    def __init__(self, in_dim: int, hidden: int = 32, layers: int = 2, standardize: bool = False) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"a latent classifier needs at least one input variable, got {in_dim}")
        blocks: list[nn.Module] = [nn.BatchNorm1d(in_dim, eps=1e-8, affine=False)] if standardize else []
        d = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.2, inplace=True)]
            d = hidden
        blocks.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)
