"""dSprites generated from its factor definition, written in the official ``.npz`` layout.

The factors (Matthey et al., 2017; deepmind/dsprites-dataset):

========== ===== ==========================================
colour     1     white (constant)
shape      3     square, ellipse, heart (values 1, 2, 3)
scale      6     linspace(0.5, 1, 6)
orientation 40   linspace(0, 2 pi, 40) (0 and 2 pi both present, as in the official file)
posX       32    linspace(0, 1, 32)
posY       32    linspace(0, 1, 32)
========== ===== ==========================================

737,280 binary 64 x 64 images, index = 245760 shape + 40960 scale + 1024 orientation + 32 posX + posY.

Rendering: a pixel is on when its centre lies inside the shape. The sprite's centre is at
``16 + 32 * pos`` pixels (x right, y down), the shape is scaled by ``scale`` and rotated
counter-clockwise on screen by ``orientation``. Shape outlines in pixels at scale 1 (fitted once to the
real subsets, see :data:`SHAPE_PARAMS`): a square, an axis-aligned ellipse, and a heart (the convex
hull of two circles and a tip below, with the notch between the circles). ``python -m
benchmarks.vae_dsprites_fidelity`` prints the IoU of these renderings with the real images.

``python -m datamodules.samples dsprites --root DIR`` writes
``DIR/dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` with the official keys (``imgs``
uint8 0/1, ``latents_classes`` and ``latents_values`` with 6 columns including colour, ``metadata``).
``--subsample K`` keeps every K-th orientation and position value (a regular sub-grid) for a small file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

NAME = "dsprites"
FOLDER = "dsprites"
OFFICIAL_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
SUBSET_FILES = ("dsprites_subset.npz", "dsprites_downsampled.npz")

IMAGE_SIZE = 64
FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
FACTOR_VALUES: dict[str, np.ndarray] = {
    "shape": np.array([1.0, 2.0, 3.0]),
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),
    "posX": np.linspace(0.0, 1.0, 32),
    "posY": np.linspace(0.0, 1.0, 32),
}
SHAPE_NAMES = ("square", "ellipse", "heart")

#: outlines in pixels at scale 1, fitted to the real images (see module docstring)
SHAPE_PARAMS: dict[str, float] = {
    "square_half": 9.6,  # half side
    "ellipse_a": 12.8,  # semi-axis along x at orientation 0
    "ellipse_b": 7.2,  # semi-axis along y
    "heart_cx": 4.8,  # lobe centres at (+-cx, cy), radius r, tip at (0, -tip); y up
    "heart_cy": 4.1,
    "heart_r": 5.1,
    "heart_tip": 8.7,
    "center_offset": 16.0,  # sprite centre in pixels = center_offset + center_span * pos
    "center_span": 32.0,
}


def factor_index(classes: np.ndarray) -> np.ndarray:
    """Index in the official file of rows of factor classes ``(N, 5)`` (shape, scale, orientation, posX, posY)."""
    strides = np.array([245760, 40960, 1024, 32, 1])
    return np.asarray(classes, dtype=np.int64) @ strides


def classes_to_values(classes: np.ndarray) -> np.ndarray:
    """Factor values ``(N, 5)`` of factor classes ``(N, 5)``."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.stack([FACTOR_VALUES[name][classes[:, i]] for i, name in enumerate(FACTOR_NAMES)], axis=1)


