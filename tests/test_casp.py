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
    DSSP8_CLASSES,
    MSA_ALPHABET,
    CASPDataModule,
    PDBReadError,
    featurize,
    find_targets,
    msa_features,
    read_alignment,
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
    assert f["aa"].shape == (n,) and f["dssp"].shape == (n, 14)  # the paper's 14-d DSSP vector
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
    # 8-state DSSP: one class per present residue; alpha helices (H, slot 2) found in a globin; RSA in [0, 1];
    # sin^2 + cos^2 = 1 where defined
    assert (f["dssp"][6:, :9].sum(dim=1) == 1).all()
    assert f["dssp"][:, 1 + DSSP8_CLASSES.index("H")].sum() > 0.3 * n
    assert ((f["dssp"][:, 9] >= 0) & (f["dssp"][:, 9] <= 1)).all()
    s2 = f["dssp"][6:-1, 10] ** 2 + f["dssp"][6:-1, 11] ** 2
    assert torch.allclose(s2[1:], torch.ones_like(s2[1:]), atol=1e-5)
    # 3-state DSSP (pydssp): loop/helix/strand one-hot + the same RSA and angles
    f3 = featurize(native, decoy, cutoff=8.0, dssp_states=3)
    assert f3["dssp"].shape == (n, 8) and f3["dssp"][:, 1].sum() > 0.3 * n
    assert torch.equal(f3["dssp"][:, 3:], f["dssp"][:, 9:])


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


THREE_TO_ONE = dict(zip(("ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET",
                         "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL"), "ARNDCQEGHILKMFPSTWYV"))


def test_msa_features_match_a_hand_computation(tmp_path: Path) -> None:
    """a3m: '>' headers, lower-case insertions and '.' removed; pseudo-count 1 over 22 symbols."""
    path = tmp_path / "T.a3m"
    path.write_text(">query\nAC-D\n>hit1 insertion 'a' after C\nACaE-\n>hit2\nGC.-D\n")
    assert read_alignment(path) == ["AC-D", "ACE-", "GC-D"]
    f = msa_features(read_alignment(path))
    k = len(MSA_ALPHABET)
    assert f.shape == (4, 2 * k) and k == 22
    col = lambda ch: MSA_ALPHABET.index(ch)  # noqa: E731
    # column 0 = A, A, G: counts + 1 pseudo-count each -> p_A = 3/25, p_G = 2/25, p_other = 1/25
    for ch, p in (("A", 3 / 25), ("G", 2 / 25), ("W", 1 / 25)):
        assert f[0, col(ch)] == pytest.approx(-np.log2(p * 22), rel=1e-6)  # self-information vs uniform
        assert f[0, k + col(ch)] == pytest.approx(p * np.log2(p * 22), rel=1e-6)  # partial entropy
    # column 2 = gap, E, gap: p_gap = 3/25
    assert f[2, col("-")] == pytest.approx(-np.log2(3 * 22 / 25), rel=1e-6)
    assert f[2, k + col("E")] == pytest.approx(2 / 25 * np.log2(2 * 22 / 25), rel=1e-6)
    # column 1 (C in all three): the conserved residue has the most negative self-information
    assert f[1, :k].argmin() == col("C")
    (tmp_path / "plain.aln").write_text("AC-D\nACaE-\nGC.-D\n")  # plain: one row per line, no headers
    assert read_alignment(tmp_path / "plain.aln") == ["AC-D", "ACE-", "GC-D"]
    (tmp_path / "bad.aln").write_text("ACD\nAC\n")
    with pytest.raises(ValueError, match="not an alignment"):
        read_alignment(tmp_path / "bad.aln")


