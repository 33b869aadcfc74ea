"""CASP model-quality data: decoys of each target as residue graphs with their true LDDT and GDT_TS.

Layouts read (``data_dir`` holds one folder per CASP edition, e.g. ``CASP11/``, ``CASP13/``, ``SAMPLE/``):

* per-target folders (``../shared/data/casp`` and the offline sample):
  ``<edition>/<target>/native.pdb``, ``<edition>/<target>/decoys/*`` and optionally
  ``<edition>/<target>/scores.csv``;
* a CASP download / GraphQA's layout: natives ``<edition>/{native,natives,targets}/<target>.pdb``
  and decoys ``<edition>/decoys/<target>/*`` (extracted server models, any file name) or the
  Prediction Center's tarballs ``<edition>/decoys/<target>.3D.srv.tar.gz`` (read without extracting).

Every decoy is matched to its native by residue number (and insertion code); nodes are the native's
residues, residues absent from a decoy stay as nodes with ``present = False`` (no features, no
spatial edges, no local label). True per-residue LDDT and GDT_TS are computed from the native with
``metrics.protein``. Featurisation is cached per target as ``<cache_dir>/<edition>/<target>-<key>.pt``.
Unreadable or truncated PDB files are skipped, counted and logged (``skipped`` attribute).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from datamodules.base import missing_data_error, resolve_data_dir
from metrics.protein import gdt_ts, lddt

log = logging.getLogger(__name__)

AMINO_ACIDS = (
    "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE",
    "LEU", "LYS", "MET", "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL",
)  # fmt: skip
ALIASES = {"MSE": "MET", "SEC": "CYS", "PYL": "LYS", "HSD": "HIS", "HSE": "HIS", "HSP": "HIS", "HID": "HIS",
           "HIE": "HIS", "HIP": "HIS", "CYX": "CYS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS"}
UNKNOWN = 20  # any other residue; 21 = gap (a residue of the target sequence with no coordinates in the native)
GAP = 21
NUM_RESIDUE_TYPES = 22
AA_INDEX = {name: i for i, name in enumerate(AMINO_ACIDS)}
BACKBONE = ("N", "CA", "C", "O")
# maximum accessible surface area per residue (Tien et al. 2013, theoretical), for relative accessibility
MAX_ASA = dict(zip(AMINO_ACIDS, (129, 274, 195, 193, 167, 225, 223, 104, 224, 197,
                                 201, 236, 224, 240, 159, 155, 172, 285, 263, 174)))  # fmt: skip
SEPARATION_CLASSES = 7  # |i - j| in {1, 2, 3, 4, 5, 6-10, >10}
# DSSP secondary structure. 8 states (GraphQA's: DSSP's G, H, I, T, E, B, S and coil, plus a class for a residue
# without an assignment, as in GraphQA's preprocessing) from mdtraj's DSSP; 3 states (loop, helix, strand) from pydssp.
DSSP8_CLASSES = "GHITEBS-"  # one-hot slots 1..8; slot 0 = no assignment (incomplete backbone)
DSSP_STATES = (8, 3)
# per residue: secondary-structure one-hot, RSA, sin/cos phi, sin/cos psi -> 9 + 5 = 14 (the paper's 14-d DSSP vector)
# with 8 states; 3 + 5 = 8 with 3 states
NUM_DSSP_FEATURES = {8: len(DSSP8_CLASSES) + 1 + 5, 3: 3 + 5}
FEATURE_VERSION = 2


class PDBReadError(ValueError):
    """A PDB file that cannot be used (no ATOM records, truncated lines, bad numbers)."""


@dataclass
class Residues:
    """One chain, residue by residue: keys ``(resnum, icode)``, names, backbone/CB coords, all heavy atoms."""

    keys: list[tuple[int, str]]
    names: list[str]
    backbone: np.ndarray  # (R, 4, 3) N, CA, C, O; NaN where absent
    cb: np.ndarray  # (R, 3) C-beta (C-alpha for glycine or a missing C-beta)
    atom_coords: np.ndarray = field(repr=False)  # (A, 3) heavy atoms
    atom_elements: list[str] = field(repr=False)
    atom_residue: np.ndarray = field(repr=False)  # (A,) residue index of each atom

    @property
    def ca(self) -> np.ndarray:
        return self.backbone[:, 1]

    def __len__(self) -> int:
        return len(self.keys)


def _lines(source: str | os.PathLike | bytes) -> list[str]:
    if isinstance(source, bytes):
        text = source.decode("utf-8", errors="replace")
    else:
        with open(source, encoding="utf-8", errors="replace") as f:
            text = f.read()
    return text.splitlines()


def read_pdb(source: str | os.PathLike | bytes, name: str | None = None) -> Residues:
    """Read the first model and first chain of a PDB file (path or bytes) into :class:`Residues`.

    Reads ATOM records (and HETATM of modified amino acids such as MSE), the first alternate location
    and hydrogens dropped. Raises :class:`PDBReadError` for a file with no usable residue or a
    malformed coordinate record (truncated downloads).
    """
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    keys: list[tuple[int, str]] = []
    names: list[str] = []
    index: dict[tuple[int, str], int] = {}
    atoms: list[tuple[int, str, str, float, float, float]] = []
    chain = None
    for number, line in enumerate(_lines(source), 1):
        record = line[:6]
        if record.startswith("ENDMDL"):
            break
        if not (record == "ATOM  " or (record == "HETATM" and line[17:20].strip() in ALIASES)):
            continue
        if len(line) < 54:
            raise PDBReadError(f"{name}:{number}: truncated coordinate record {line!r}")
        altloc = line[16]
        if altloc not in (" ", "A", "1"):
            continue
        this_chain = line[21]
        if chain is None:
            chain = this_chain
        elif this_chain != chain:
            continue  # first chain only
        atom = line[12:16].strip()
        element = line[76:78].strip() if len(line) >= 78 else ""
        element = element or atom.lstrip("0123456789")[:1]
        if element.upper() in ("H", "D"):
            continue
        try:
            key = (int(line[22:26]), line[26].strip())
            xyz = float(line[30:38]), float(line[38:46]), float(line[46:54])
        except ValueError as err:
            raise PDBReadError(f"{name}:{number}: bad coordinate record {line!r}") from err
        if not all(math.isfinite(v) for v in xyz):
            raise PDBReadError(f"{name}:{number}: non-finite coordinate")
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
            names.append(ALIASES.get(line[17:20].strip(), line[17:20].strip()))
        atoms.append((index[key], atom, element.upper(), *xyz))
    if not keys:
        raise PDBReadError(f"{name}: no ATOM records")
    n = len(keys)
    backbone = np.full((n, 4, 3), np.nan)
    cb = np.full((n, 3), np.nan)
    coords = np.array([a[3:] for a in atoms], dtype=np.float64)
    residue = np.array([a[0] for a in atoms], dtype=np.int64)
    slot = {a: i for i, a in enumerate(BACKBONE)}
    for i, (r, atom, _, *_xyz) in enumerate(atoms):
        if atom in slot and np.isnan(backbone[r, slot[atom], 0]):
            backbone[r, slot[atom]] = coords[i]
        elif atom == "CB" and np.isnan(cb[r, 0]):
            cb[r] = coords[i]
    if np.isnan(backbone[:, 1, 0]).all():
        raise PDBReadError(f"{name}: no C-alpha atom")
    cb = np.where(np.isnan(cb), backbone[:, 1], cb)
    return Residues(keys, names, backbone, cb, coords, [a[2] for a in atoms], residue)


def align_to_native(native: Residues, model: Residues) -> tuple[np.ndarray, np.ndarray]:
    """Index of each native residue in ``model`` (-1 where absent) and whether it is present with a C-alpha."""
    where = {key: i for i, key in enumerate(model.keys)}
    idx = np.array([where.get(key, -1) for key in native.keys], dtype=np.int64)
    present = idx >= 0
    present[present] &= np.isfinite(model.ca[idx[present]]).all(axis=1)
    return idx, present


def _take(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.full((len(idx), *array.shape[1:]), np.nan)
    ok = idx >= 0
    out[ok] = array[idx[ok]]
    return out


def true_scores(native: Residues, model: Residues) -> dict[str, np.ndarray | float]:
    """Per-residue LDDT (NaN where undefined) and GDT_TS of ``model`` against ``native`` on C-alpha atoms."""
    idx, present = align_to_native(native, model)
    model_ca = _take(model.ca, idx)
    native_ok = np.isfinite(native.ca).all(axis=1)
    local, global_lddt = lddt(model_ca, native.ca, present, native_ok)
    return {"lddt": local, "lddt_global": global_lddt, "gdt_ts": gdt_ts(model_ca, native.ca, present, native_ok),
            "present": present}


# --------------------------------------------------------------------------------------------------
# featurisation


def _dihedral(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1n).sum(-1, keepdims=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdims=True) * b1n
    x = (v * w).sum(-1)
    y = (np.cross(b1n, v) * w).sum(-1)
    return np.arctan2(y, x)


def backbone_dihedrals(res: Residues) -> tuple[np.ndarray, np.ndarray]:
    """phi and psi (radians) of each residue; NaN at chain ends, breaks (C-N > 2 A) and missing atoms."""
    n, ca, c = res.backbone[:, 0], res.backbone[:, 1], res.backbone[:, 2]
    phi = np.full(len(res), np.nan)
    psi = np.full(len(res), np.nan)
    if len(res) > 1:
        linked = np.linalg.norm(c[:-1] - n[1:], axis=-1) < 2.0  # peptide bond i -> i+1
        with np.errstate(invalid="ignore"):
            phi[1:] = np.where(linked, _dihedral(c[:-1], n[1:], ca[1:], c[1:]), np.nan)
            psi[:-1] = np.where(linked, _dihedral(n[:-1], ca[:-1], c[:-1], n[1:]), np.nan)
    return phi, psi


def relative_accessibility(res: Residues, points: int = 100) -> np.ndarray:
    """Relative solvent accessibility per residue: biotite's Shrake-Rupley SASA / the residue's maximum."""
    import biotite.structure as struc

    atoms = struc.AtomArray(len(res.atom_coords))
    atoms.coord = res.atom_coords.astype(np.float32)
    atoms.element = np.array(res.atom_elements)
    known = np.isin(atoms.element, ["C", "N", "O", "S", "SE"])
    atoms.element[~known] = "C"
    sasa = struc.sasa(atoms, vdw_radii="Single", point_number=points)
    per_residue = np.bincount(res.atom_residue, weights=np.nan_to_num(sasa), minlength=len(res))
    max_asa = np.array([MAX_ASA.get(name, 200.0) for name in res.names])
    return np.clip(per_residue / max_asa, 0.0, 1.0)


def _dssp8(backbone: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """8-state DSSP (Kabsch & Sander; mdtraj's implementation) of complete backbones (R, 4, 3) N, CA, C, O in A.

    A new chain is started wherever the peptide bond C(i)-N(i+1) is longer than 2.5 A (missing residues),
    as DSSP does at chain breaks. Returns class indices into :data:`DSSP8_CLASSES`.
    """
    try:
        import mdtraj
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("8-state DSSP needs mdtraj (pip install mdtraj); or use dssp_states=3 (pydssp)") from err
    top = mdtraj.Topology()
    chain = top.add_chain()
    elements = [mdtraj.element.get_by_symbol(e) for e in ("N", "C", "C", "O")]
    for i, name in enumerate(names):
        if i > 0 and np.linalg.norm(backbone[i - 1, 2] - backbone[i, 0]) > 2.5:
            chain = top.add_chain()
        residue = top.add_residue(name if name in AA_INDEX else "UNK", chain)
        for atom, element in zip(BACKBONE, elements):
            top.add_atom(atom, element, residue)
    traj = mdtraj.Trajectory((backbone.reshape(1, -1, 3) / 10.0).astype(np.float32), top)  # mdtraj works in nm
    ss = mdtraj.compute_dssp(traj, simplified=False)[0]
    return np.array([DSSP8_CLASSES.index("-" if c in (" ", "NA") else c) for c in ss], dtype=np.int64)


def dssp_features(res: Residues, states: int = 8) -> np.ndarray:
    """DSSP features per residue: secondary-structure one-hot, RSA, sin/cos phi, sin/cos psi.

    ``states=8`` (GraphQA's): one-hot over [no assignment, G, H, I, T, E, B, S, coil] from mdtraj's DSSP,
    (R, 14). ``states=3``: one-hot over (loop, helix, strand) from pydssp, (R, 8). Residues without a
    complete backbone get no secondary structure (slot 0 with 8 states, all-zero with 3); undefined angles
    get sin = cos = 0.
    """
    if states not in DSSP_STATES:
        raise ValueError(f"dssp_states must be one of {DSSP_STATES}, got {states}")
    width = NUM_DSSP_FEATURES[states]
    ss_width = width - 5
    feats = np.zeros((len(res), width), dtype=np.float32)
    complete = np.isfinite(res.backbone).all(axis=(1, 2))
    if states == 8:
        feats[~complete, 0] = 1.0
        if complete.any():
            ss = _dssp8(res.backbone[complete], [res.names[i] for i in np.flatnonzero(complete)])
            feats[np.flatnonzero(complete), ss + 1] = 1.0
    elif complete.sum() >= 3:
        import pydssp

        ss = pydssp.assign(res.backbone[complete].astype(np.float32), out_type="index")
        feats[np.flatnonzero(complete), np.asarray(ss, dtype=np.int64)] = 1.0
    feats[:, ss_width] = relative_accessibility(res)
    phi, psi = backbone_dihedrals(res)
    for k, angle in ((ss_width + 1, phi), (ss_width + 3, psi)):
        ok = np.isfinite(angle)
        feats[ok, k] = np.sin(angle[ok])
        feats[ok, k + 1] = np.cos(angle[ok])
    return feats


def separation_class(sep: np.ndarray) -> np.ndarray:
    """|i - j| -> class index of {1, 2, 3, 4, 5, 6-10, >10} (0..6)."""
    sep = np.abs(sep)
    return np.where(sep <= 5, sep - 1, np.where(sep <= 10, 5, 6)).astype(np.int64)


def residue_graph(cb: np.ndarray, present: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (both ways): consecutive residues always, other pairs of present residues whose
    C-beta distance is below ``cutoff``. Returns ``edge_index`` (2, E) and distances (E,), NaN where unknown."""
    n = len(cb)
    pos = np.where(present[:, None], cb, 0.0)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    both = present[:, None] & present[None]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    adj = ((d < cutoff) & both) | (np.abs(i - j) == 1)
    np.fill_diagonal(adj, False)
    src, dst = np.nonzero(adj)
    dist = np.where(both[src, dst], d[src, dst], np.nan)
    return np.stack([src, dst]), dist


MSA_ALPHABET = "ACDEFGHIKLMNPQRSTVWYX-"


def read_alignment(path: str | os.PathLike) -> list[str]:
    """Aligned sequences (first = the target) of an a3m / aligned FASTA file (``>`` headers, a sequence may span
    lines) or a plain alignment (one sequence per line, no headers, e.g. PSICOV ``.aln``).
    a3m insertions (lower case, ``.``) are removed. Clustal/Stockholm files are rejected with an error."""
    lines = [line.strip() for line in _lines(path)]
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and lines[0].upper().startswith(("CLUSTAL", "# STOCKHOLM")):
        raise ValueError(f"{path}: Clustal/Stockholm alignments are not read; convert to a3m or FASTA")
    strip = lambda line: "".join(ch for ch in line if not (ch.islower() or ch == "."))  # noqa: E731
    seqs: list[str] = []
    if any(line.startswith(">") for line in lines):
        current: list[str] | None = None
        for line in lines:
            if line.startswith(">"):
                if current is not None:
                    seqs.append("".join(current))
                current = []
            elif current is not None:
                current.append(strip(line))
        if current is not None:
            seqs.append("".join(current))
    else:
        seqs = [strip(line) for line in lines]
    if not seqs or not seqs[0] or len({len(s) for s in seqs}) != 1:
        raise ValueError(f"{path}: not an alignment (no sequence, or rows of different lengths)")
    return seqs


def msa_features(seqs: Sequence[str], pseudo: float = 1.0) -> np.ndarray:
    """(L, 44): per column, self-information -log2(p_a / b_a) and partial entropy p_a log2(p_a / b_a)
    over 22 symbols (20 amino acids, X, gap); profile with ``pseudo`` counts, uniform background."""
    index = {ch: i for i, ch in enumerate(MSA_ALPHABET)}
    codes = np.array([[index.get(ch.upper(), 20) for ch in s] for s in seqs])
    k = len(MSA_ALPHABET)
    counts = np.stack([(codes == a).sum(axis=0) for a in range(k)], axis=1).astype(np.float64) + pseudo
    p = counts / counts.sum(axis=1, keepdims=True)
    ratio = np.log2(p * k)
    return np.concatenate([-ratio, p * ratio], axis=1).astype(np.float32)


def featurize(native: Residues, model: Residues, cutoff: float = 8.0, msa: np.ndarray | None = None,
              dssp_states: int = 8) -> dict:
    """One decoy as tensors over the native's residues, with its true scores."""
    idx, present = align_to_native(native, model)
    n = len(native)
    aa = np.array([AA_INDEX.get(name, UNKNOWN) for name in native.names], dtype=np.int64)
    aa[~np.isfinite(native.ca).all(axis=1)] = GAP
    dssp = np.zeros((n, NUM_DSSP_FEATURES[dssp_states]), dtype=np.float32)
    dssp[present] = dssp_features(model, dssp_states)[idx[present]]
    cb = _take(model.cb, idx)
    edge_index, dist = residue_graph(cb, present, cutoff)
    scores = true_scores(native, model)
    out = {
        "aa": torch.from_numpy(aa),
        "dssp": torch.from_numpy(dssp),
        "present": torch.from_numpy(present),
        "edge_index": torch.from_numpy(edge_index),
        "edge_dist": torch.from_numpy(dist.astype(np.float32)),
        "edge_sep": torch.from_numpy(separation_class(edge_index[0] - edge_index[1])),
        "lddt": torch.from_numpy(np.asarray(scores["lddt"], dtype=np.float32)),
        "gdt_ts": float(scores["gdt_ts"]),
        "lddt_global": float(scores["lddt_global"]),
    }
    if msa is not None:
        if len(msa) != n:
            raise ValueError(f"MSA has {len(msa)} columns but the native has {n} residues")
        out["msa"] = torch.from_numpy(msa)
    return out


# --------------------------------------------------------------------------------------------------
# on-disk layouts

NATIVE_DIRS = ("native", "natives", "targets")
TARBALL_SUFFIX = ".3D.srv.tar.gz"


@dataclass
class Target:
    """Where one target's native and decoys are: a per-target folder, a decoy folder or a tarball."""

    edition: str
    name: str
    native: Path
    decoys: Path  # a folder of decoy files, or a CASP ``.3D.srv.tar.gz`` tarball
    scores: Path | None = None

    def decoy_sources(self) -> Iterable[tuple[str, bytes | Path]]:
        """(decoy name, path or file bytes), sorted by name."""
        if self.decoys.is_dir():
            for path in sorted(p for p in self.decoys.iterdir() if p.is_file() and not p.name.startswith(".")):
                yield path.name.removesuffix(".pdb"), path
            return
        with tarfile.open(self.decoys) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:
                f = tar.extractfile(member)
                if f is not None:
                    yield Path(member.name).name.removesuffix(".pdb"), f.read()


def find_targets(edition_dir: Path) -> list[Target]:
    """Targets of one edition folder in any of the supported layouts (see the module docstring)."""
    edition = edition_dir.name
    found: dict[str, Target] = {}
    for sub in sorted(p for p in edition_dir.iterdir() if p.is_dir()):
        native = sub / "native.pdb"
        if native.is_file() and (sub / "decoys").is_dir():
            scores = sub / "scores.csv"
            found[sub.name] = Target(edition, sub.name, native, sub / "decoys", scores if scores.is_file() else None)
    natives: dict[str, Path] = {}
    for name in NATIVE_DIRS:
        folder = edition_dir / name
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in (".pdb", ".ent", "") and path.is_file():
                    natives.setdefault(path.name.split(".")[0], path)
    decoy_dir = edition_dir / "decoys"
    if natives and decoy_dir.is_dir():
        for target, native in natives.items():
            if target in found:
                continue
            folder, tarball = decoy_dir / target, decoy_dir / f"{target}{TARBALL_SUFFIX}"
            if folder.is_dir():
                found[target] = Target(edition, target, native, folder)
            elif tarball.is_file():
                found[target] = Target(edition, target, native, tarball)
            else:
                log.warning("CASP %s: native %s has no decoys (%s or %s): target skipped", edition, native, folder, tarball)
    return [found[k] for k in sorted(found)]


# --------------------------------------------------------------------------------------------------
# dataset


def _cache_key(cutoff: float, msa: bool, dssp_states: int = 8) -> str:
    spec = json.dumps({"v": FEATURE_VERSION, "cutoff": cutoff, "msa": msa, "dssp": dssp_states}, sort_keys=True)
    return hashlib.sha1(spec.encode()).hexdigest()[:10]


def _to_data(item: dict, target_id: int, decoy_id: int) -> Data:
    n = len(item["aa"])
    data = Data(
        aa=item["aa"], dssp=item["dssp"], present=item["present"], edge_index=item["edge_index"],
        edge_dist=item["edge_dist"], edge_sep=item["edge_sep"], lddt=item["lddt"],
        gdt_ts=torch.tensor([item["gdt_ts"]], dtype=torch.float32),
        target_id=torch.tensor([target_id]), decoy_id=torch.tensor([decoy_id]), num_nodes=n,
    )
    if "msa" in item:
        data.msa = item["msa"]
    return data


class CASPTargets:
    """Featurised decoys of a list of targets, loaded from (or written to) the per-target cache.

    ``skipped`` counts unreadable decoy files, ``skipped_targets`` unreadable natives; both are logged.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        cache_dir: Path,
        cutoff: float = 8.0,
        msa_dir: Path | None = None,
        max_decoys: int | None = None,
        workers: int = 0,
        dssp_states: int = 8,
    ) -> None:
        if dssp_states not in DSSP_STATES:
            raise ValueError(f"dssp_states must be one of {DSSP_STATES}, got {dssp_states}")
        self.dssp_states = dssp_states
        self.targets = list(targets)
        self.workers = workers
        self.cache_dir = cache_dir
        self.cutoff = cutoff
        self.msa_dir = msa_dir
        self.max_decoys = max_decoys
        self.skipped: list[str] = []
        self.skipped_targets: list[str] = []

    def _msa(self, target: Target, native: Residues) -> np.ndarray | None:
        """MSA features of the native's residues from ``<msa_dir>/<target>.a3m|.aln|.fasta|.fa``.

        The alignment's first row is the target sequence: when it has as many columns as the native has
        residues, column ``i`` is residue ``i``; otherwise residues are placed by their number (CASP numbers
        the target sequence from 1), and a native residue numbered outside the alignment is an error.
        """
        if self.msa_dir is None:
            return None
        for ext in (".a3m", ".aln", ".fasta", ".fa"):
            path = self.msa_dir / f"{target.name}{ext}"
            if path.is_file():
                feats = msa_features(read_alignment(path))
                if len(feats) == len(native):
                    return feats
                numbers = np.array([k[0] for k in native.keys])
                if numbers.min() < 1 or numbers.max() > len(feats):
                    raise ValueError(f"{path}: {len(feats)} alignment columns, but the native has {len(native)} "
                                     f"residues numbered {numbers.min()}..{numbers.max()}")
                return feats[numbers - 1]
        log.warning("no alignment for %s in %s: MSA features are zero", target.name, self.msa_dir)
        return np.zeros((len(native), 2 * len(MSA_ALPHABET)), dtype=np.float32)

    def featurize_target(self, target: Target) -> dict:
        """Featurise every readable decoy of ``target`` (no cache)."""
        native = read_pdb(target.native)
        msa = self._msa(target, native)
        decoys, names, skipped = [], [], []
        for name, source in target.decoy_sources():
            try:
                model = read_pdb(source, name=f"{target.edition}/{target.name}/{name}")
                if not align_to_native(native, model)[1].any():
                    raise PDBReadError(f"{target.name}/{name}: no residue in common with the native")
                decoys.append(featurize(native, model, self.cutoff, msa, self.dssp_states))
                names.append(name)
            except (PDBReadError, ValueError, OSError) as err:
                skipped.append(f"{target.edition}/{target.name}/{name}: {err}")
        return {"key": self.key, "names": names, "decoys": decoys, "skipped": skipped}

    @property
    def key(self) -> str:
        return _cache_key(self.cutoff, self.msa_dir is not None, self.dssp_states)

    def cache_path(self, target: Target) -> Path:
        return self.cache_dir / target.edition / f"{target.name}-{self.key}.pt"

    def load_target(self, target: Target) -> dict | None:
        path = self.cache_path(target)
        if path.is_file():
            return torch.load(path, weights_only=True)
        try:
            item = self.featurize_target(target)
        except (PDBReadError, ValueError, OSError, tarfile.TarError) as err:  # unreadable native or alignment
            log.warning("CASP: target %s/%s skipped: %s", target.edition, target.name, err)
            self.skipped_targets.append(f"{target.edition}/{target.name}: {err}")
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(item, tmp)
        os.replace(tmp, path)
        return item

    def load(self, target_ids: dict[str, int], decoy_offset: int = 0) -> list[Data]:
        """All decoys as ``Data`` graphs; ``target_ids`` maps ``edition/target`` to a stable integer id."""
        graphs: list[Data] = []
        todo = [t for t in self.targets if not self.cache_path(t).is_file()]
        if self.workers > 1 and len(todo) > 1:  # featurise uncached targets in parallel processes
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(self.workers) as pool:
                for target, failed in zip(todo, pool.map(_featurize_into_cache, [(self, t) for t in todo])):
                    if failed:
                        self.skipped_targets.append(failed)
                        log.warning("CASP: target skipped: %s", failed)
        for target in self.targets:
            if any(s.startswith(f"{target.edition}/{target.name}:") for s in self.skipped_targets):
                continue
            item = self.load_target(target)
            if item is None:
                continue
            for reason in item["skipped"]:
                log.warning("CASP: unreadable decoy skipped: %s", reason)
            self.skipped.extend(item["skipped"])
            tid = target_ids[f"{target.edition}/{target.name}"]
            for k, (name, decoy) in enumerate(zip(item["names"], item["decoys"])):
                if self.max_decoys is not None and k >= self.max_decoys:
                    break
                data = _to_data(decoy, tid, tid * 100_000 + k)
                data.name = f"{target.name}/{name}"
                graphs.append(data)
        return graphs


def _featurize_into_cache(args: tuple[CASPTargets, Target]) -> str | None:
    """Worker: featurise one target into the cache; returns the skip reason of an unreadable target."""
    dataset, target = args
    before = len(dataset.skipped_targets)
    dataset.load_target(target)
    return dataset.skipped_targets[before] if len(dataset.skipped_targets) > before else None


class CASPDataModule(LightningDataModule):
    """Decoys of CASP targets as residue graphs (GraphQA), split by target and by CASP edition.

    Args:
        data_dir: folder of edition folders (``CASP11/``, ``CASP13/``, ``SAMPLE/``...); default ``$PAPERZOO_DATA/casp``.
        train_editions: editions whose targets are split into train/validation (default: every edition not
            in ``test_editions``). Paper: CASP7-10.
        test_editions: editions used only for testing (paper: CASP11, CASP12). When empty, ``test_fraction``
            of the targets of ``train_editions`` are held out instead (or exactly ``test_targets``).
        test_targets: names of targets held out for testing (overrides ``test_fraction``).
        val_fraction: share of the training targets held out for validation (split by target).
        test_fraction: share of targets held out for testing when no test edition/targets are named.
        split_seed: seed of the target split (independent of ``seed_everything``).
        cutoff: contact cutoff (A) between C-beta atoms for the graph's spatial edges (paper's best: 8).
        min_length: drop targets whose native has fewer residues (paper: 50).
        msa_dir: folder of alignments ``<target>.a3m|.aln|.fasta``; adds self-information and partial
            entropy node features (zeros for a target without alignment).
        cache_dir: where featurised targets are cached (default ``<data_dir>/processed`` if writable,
            else ``$PAPERZOO_DATA/casp_cache``).
        max_decoys_per_target: keep at most this many decoys per target (quick experiments).
        featurize_workers: processes featurising uncached targets in parallel (0/1: in this process).
        dssp_states: secondary structure classes: 8 (GraphQA's; DSSP's 8 states through mdtraj, 14 DSSP
            features per residue) or 3 (loop/helix/strand through pydssp, 8 features). The model's
            ``num_dssp`` must match (``num_dssp_features``).
        batch_size, num_workers: DataLoader settings (graphs per batch per process).
    """

    folder = "casp"
    sample_name = "casp"

    def __init__(
        self,
        data_dir: str | None = None,
        train_editions: list[str] | None = None,
        test_editions: list[str] | None = None,
        test_targets: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        cutoff: float = 8.0,
        min_length: int = 50,
        msa_dir: str | None = None,
        cache_dir: str | None = None,
        max_decoys_per_target: int | None = None,
        featurize_workers: int = 0,
        dssp_states: int = 8,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        if dssp_states not in DSSP_STATES:
            raise ValueError(f"dssp_states must be one of {DSSP_STATES}, got {dssp_states}")
        self.data_dir = resolve_data_dir(data_dir, self.folder)
        self.train_set: list[Data] = []
        self.val_set: list[Data] = []
        self.test_set: list[Data] = []
        self.splits: dict[str, list[str]] = {}
        self.skipped: list[str] = []
        self.target_names: dict[int, str] = {}

    def _cache_dir(self) -> Path:
        if self.hparams.cache_dir:
            return Path(self.hparams.cache_dir)
        own = self.data_dir / "processed"
        if os.access(self.data_dir, os.W_OK):
            return own
        from datamodules.base import data_root

        digest = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:8]
        return data_root() / "casp_cache" / digest

    def _editions(self) -> list[str]:
        if not self.data_dir.is_dir():
            raise missing_data_error("CASP decoys", self.data_dir, self.sample_name,
                                     "download natives and server models from predictioncenter.org (see README)")
        editions = sorted(p.name for p in self.data_dir.iterdir() if p.is_dir() and p.name != "processed")
        if not editions:
            raise missing_data_error("CASP decoys", self.data_dir, self.sample_name, None)
        return editions

    def _split(self) -> dict[str, list[Target]]:
        hp = self.hparams
        editions = self._editions()
        test_editions = list(hp.test_editions or [])
        train_editions = list(hp.train_editions or [e for e in editions if e not in test_editions])
        for e in (*train_editions, *test_editions):
            if e not in editions:
                raise ValueError(f"CASP edition {e!r} not found under {self.data_dir} (found: {editions})")
        pool = [t for e in train_editions for t in find_targets(self.data_dir / e)]
        test = [t for e in test_editions for t in find_targets(self.data_dir / e)]
        if not pool and not test:
            where = self.data_dir / (train_editions or editions)[0]
            raise missing_data_error("CASP targets", where, self.sample_name, None)
        # drop short targets (the native's residue count is a cheap read)
        keep = []
        for t in (*pool, *test):
            try:
                n = len(read_pdb(t.native))
            except PDBReadError as err:
                log.warning("CASP: native of %s/%s unreadable, target skipped: %s", t.edition, t.name, err)
                self.skipped.append(f"{t.edition}/{t.name}: {err}")
                continue
            if n >= hp.min_length:
                keep.append(t)
            else:
                log.info("CASP: %s/%s has %d residues < min_length=%d: not used", t.edition, t.name, n, hp.min_length)
        pool = [t for t in pool if t in keep]
        test = [t for t in test if t in keep]
        rng = np.random.default_rng(hp.split_seed)
        order = [pool[i] for i in rng.permutation(len(pool))]
        if hp.test_targets:
            test += [t for t in order if t.name in hp.test_targets]
            order = [t for t in order if t.name not in hp.test_targets]
        elif not test_editions:
            n_test = max(1, round(hp.test_fraction * len(order))) if hp.test_fraction > 0 else 0
            test, order = order[:n_test], order[n_test:]
        n_val = max(1, round(hp.val_fraction * len(order))) if hp.val_fraction > 0 and len(order) > 1 else 0
        val, train = order[:n_val], order[n_val:]
        return {"train": train, "val": val, "test": test}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set or self.test_set:
            return
        split = self._split()
        everything = sorted({f"{t.edition}/{t.name}" for ts in split.values() for t in ts})
        ids = {key: i for i, key in enumerate(everything)}
        self.target_names = {i: key for key, i in ids.items()}
        cache = self._cache_dir()
        msa_dir = Path(self.hparams.msa_dir) if self.hparams.msa_dir else None
        for name, targets in split.items():
            ds = CASPTargets(targets, cache, self.hparams.cutoff, msa_dir, self.hparams.max_decoys_per_target,
                             self.hparams.featurize_workers, self.hparams.dssp_states)
            graphs = ds.load(ids)
            setattr(self, f"{name}_set", graphs)
            self.splits[name] = [f"{t.edition}/{t.name}" for t in targets]
            self.skipped += ds.skipped + ds.skipped_targets
            log.info("CASP %s: %d targets, %d decoys", name, len(targets), len(graphs))
        if self.skipped:
            log.warning("CASP: %d unreadable file(s) skipped (see warnings above)", len(self.skipped))

    def _loader(self, graphs: list[Data], shuffle: bool) -> DataLoader:
        return DataLoader(graphs, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    @property
    def num_dssp_features(self) -> int:
        return NUM_DSSP_FEATURES[self.hparams.dssp_states]

    @property
    def num_msa_features(self) -> int:
        return 2 * len(MSA_ALPHABET) if self.hparams.msa_dir else 0
