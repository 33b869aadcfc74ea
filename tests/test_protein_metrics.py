"""LDDT and GDT_TS against independent computations (biotite's lDDT, TM-score's GDT-TS, LGA's column)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from datamodules.casp import _take, align_to_native, read_pdb, true_scores
from datamodules.samples import casp as casp_sample
from metrics.protein import gdt, gdt_ts, kabsch, lddt


@pytest.fixture(scope="module")
def chain_and_decoys(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A real chain (2gtl A from tmtools) and five decoys made by torsion moves, written as PDB files."""
    root = tmp_path_factory.mktemp("prot")
    name, text, chain_id = casp_sample.native_sources()[0]
    chain = casp_sample.parse_chain(text, chain_id, name)
    native = root / "native.pdb"
    native.write_text(chain.pdb(chain.coords))
    rng = np.random.default_rng(0)
    decoys = []
    for k, (moves, angle) in enumerate([(1, 10), (3, 30), (8, 60), (20, 120), (40, 180)]):
        path = root / f"d{k}.pdb"
        keep = np.ones(chain.num_residues, dtype=bool)
        if k == 2:
            keep[:7] = False  # a truncated decoy
        path.write_text(chain.pdb(casp_sample.perturb(chain, rng, moves, angle), keep))
        decoys.append(path)
    return native, decoys


def _ca(native_path: Path, decoy_path: Path):
    native, model = read_pdb(native_path), read_pdb(decoy_path)
    idx, present = align_to_native(native, model)
    return native.ca, _take(model.ca, idx), present


def test_lddt_matches_biotite(chain_and_decoys) -> None:
    import biotite.structure as struc

    native_path, decoys = chain_and_decoys
    for path in decoys:
        nat, mod, present = _ca(native_path, path)
        if not present.all():
            continue
        per_residue, global_score = lddt(mod, nat)
        ref = struc.AtomArray(len(nat))
        ref.coord = nat.astype(np.float32)
        ref.res_id = np.arange(len(nat))
        ref.chain_id[:] = "A"
        expected_res = struc.lddt(ref, mod.astype(np.float32), aggregation="residue")
        expected_all = struc.lddt(ref, mod.astype(np.float32), aggregation="all")
        np.testing.assert_allclose(per_residue, expected_res, atol=1e-5)
        assert global_score == pytest.approx(float(expected_all), abs=1e-5)


def test_lddt_of_missing_residues() -> None:
    rng = np.random.default_rng(1)
    native = np.cumsum(rng.normal(size=(30, 3)) * 2.2, axis=0)
    mask = np.ones(30, dtype=bool)
    mask[:5] = False
    per_residue, global_score = lddt(native.copy(), native, model_mask=mask)
    assert np.isnan(per_residue[:5]).all()  # no local score for a residue the model lacks
    assert np.nanmin(per_residue[5:]) < 1.0  # ...and its contacts count as lost for its partners
    assert 0.0 < global_score < 1.0
    assert lddt(native, native)[1] == 1.0


def test_gdt_is_superposition_invariant_and_perfect_on_identity() -> None:
    rng = np.random.default_rng(2)
    native = np.cumsum(rng.normal(size=(60, 3)), axis=0) * 2
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    moved = native @ q.T + 17.0
    assert gdt_ts(moved, native) == pytest.approx(1.0)
    r, t = kabsch(moved, native, np.ones((1, 60)))
    np.testing.assert_allclose(moved @ r[0].T + t[0], native, atol=1e-8)
    # half the chain displaced by 10 A: the best superposition keeps the other half
    shifted = native.copy()
    shifted[30:] += 10.0
    assert gdt(shifted, native)[0] == pytest.approx(0.5, abs=0.02)


def test_gdt_counts_missing_residues_as_wrong() -> None:
    rng = np.random.default_rng(3)
    native = np.cumsum(rng.normal(size=(40, 3)), axis=0) * 2
    model = native.copy()
    model[:10] = np.nan
    assert gdt_ts(model, native) == pytest.approx(0.75)


@pytest.mark.skipif(shutil.which("TMscore") is None, reason="TMscore binary absent (apt-get install tm-align)")
def test_gdt_ts_matches_tmscore_program_on_sample_decoys(chain_and_decoys) -> None:
    native_path, decoys = chain_and_decoys
    for path in decoys:
        out = subprocess.run(["TMscore", str(path), str(native_path)], capture_output=True, text=True).stdout
        expected = float(re.search(r"GDT-TS-score=\s*([\d.]+)", out).group(1))
        assert true_scores(read_pdb(native_path), read_pdb(path))["gdt_ts"] == pytest.approx(expected, abs=0.01)


@pytest.mark.realdata
def test_t0980s1_gdt_ts_matches_lga(shared_data: Path) -> None:
    """Must show: Pearson >= 0.98 and mean |diff| <= 1 GDT point against LGA on the 50 T0980s1 models."""
    root = shared_data / "casp" / "CASP13" / "T0980s1"
    native = read_pdb(root / "native.pdb")
    ours, lga, our_lddt, their_lddt = [], [], [], []
    with open(root / "scores.csv") as f:
        for row in csv.DictReader(f):
            scores = true_scores(native, read_pdb(root / "decoys" / f"{row['model']}.pdb"))
            ours.append(100 * scores["gdt_ts"])
            lga.append(float(row["lga_gdt_ts_deeprank_benchmark"]))
            our_lddt.append(scores["lddt_global"])
            their_lddt.append(float(row["lddt_ca"]))
    ours, lga = np.array(ours), np.array(lga)
    assert len(ours) == 50
    assert np.corrcoef(ours, lga)[0, 1] >= 0.98
    assert np.abs(ours - lga).mean() <= 1.0
    assert np.abs(ours - lga).max() <= 0.01 + 1e-9  # TM-score's search, which reproduces this LGA column
    np.testing.assert_allclose(our_lddt, their_lddt, atol=1e-3)  # the data set's own C-alpha lDDT column
