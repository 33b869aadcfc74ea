"""CelebA sample: procedurally drawn faces (PIL, 178x218) with known, independently sampled attributes.

``python -m datamodules.samples celeba --root DIR [--num-images N]`` writes ``DIR/celeba/celeba/`` in the
official layout: ``img_align_celeba/NNNNNN.jpg``, ``list_attr_celeba.txt`` (all 40 columns, official
format, CRLF), ``list_eval_partition.txt`` (80/10/10), ``identity_CelebA.txt``, ``list_bbox_celeba.txt``
and ``list_landmarks_align_celeba.txt`` (the rendered eyes, nose tip and mouth corners, exact). The data
are synthetic: cartoon faces, not photographs.

Ground-truth factors (use them for disentanglement metrics and attribute guidance)
-------------------------------------------------------------------------------
:data:`FACTORS` maps each factor name to its values, in a fixed order; a face is a vector of value
*indices* ``f`` with ``0 <= f[j] < FACTOR_SIZES[j]``. Factors are sampled independently and uniformly.

===================  =====================================================  ===========================
factor               values                                                 attribute column(s)
===================  =====================================================  ===========================
Male                 0, 1 (short hair, square jaw, thick brows if 1)         Male
Young                0, 1 (forehead and eye wrinkles if 0)                   Young
Smiling              0, 1 (mouth curve)                                      Smiling
Mouth_Slightly_Open  0, 1 (dark open mouth)                                  Mouth_Slightly_Open
Eyeglasses           0, 1                                                    Eyeglasses
Pale_Skin            0, 1 (skin tone)                                        Pale_Skin
Wearing_Hat          0, 1 (a hat over the crown)                             Wearing_Hat
Bald                 0, 1 (no hair drawn)                                    Bald
Bangs                0, 1 (fringe over the forehead unless bald)             Bangs
hair_colour          0 black, 1 blond, 2 brown, 3 gray                       Black/Blond/Brown/Gray_Hair
===================  =====================================================  ===========================

Every other attribute column is constant: ``No_Beard`` = 1, the rest -1. The hair-colour columns are set
only where hair is drawn, i.e. not for bald faces (all four -1 there; the ``hair_colour`` factor then changes
nothing in the image). CelebA labels hair colour the same way, by what is visible: in the official
``list_attr_celeba.txt`` 1.3% of the 4,547 ``Bald`` faces are ``Black_Hair`` (23.9% of all faces) and 25.6%
have any hair colour (65.6% of faces neither bald nor hatted). Hats sit on the crown and leave the hair below
them visible, so hatted faces keep their hair colour.

API::

    from datamodules.samples.celeba import FACTORS, FACTOR_SIZES, sample_factors, render_face, FaceFactorSampler
    f = sample_factors(16, np.random.default_rng(0))        # (16, 10) int64 value indices
    im = render_face(f[0])                                 # PIL.Image 178x218 RGB, deterministic in f
    attrs = factors_to_attributes(f)                       # (16, 40) int8 +-1, official column order
    gt = FaceFactorSampler(image_size=64, crop_size=148, scale="unit")
    x = gt.render(f)                                       # (16, 3, 64, 64) float: the DataModule's transform
    f, x = gt.sample(16, rng)                              # both at once

``render_face`` draws no noise, so a face is a pure function of its factors; the JPEGs on disk add JPEG
compression only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAME = "celeba"
FOLDER = "celeba"
WIDTH, HEIGHT = 178, 218

FACTORS: dict[str, tuple] = {
    "Male": (0, 1),
    "Young": (0, 1),
    "Smiling": (0, 1),
    "Mouth_Slightly_Open": (0, 1),
    "Eyeglasses": (0, 1),
    "Pale_Skin": (0, 1),
    "Wearing_Hat": (0, 1),
    "Bald": (0, 1),
    "Bangs": (0, 1),
    "hair_colour": ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"),
}
FACTOR_NAMES: tuple[str, ...] = tuple(FACTORS)
FACTOR_SIZES: tuple[int, ...] = tuple(len(v) for v in FACTORS.values())

HAIR_RGB = {"Black_Hair": (30, 25, 22), "Blond_Hair": (225, 195, 110), "Brown_Hair": (110, 70, 40), "Gray_Hair": (165, 165, 165)}
SKIN_RGB = {0: (205, 150, 115), 1: (245, 222, 205)}
BACKGROUND = (110, 140, 170)

# face geometry in the 178x218 aligned frame (CelebA's aligned faces sit about here)
CX, CY = 89, 125
EYE_Y, EYE_DX = 112, 20
NOSE = (89, 137)
MOUTH_Y, MOUTH_DX = 158, 17


def _attr_columns() -> list[str]:
    from datamodules.celeba import ATTRIBUTES

    return list(ATTRIBUTES)


def sample_factors(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` faces' factor indices ``(n, len(FACTORS))``, each factor independent and uniform."""
    rng = rng if rng is not None else np.random.default_rng()
    return np.stack([rng.integers(0, k, size=n) for k in FACTOR_SIZES], axis=1).astype(np.int64)