def all_classes(subsample: int = 1) -> np.ndarray:
    """Every factor combination in the official order; ``subsample`` keeps every K-th orientation/position."""
    ranges = [np.arange(3), np.arange(6)] + [np.arange(0, n, subsample) for n in FACTOR_SIZES[2:]]
    grid = np.meshgrid(*ranges, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def _heart_tangent(params: dict[str, float]) -> tuple[float, float, float, float]:
    """Outer tangent from the tip (0, -tip) to the right lobe: (direction x, direction y, tangent point y, tip)."""
    cx, cy, r, tip = params["heart_cx"], params["heart_cy"], params["heart_r"], params["heart_tip"]
    dx, dy = cx, cy + tip  # tip -> lobe centre
    d = math.hypot(dx, dy)
    a = -math.asin(r / d)  # rotate clockwise, towards the outside
    ux, uy = dx / d, dy / d
    tx, ty = ux * math.cos(a) - uy * math.sin(a), ux * math.sin(a) + uy * math.cos(a)
    length = math.sqrt(d * d - r * r)
    return tx, ty, -tip + ty * length, tip


def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Whether local points (u, v) (unit scale, y up; arrays (N, ...)) lie in each row's shape.

    The heart is symmetric: with ``x = |u|`` it is the right lobe (circle), or, below the lobe centres,
    the part of the convex hull of the lobes and the tip: left of the tip's tangent line up to the
    tangent point, and the strip ``x <= cx`` above it.
    """
    out = np.zeros(u.shape, dtype=bool)
    sq = shape == 0
    if sq.any():
        h = params["square_half"]
        out[sq] = (np.abs(u[sq]) <= h) & (np.abs(v[sq]) <= h)
    el = shape == 1
    if el.any():
        out[el] = (u[el] / params["ellipse_a"]) ** 2 + (v[el] / params["ellipse_b"]) ** 2 <= 1.0
    he = shape == 2
    if he.any():
        x, y = np.abs(u[he]), v[he]
        cx, cy, r = params["heart_cx"], params["heart_cy"], params["heart_r"]
        tx, ty, py, tip = _heart_tangent(params)
        lobe = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        left_of_tangent = tx * (y + tip) - ty * x >= 0
        lower = (y >= -tip) & (y <= py) & left_of_tangent
        middle = (y > py) & (y <= cy) & (x <= cx)
        out[he] = lobe | lower | middle
    return out


WINDOW = 30  # every sprite fits in 30 x 30 pixels (square corner at scale 1: 9.6 * sqrt(2) < 14)


def render_values(values: np.ndarray, params: dict[str, float] | None = None, chunk: int = 8192) -> np.ndarray:
    """Render factor values ``(N, 5)`` (shape 1-3, scale, orientation, posX, posY) to uint8 ``(N, 64, 64)`` 0/1.

    Only the 30 x 30 window around each sprite is evaluated (pixel centres at ``i + 0.5``).
    """
    params = {**SHAPE_PARAMS, **(params or {})}
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 5:
        raise ValueError(f"expected factor values of shape (N, 5), got {values.shape}")
    if len(values) and not np.isin(np.rint(values[:, 0]), (1, 2, 3)).all():
        raise ValueError("shape values must be 1 (square), 2 (ellipse) or 3 (heart)")
    n = len(values)
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    offs = np.arange(WINDOW)
    for start in range(0, n, chunk):
        v = values[start : start + chunk]
        m = len(v)
        shape = np.rint(v[:, 0]).astype(int) - 1
        scale, theta = v[:, 1, None, None], v[:, 2, None, None]
        cx = params["center_offset"] + params["center_span"] * v[:, 3]
        cy = params["center_offset"] + params["center_span"] * v[:, 4]
        x0 = np.clip(np.floor(cx).astype(int) - WINDOW // 2, 0, IMAGE_SIZE - WINDOW)
        y0 = np.clip(np.floor(cy).astype(int) - WINDOW // 2, 0, IMAGE_SIZE - WINDOW)
        cols, rows = x0[:, None] + offs, y0[:, None] + offs  # (m, W)
        du = (cols + 0.5 - cx[:, None])[:, None, :]  # (m, 1, W)
        dv = -(rows + 0.5 - cy[:, None])[:, :, None]  # (m, W, 1), y up
        cos, sin = np.cos(theta), np.sin(theta)
        lu = (cos * du + sin * dv) / scale  # rotate back by -theta: (m, W, W)
        lv = (-sin * du + cos * dv) / scale
        mask = _inside(shape, lu, lv, params)
        idx = np.arange(start, start + m)
        out[idx[:, None, None], rows[:, :, None], cols[:, None, :]] = mask
    return out


def render_classes(classes: np.ndarray, params: dict[str, float] | None = None) -> np.ndarray:
    """Render factor classes ``(N, 5)`` (official class indices)."""
    return render_values(classes_to_values(classes), params)


def metadata() -> dict:
    """The official file's ``metadata`` dictionary (names, sizes, possible values)."""
    return {
        "date": "generated by paperzoo",
        "description": "dSprites rendered from its factor definition (paperzoo datamodules.samples.dsprites)",
        "version": 1,
        "latents_names": ("color",) + FACTOR_NAMES,
        "latents_possible_values": {"color": np.array([1.0]), **FACTOR_VALUES},
        "latents_sizes": np.array((1,) + FACTOR_SIZES),
        "author": "paperzoo",
        "title": "dSprites dataset",
    }


def build(root: Path, seed: int = 0, subsample: int = 1) -> list[Path]:
    """Write ``<root>/dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (official keys and layout).

    ``subsample`` 1 renders all 737,280 images (a few minutes, ~26 MB compressed); K > 1 keeps every
    K-th orientation and position value (the file then holds fewer rows; DataModule reads it the same way).
    ``seed`` is unused (the data set is deterministic) and kept for the builder protocol.
    """
    if subsample < 1:
        raise ValueError("subsample must be >= 1")
    classes = all_classes(subsample)
    values = classes_to_values(classes)
    imgs = render_values(values)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / OFFICIAL_FILE
    ones = np.ones((len(classes), 1))
    np.savez_compressed(
        path,
        imgs=imgs,
        latents_classes=np.concatenate([np.zeros((len(classes), 1), dtype=np.int64), classes], axis=1),
        latents_values=np.concatenate([ones, values], axis=1),
        metadata=np.array(metadata(), dtype=object),
    )
    return [path]


def add_arguments(parser) -> None:
    parser.add_argument("--subsample", type=int, default=1, help="keep every K-th orientation/position (default 1: all)")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image intersection over union of two binary stacks ``(N, H, W)``."""
    a, b = a.astype(bool).reshape(len(a), -1), b.astype(bool).reshape(len(b), -1)
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)

