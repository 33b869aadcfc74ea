from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding every offline sample the fast tests need (built once per session)."""
    from datamodules.samples import mnist

    root = tmp_path_factory.mktemp("data")
    mnist.build(root)
    return root


@pytest.fixture()
def sample_data(sample_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the data root (``PAPERZOO_DATA``) at the offline samples for this test."""
    monkeypatch.setenv("PAPERZOO_DATA", str(sample_root))
    return sample_root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets in ``../shared/data``; tests using this skip when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set PAPERZOO_SHARED_DATA)")
    return SHARED_DATA