def _as_dict(factors: Sequence[int] | dict) -> dict[str, int]:
    if isinstance(factors, dict):
        missing = set(FACTOR_NAMES) - set(factors)
        if missing:
            raise ValueError(f"missing factors {sorted(missing)}")
        values = {k: int(factors[k]) for k in FACTOR_NAMES}
    else:
        if len(factors) != len(FACTOR_NAMES):
            raise ValueError(f"expected {len(FACTOR_NAMES)} factor values ({', '.join(FACTOR_NAMES)}), got {len(factors)}")
        values = {k: int(v) for k, v in zip(FACTOR_NAMES, factors)}
    for (name, value), size in zip(values.items(), FACTOR_SIZES):
        if not 0 <= value < size:
            raise ValueError(f"factor {name} must be in 0..{size - 1}, got {value}")
    return values


def hair_drawn(factors: np.ndarray) -> np.ndarray:
    """Whether each face's hair (and so its hair colour) is drawn: not on bald faces. ``(n, 10)`` or ``(10,)`` -> bool."""
    return np.asarray(factors)[..., FACTOR_NAMES.index("Bald")] == 0


def factors_to_attributes(factors: np.ndarray) -> np.ndarray:
    """Factor indices ``(n, 10)`` -> the 40 attribute columns ``(n, 40)`` in {-1, 1}, official order."""
    factors = np.atleast_2d(np.asarray(factors))
    columns = _attr_columns()
    out = -np.ones((len(factors), len(columns)), dtype=np.int8)
    out[:, columns.index("No_Beard")] = 1
    drawn = hair_drawn(factors)
    for j, name in enumerate(FACTOR_NAMES):
        if name == "hair_colour":
            for value, column in enumerate(FACTORS[name]):
                out[(factors[:, j] == value) & drawn, columns.index(column)] = 1
        else:
            out[:, columns.index(name)] = np.where(factors[:, j] == 1, 1, -1)
    return out


def landmarks() -> tuple[int, ...]:
    """The rendered landmarks: left eye, right eye, nose tip, left and right mouth corners (x, y each)."""
    return (CX - EYE_DX, EYE_Y, CX + EYE_DX, EYE_Y, *NOSE, CX - MOUTH_DX, MOUTH_Y, CX + MOUTH_DX, MOUTH_Y)


