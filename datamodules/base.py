"""Conventions shared by every DataModule: one data root, clear errors for missing data."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "PAPERZOO_DATA"
"""Environment variable naming the data root (default: ``data/`` in the working directory)."""


def data_root() -> Path:
    """The one data root every DataModule and sample builder uses by default."""
    return Path(os.environ.get(DATA_ENV) or "data")


def resolve_data_dir(data_dir: str | os.PathLike | None, name: str) -> Path:
    """``data_dir`` if given, else ``<data root>/<name>`` (``name`` is the data set's folder)."""
    return Path(data_dir) if data_dir else data_root() / name


class DataNotFoundError(FileNotFoundError):
    """A data set is not where a DataModule looks for it."""


def missing_data_error(dataset: str, path: Path, sample: str | None, download_hint: str | None) -> DataNotFoundError:
    """An error that tells the user every way to get the data."""
    lines = [f"{dataset} not found under '{path}'.", "Get it one of these ways:"]
    if download_hint:
        lines.append(f"  - with a network: {download_hint}")
    if sample:
        lines.append(
            f"  - build the offline sample: python -m datamodules.samples {sample} --root {path.parent}"
        )
    lines.append(
        f"  - point at an existing copy: --data.data_dir DIR, or set {DATA_ENV} to the folder that holds '{path.name}/'"
    )
    return DataNotFoundError("\n".join(lines))
