"""Disentanglement metrics: sanity on known representations, agreement with hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.disentanglement import (
    compute_all, dci_from_importance, histogram_discretize, irs, mig,
)

SIZES = [3, 6, 10, 8, 8]  # a dSprites-like grid, smaller for speed
ROT = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))[0]


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(s, size=n) for s in SIZES], axis=1)


def ground_truth(f: np.ndarray) -> np.ndarray:
    return f / np.array(SIZES, dtype=float)


def noise(f: np.ndarray) -> np.ndarray:
    # independent of the factors: a hash of the row seeds the noise
    seeds = (f * np.array([1, 7, 97, 997, 9973])).sum(1)
    return np.stack([np.random.default_rng(int(s) + 13 * i).normal(size=5) for i, s in enumerate(seeds)])


def rotated(f: np.ndarray) -> np.ndarray:
    return (ground_truth(f) - 0.5) @ ROT


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, float]]:
    out = {}
    for name, rep in (("gt", ground_truth), ("noise", noise), ("rot", rotated)):
        out[name], _ = compute_all(sample_factors, rep, SIZES, seed=0, scale=0.05, scale_overrides={"dci": 0.02})
    return out


def test_ground_truth_scores_near_maximum(scores) -> None:
    gt = scores["gt"]
    assert gt["beta_vae"] >= 0.99 and gt["factor_vae"] >= 0.99
    assert gt["dci_disentanglement"] >= 0.95 and gt["dci_completeness"] >= 0.95 and gt["dci_informativeness"] >= 0.9
    assert gt["mig"] >= 0.75  # 20-bin discretisation of 8-10 classes loses a little
    assert gt["irs"] >= 0.95


def test_noise_scores_near_zero_or_chance(scores) -> None:
    nz = scores["noise"]
    assert nz["beta_vae"] <= 0.35 and nz["factor_vae"] <= 0.35  # chance: 1 / 5 factors
    assert nz["mig"] <= 0.03 and nz["sap"] <= 0.03
    assert nz["dci_disentanglement"] <= 0.15 and nz["dci_completeness"] <= 0.15


def test_rotation_lies_between(scores) -> None:
    for key in ("mig", "dci_disentanglement", "dci_completeness", "sap", "irs"):
        assert scores["noise"][key] < scores["rot"][key] < scores["gt"][key], key
    assert scores["rot"]["mig"] < 0.5 * scores["gt"]["mig"]


def test_compute_all_is_seeded() -> None:
    a, _ = compute_all(sample_factors, rotated, SIZES, seed=3, metrics=("mig", "irs", "factor_vae"), scale=0.02)
    b, _ = compute_all(sample_factors, rotated, SIZES, seed=3, metrics=("mig", "irs", "factor_vae"), scale=0.02)
    assert a == b
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_all(sample_factors, rotated, SIZES, metrics=("modularity",))


def test_mig_hand_example() -> None:
    # code 0 copies factor 0 (2 classes), code 1 is constant: MI gap = H(f0) / H(f0) = 1; factor 1 coded by nobody
    f = np.array([[0, 0], [1, 1], [0, 1], [1, 0]] * 50)
    codes = np.stack([f[:, 0].astype(float), np.zeros(len(f))], axis=1)
    assert mig(codes, f) == pytest.approx(0.5)  # mean of (1, 0)
    assert histogram_discretize(np.array([[0.0], [0.5], [1.0]]), 2).ravel().tolist() == [1, 2, 2]


def test_dci_from_importance_hand_examples() -> None:
    d, c = dci_from_importance(np.eye(3))
    assert d == pytest.approx(1.0, abs=1e-6) and c == pytest.approx(1.0, abs=1e-6)
    d, c = dci_from_importance(np.ones((3, 3)))
    assert d == pytest.approx(0.0, abs=1e-6) and c == pytest.approx(0.0, abs=1e-6)


def test_irs_perfect_and_constant() -> None:
    rng = np.random.default_rng(0)
    f = np.stack([rng.integers(4, size=500), rng.integers(5, size=500)], axis=1)
    assert irs(f.astype(float), f) == pytest.approx(1.0)
    assert irs(np.zeros((500, 2)), f) == 0.0