def render_face(factors: Sequence[int] | dict) -> Image.Image:
    """Draw one 178x218 RGB face from its factor indices (a sequence in :data:`FACTORS` order, or a dict)."""
    f = _as_dict(factors)
    male, young = f["Male"], f["Young"]
    hair = HAIR_RGB[FACTORS["hair_colour"][f["hair_colour"]]]
    skin = SKIN_RGB[f["Pale_Skin"]]
    im = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    d = ImageDraw.Draw(im)
    half_w = 40 if male else 35
    top, bottom = CY - 58, CY + 55
    # long hair behind the head (women, not bald)
    if not f["Bald"] and not male:
        d.rounded_rectangle((CX - half_w - 12, top - 8, CX + half_w + 12, bottom + 25), radius=30, fill=hair)
    # neck and head
    d.rectangle((CX - 15, bottom - 10, CX + 15, HEIGHT), fill=skin)
    if male:
        d.rounded_rectangle((CX - half_w, top, CX + half_w, bottom), radius=28, fill=skin)
    else:
        d.ellipse((CX - half_w, top, CX + half_w, bottom), fill=skin)
    d.ellipse((CX - half_w - 7, EYE_Y + 2, CX - half_w + 5, EYE_Y + 24), fill=skin)  # ears
    d.ellipse((CX + half_w - 5, EYE_Y + 2, CX + half_w + 7, EYE_Y + 24), fill=skin)
    # hair on the crown, bangs
    if not f["Bald"]:
        d.chord((CX - half_w - 3, top - 12, CX + half_w + 3, top + 50), 180, 360, fill=hair)
        if f["Bangs"]:
            d.rectangle((CX - half_w + 6, top + 18, CX + half_w - 6, top + 34), fill=hair)
    # age
    if not young:
        line = tuple(max(c - 70, 0) for c in skin)
        for dy in (0, 6):
            d.arc((CX - 22, top + 24 + dy, CX + 22, top + 40 + dy), 200, 340, fill=line, width=2)
        for sx in (-1, 1):
            ex = CX + sx * EYE_DX
            d.line((ex - 8, EYE_Y + 9, ex + 8, EYE_Y + 9), fill=line, width=1)
    # brows and eyes
    brow = (40, 30, 25)  # one colour: hair colour shows in the hair only (and so not at all on bald faces)
    for sx in (-1, 1):
        ex = CX + sx * EYE_DX
        d.line((ex - 9, EYE_Y - 10, ex + 9, EYE_Y - 10), fill=brow, width=4 if male else 2)
        d.ellipse((ex - 7, EYE_Y - 4, ex + 7, EYE_Y + 4), fill=(250, 250, 250))
        d.ellipse((ex - 3, EYE_Y - 3, ex + 3, EYE_Y + 3), fill=(50, 40, 30))
    if f["Eyeglasses"]:
        for sx in (-1, 1):
            ex = CX + sx * EYE_DX
            d.rectangle((ex - 12, EYE_Y - 8, ex + 12, EYE_Y + 8), outline=(15, 15, 15), width=3)
        d.line((CX - 8, EYE_Y - 2, CX + 8, EYE_Y - 2), fill=(15, 15, 15), width=3)
        d.line((CX - EYE_DX - 12, EYE_Y - 4, CX - half_w, EYE_Y - 6), fill=(15, 15, 15), width=2)
        d.line((CX + EYE_DX + 12, EYE_Y - 4, CX + half_w, EYE_Y - 6), fill=(15, 15, 15), width=2)
    # nose
    nose_col = tuple(max(c - 45, 0) for c in skin)
    d.line((NOSE[0], EYE_Y + 6, NOSE[0] - 5, NOSE[1]), fill=nose_col, width=2)
    d.line((NOSE[0] - 5, NOSE[1], NOSE[0] + 4, NOSE[1]), fill=nose_col, width=2)
    # mouth
    lips = (170, 60, 60)
    left, right = CX - MOUTH_DX, CX + MOUTH_DX
    if f["Mouth_Slightly_Open"]:
        if f["Smiling"]:
            d.chord((left, MOUTH_Y - 8, right, MOUTH_Y + 14), 0, 180, fill=(60, 20, 20), outline=lips, width=2)
        else:
            d.ellipse((left + 5, MOUTH_Y - 5, right - 5, MOUTH_Y + 7), fill=(60, 20, 20), outline=lips, width=2)
    elif f["Smiling"]:
        d.arc((left, MOUTH_Y - 12, right, MOUTH_Y + 8), 20, 160, fill=lips, width=3)
    else:
        d.line((left, MOUTH_Y, right, MOUTH_Y), fill=lips, width=3)
    # hat last, on the crown: the hair below its brim (and the bangs) stays visible
    if f["Wearing_Hat"]:
        hat = (120, 30, 40)
        d.rectangle((CX - half_w - 16, top - 8, CX + half_w + 16, top), fill=hat)
        d.rounded_rectangle((CX - half_w + 2, top - 40, CX + half_w - 2, top - 6), radius=10, fill=hat)
    return im