def test_datamodule_reads_user_alignments(tiny_sample: Path, tmp_path: Path, caplog) -> None:
    targets = find_targets(tiny_sample / "casp" / "SAMPLE")
    msa_dir = tmp_path / "msa"
    msa_dir.mkdir()
    natives = [read_pdb(t.native) for t in targets]
    seqs = ["".join(THREE_TO_ONE.get(n, "X") for n in nat.names) for nat in natives]
    # target 0: one column per native residue (FASTA); target 1: the target sequence numbered from 1, longer
    # than the native's residues (residues placed by number); target 2: no alignment; target 3: too short
    (msa_dir / f"{targets[0].name}.fasta").write_text(f">q\n{seqs[0]}\n>h\n{'-' * len(seqs[0])}\n")
    numbers = [k[0] for k in natives[1].keys]
    full = ["-"] * (max(numbers) + 3)
    for number, aa in zip(numbers, seqs[1]):
        full[number - 1] = aa
    (msa_dir / f"{targets[1].name}.a3m").write_text(f">q\n{''.join(full)}\n")
    (msa_dir / f"{targets[3].name}.aln").write_text("ACD\nACD\n")
    dm = CASPDataModule(data_dir=str(tiny_sample / "casp"), test_fraction=0.0, val_fraction=0.0, batch_size=4,
                        msa_dir=str(msa_dir), cache_dir=str(tmp_path / "cache"), min_length=1)
    dm.setup("fit")
    assert dm.num_msa_features == 44
    by_target = {}
    for g in dm.train_set:
        by_target.setdefault(g.name.split("/")[0], g)
    assert set(by_target) == {targets[0].name, targets[1].name, targets[2].name}  # target 3 skipped, counted
    assert len(dm.skipped) == 1 and targets[3].name in dm.skipped[0] and "alignment columns" in dm.skipped[0]
    k = len(MSA_ALPHABET)
    g0 = by_target[targets[0].name]
    assert g0.msa.shape == (len(natives[0]), 44)
    first = MSA_ALPHABET.index(seqs[0][0])  # column 0: the residue once + a gap once, + 1 pseudo-count each
    assert float(g0.msa[0, first]) == pytest.approx(-np.log2(2 / 24 * 22), rel=1e-6)
    assert float(g0.msa[0, k + MSA_ALPHABET.index("-")]) == pytest.approx(2 / 24 * np.log2(2 / 24 * 22), rel=1e-6)
    g1 = by_target[targets[1].name]
    for i, aa in enumerate(seqs[1]):  # a single sequence: its residue is the column's most frequent symbol
        assert int(g1.msa[i, :k].argmin()) == MSA_ALPHABET.index(aa)
    assert float(by_target[targets[2].name].msa.abs().sum()) == 0.0 and "no alignment" in caplog.text


def _mkdssp_states(pdb_text: str, tmp_path: Path) -> str:
    import subprocess

    path = tmp_path / "in.pdb"
    header = ("HEADER    DECOY                                   01-JAN-00   XXXX              \n"
              "CRYST1    1.000    1.000    1.000  90.00  90.00  90.00 P 1           1          \n")
    path.write_text(header + "\n".join(ln for ln in pdb_text.splitlines() if ln.startswith("ATOM")) + "\nEND\n")
    out = subprocess.run(["mkdssp", "--output-format", "dssp", str(path), str(tmp_path / "out.dssp")],
                         capture_output=True, text=True, check=True)
    assert out.returncode == 0
    lines = (tmp_path / "out.dssp").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  #  RESIDUE")) + 1
    # '!' rows mark chain breaks; DSSP 4 adds the polyproline state 'P', which classic 8-state DSSP calls coil
    return "".join("-" if ln[16] in " P" else ln[16] for ln in lines[start:] if ln[13] != "!")


@pytest.mark.skipif(__import__("shutil").which("mkdssp") is None, reason="mkdssp absent (apt-get install dssp)")
def test_dssp8_matches_mkdssp(tiny_sample: Path, tmp_path: Path) -> None:
    """Our 8-state DSSP (mdtraj) against the DSSP program (Debian's mkdssp 4) on natives and decoys."""
    from datamodules.casp import _dssp8

    agree = total = 0
    for target in find_targets(tiny_sample / "casp" / "SAMPLE"):
        for path in [target.native, *sorted(target.decoys.iterdir())[:2]]:
            res = read_pdb(path)
            ours = "".join(DSSP8_CLASSES[i] for i in _dssp8(res.backbone, res.names))
            theirs = _mkdssp_states(path.read_text(), tmp_path)
            assert len(ours) == len(theirs)
            agree += sum(a == b for a, b in zip(ours, theirs))
            total += len(ours)
    print(f"8-state DSSP agreement with mkdssp: {agree}/{total} = {agree / total:.4f}")
    assert agree / total >= 0.99, agree / total  # measured: 1743/1743 identical
