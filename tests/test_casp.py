"""CASP reading, featurisation, layouts, skips, cache, and the offline sample builder."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import DataNotFoundError
from datamodules.casp import (
    CASPDataModule,
    PDBReadError,
    featurize,
    find_targets,
    read_pdb,
    separation_class,
    true_scores,
)
from datamodules.samples import casp as casp_sample


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory) -> Path:
    """Data root with a 4-target x 4-decoy sample (``<root>/casp/SAMPLE``)."""
    root = tmp_path_factory.mktemp("casp_sample")
    casp_sample.build(root, seed=0, targets=4, decoys=4, max_length=150)
    return root


def test_sample_layout_and_scores(tiny_sample: Path) -> None:
    edition = tiny_sample / "casp" / "SAMPLE"
    targets = find_targets(edition)
    assert len(targets) == 4
    for target in targets:
        native = read_pdb(target.native)
        rows = list(csv.DictReader(open(target.scores)))
        assert len(rows) == 4
        for row in rows:
            decoy = read_pdb(target.decoys / f"{row['model']}.pdb")
            # physically plausible: consecutive C-alpha atoms stay 3.8 A apart (moves are rigid rotations)
            ca = decoy.ca
            step = np.linalg.norm(ca[1:] - ca[:-1], axis=1)
            ref = np.linalg.norm(native.ca[1:] - native.ca[:-1], axis=1)
            n = len(step)
            idx = [native.keys.index(k) for k in decoy.keys]
            np.testing.assert_allclose(step, ref[idx[:n]], atol=0.01)
            scores = true_scores(native, decoy)
            assert 100 * scores["gdt_ts"] == pytest.approx(float(row["gdt_ts"]), abs=0.01)
            assert scores["lddt_global"] == pytest.approx(float(row["lddt_ca"]), abs=1e-3)
    gdts = [float(r["gdt_ts"]) for t in targets for r in csv.DictReader(open(t.scores))]
    assert min(gdts) < 90 and max(gdts) > 50  # a spread of qualities, not all perfect


def test_featurize_graph_masks_and_edges(tiny_sample: Path) -> None:
    target = find_targets(tiny_sample / "casp" / "SAMPLE")[0]
    native = read_pdb(target.native)
    # truncated decoy: keep all residues but the first 6
    lines = [ln for ln in target.native.read_text().splitlines() if ln.startswith("ATOM")]
    first_keys = {k[0] for k in native.keys[:6]}
    text = "\n".join(ln for ln in lines if int(ln[22:26]) not in first_keys)
    decoy = read_pdb(text.encode())
    f = featurize(native, decoy, cutoff=8.0)
    n = len(native)
    assert f["aa"].shape == (n,) and f["dssp"].shape == (n, 8)
    assert (~f["present"][:6]).all() and f["present"][6:].all()
    assert torch.isnan(f["lddt"][:6]).all()  # no local label where the decoy has no residue
    assert f["lddt"][6] < 1.0 and f["lddt"][-1] == 1.0  # contacts with absent residues count as lost
    assert f["dssp"][:6].abs().sum() == 0
    src, dst = f["edge_index"]
    consecutive = set(zip(range(n - 1), range(1, n)))
    assert consecutive <= set(zip(src.tolist(), dst.tolist()))  # sequence neighbours always joined...
    absent = (src < 6) | (dst < 6)
    assert ((src - dst).abs()[absent] == 1).all()  # ...absent residues have no spatial edge
    assert torch.isnan(f["edge_dist"][absent]).all()
    known = ~absent
    assert (f["edge_dist"][known][(src - dst).abs()[known] > 1] < 8.0).all()
    assert f["gdt_ts"] == pytest.approx((n - 6) / n)
    # helices found by DSSP in a globin, RSA in [0, 1], sin^2 + cos^2 = 1 where defined
    assert f["dssp"][:, 1].sum() > 0.3 * n
    assert ((f["dssp"][:, 3] >= 0) & (f["dssp"][:, 3] <= 1)).all()
    s2 = f["dssp"][6:-1, 4] ** 2 + f["dssp"][6:-1, 5] ** 2
    assert torch.allclose(s2[1:], torch.ones_like(s2[1:]), atol=1e-5)


def test_separation_classes() -> None:
    assert separation_class(np.array([1, -2, 3, 4, 5, 6, 10, -11, 100])).tolist() == [0, 1, 2, 3, 4, 5, 5, 6, 6]


def test_read_pdb_rejects_truncated_and_empty() -> None:
    with pytest.raises(PDBReadError, match="truncated"):
        read_pdb(b"ATOM      1  CA  ALA A   1      11.104   6.134")
    with pytest.raises(PDBReadError, match="no ATOM"):
        read_pdb(b"REMARK nothing here\nEND\n")


def test_datamodule_split_cache_and_counted_skips(tiny_sample: Path, tmp_path: Path, caplog) -> None:
    # a copy of the sample with one corrupt decoy
    import shutil

    data = tmp_path / "casp"
    shutil.copytree(tiny_sample / "casp" / "SAMPLE", data / "SAMPLE")
    target = sorted((data / "SAMPLE").iterdir())[0]
    (target / "decoys" / "broken.pdb").write_text("ATOM      1  N   MET A   1      1.0\n")
    dm = CASPDataModule(data_dir=str(data), test_fraction=0.25, val_fraction=0.34, batch_size=4)
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert not set(dm.splits["train"]) & set(dm.splits["test"])  # split by target
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 16
    assert len(dm.skipped) == 1 and "broken" in dm.skipped[0]
    assert "unreadable" in caplog.text
    cached = sorted((data / "processed" / "SAMPLE").glob("*.pt"))
    assert len(cached) == 4
    mtimes = [p.stat().st_mtime_ns for p in cached]
    dm2 = CASPDataModule(data_dir=str(data), test_fraction=0.25, val_fraction=0.34)
    dm2.setup("fit")
    assert [p.stat().st_mtime_ns for p in cached] == mtimes  # read from the cache
    assert len(dm2.skipped) == 1  # skips are remembered with the cached target
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 4 and batch.gdt_ts.shape == (4,)


def test_casp_download_layout_with_tarballs(tiny_sample: Path, tmp_path: Path) -> None:
    """natives/<T>.pdb + decoys/<T>.3D.srv.tar.gz (Prediction Center) and decoys/<T>/ (GraphQA's layout)."""
    src = find_targets(tiny_sample / "casp" / "SAMPLE")
    edition = tmp_path / "casp" / "CASP99"
    (edition / "natives").mkdir(parents=True)
    (edition / "decoys").mkdir()
    for i, t in enumerate(src):
        (edition / "natives" / f"T{i:04d}.pdb").write_bytes(t.native.read_bytes())
        if i % 2 == 0:
            with tarfile.open(edition / "decoys" / f"T{i:04d}.3D.srv.tar.gz", "w:gz") as tar:
                for p in sorted(t.decoys.iterdir()):
                    data = p.read_bytes()
                    info = tarfile.TarInfo(f"T{i:04d}/{p.stem}_TS1")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        else:
            (edition / "decoys" / f"T{i:04d}").mkdir()
            for p in sorted(t.decoys.iterdir()):
                (edition / "decoys" / f"T{i:04d}" / p.stem).write_bytes(p.read_bytes())
    targets = find_targets(edition)
    assert [t.name for t in targets] == ["T0000", "T0001", "T0002", "T0003"]
    assert targets[0].decoys.name.endswith(".3D.srv.tar.gz") and targets[1].decoys.is_dir()
    dm = CASPDataModule(data_dir=str(tmp_path / "casp"), test_targets=["T0003"], val_fraction=0.0,
                        cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert len(dm.train_set) == 12 and len(dm.test_set) == 4
    assert dm.test_set[0].name.startswith("T0003/")


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    dm = CASPDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="python -m datamodules.samples casp"):
        dm.setup()


@pytest.mark.realdata
def test_reads_shared_casp13_layout(shared_data: Path, tmp_path: Path) -> None:
    dm = CASPDataModule(data_dir=str(shared_data / "casp"), test_targets=["T0980s1"], val_fraction=0.0,
                        cache_dir=str(tmp_path / "cache"), max_decoys_per_target=5)
    dm.setup()
    assert dm.splits["test"] == ["CASP13/T0980s1"] and len(dm.splits["train"]) == 2
    assert len(dm.test_set) == 5 and len(dm.train_set) == 10
    g = dm.test_set[0]
    assert g.num_nodes == 104  # the D1 domain of the native; the models' 7 extra residues are not nodes
    assert 0.0 < float(g.gdt_ts) < 1.0