class FaceFactorSampler:
    """Ground-truth generator of the sample: factors -> images in the DataModule's format.

    ``render(factors)`` returns ``(n, 3, image_size, image_size)`` float tensors made with
    :func:`datamodules.celeba.preprocess` (same crop, resize and scale as :class:`CelebADataModule`);
    ``sample(n, rng)`` draws factors uniformly and renders them. ``jpeg=True`` round-trips through
    JPEG (quality 95) like the files on disk.
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES

    def __init__(self, image_size: int = 64, crop_size: int | None = 148, scale: str = "unit", jpeg: bool = False) -> None:
        self.image_size, self.crop_size, self.scale, self.jpeg = image_size, crop_size, scale, jpeg

    def render(self, factors: np.ndarray):
        import io

        import torch

        from datamodules.celeba import preprocess

        arrays = []
        for row in np.atleast_2d(np.asarray(factors)):
            im = render_face(row)
            if self.jpeg:
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=95)
                im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
            arrays.append(np.asarray(im, dtype=np.uint8))
        return preprocess(torch.from_numpy(np.stack(arrays)), self.crop_size, self.image_size, self.scale)  # type: ignore[arg-type]

    def sample(self, n: int, rng: np.random.Generator | None = None):
        factors = sample_factors(n, rng)
        return factors, self.render(factors)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("ascii"))
    return path


def build(root: Path, seed: int = 0, num_images: int = 1000, quality: int = 95) -> list[Path]:
    """Write ``num_images`` faces and the official annotation files into ``<root>/celeba/celeba/``."""
    if num_images < 1:
        raise ValueError("num_images must be positive")
    rng = np.random.default_rng(seed)
    folder = Path(root) / FOLDER / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    factors = sample_factors(num_images, rng)
    attrs = factors_to_attributes(factors)
    names = [f"{i:06d}.jpg" for i in range(1, num_images + 1)]
    written = []
    for name, row in zip(names, factors):
        path = images / name
        render_face(row).save(path, format="JPEG", quality=quality)
        written.append(path)
    columns = _attr_columns()
    written.append(_write_lines(folder / "list_attr_celeba.txt", [
        str(num_images), " ".join(columns) + " ",
        *(name + "".join(f" {int(v):2d}" for v in row) for name, row in zip(names, attrs)),
    ]))
    n_train, n_val = int(round(0.8 * num_images)), int(round(0.1 * num_images))
    parts = [0] * n_train + [1] * n_val + [2] * (num_images - n_train - n_val)
    written.append(_write_lines(folder / "list_eval_partition.txt", [f"{n} {p}" for n, p in zip(names, parts)]))
    # identities: blocks of 10 consecutive images (a face is its factors; the numbers only exercise the file)
    written.append(_write_lines(folder / "identity_CelebA.txt", [f"{n} {i // 10 + 1}" for i, n in enumerate(names)]))
    half_w = np.where(factors[:, FACTOR_NAMES.index("Male")] == 1, 40, 35)
    written.append(_write_lines(folder / "list_bbox_celeba.txt", [
        str(num_images), "image_id x_1 y_1 width height",
        *(f"{n} {CX - w:>4d} {CY - 58:>4d} {2 * w:>4d} {113:>4d}" for n, w in zip(names, half_w)),
    ]))
    marks = " ".join(f"{v:>4d}" for v in landmarks())
    written.append(_write_lines(folder / "list_landmarks_align_celeba.txt", [
        str(num_images), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
        *(f"{n} {marks}" for n in names),
    ]))
    return written


def add_arguments(parser) -> None:
    parser.add_argument("--num-images", dest="num_images", type=int, default=1000)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
