"""Offline sample builders: each writes a small data set in the real on-disk format of its data set.

Every module in this package that defines ``NAME`` and ``build(root, seed=0, **options) -> list[Path]``
is a builder; ``python -m datamodules.samples NAME --root DIR`` runs it. ``root`` is the data root: a
builder writes into ``<root>/<folder of its data set>/`` exactly what the DataModule reads from there.
A builder may define ``add_arguments(parser)`` for its own options.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def builders() -> dict[str, ModuleType]:
    """All sample builders in this package, by name."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        name = getattr(module, "NAME", None)
        if name and callable(getattr(module, "build", None)):
            found[name] = module
    return dict(sorted(found.items()))
