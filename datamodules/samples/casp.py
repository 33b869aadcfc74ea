"""CASP-style sample: real protein chains shipped in PyPI packages, decoys made by physically plausible moves.

SYNTHETIC BENCHMARK, NOT CASP. Natives are real experimental chains that install offline:
the globin and linker chains of ``2gtl`` shipped by ``tmtools`` (always installed) and, when the
``MDAnalysisTests`` package is installed, the ~50 single chains of its ``data/dssp/`` folder.
Decoys are made from each native by moves that keep bond lengths and angles exactly (so the
3.8 A C-alpha spacing is never broken and no per-atom noise gives the network a shortcut):

* backbone torsion perturbations: rotations about N-CA (phi) or CA-C (psi) bonds with magnitudes
  drawn log-uniformly, everything downstream moved rigidly (one large one is a hinge move);
* crankshaft segment moves: a segment rotated about the axis through the C-alpha atoms at its ends;
* truncations: a terminal stretch removed (residues absent from the decoy exercise the masks);

moves that bring two non-neighbouring C-alpha atoms closer than 3 A (a clash) are rejected and
redrawn. True GDT_TS and global LDDT of every decoy are computed with ``metrics.protein`` and written
to ``scores.csv`` (the per-residue LDDT is recomputed by the DataModule from the native).

Layout written (the one of ``../shared/data/casp``): ``<root>/casp/SAMPLE/<target>/native.pdb``,
``<target>/decoys/<target>_<k>.pdb``, ``<target>/scores.csv``. Targets are split by the DataModule.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NAME = "casp"
FOLDER = "casp"
EDITION = "SAMPLE"
TMTOOLS_CHAINS = (("2gtl", "A"), ("2gtl", "B"), ("2gtl", "C"), ("2gtl", "D"), ("2gtl", "M"), ("2gtl", "N"),
                  ("2gtl", "O"))
SKIP_MDA = ("wrong_hydrogens", "1mr1D_failing")
AMINO = {"ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET", "PHE",
         "PRO", "SER", "THR", "TRP", "TYR", "VAL", "MSE"}


@dataclass
class Chain:
    """One chain as PDB ATOM lines (heavy atoms, first altloc) with coordinates and residue indices."""

    name: str
    lines: list[str]
    coords: np.ndarray  # (A, 3)
    atom_names: list[str]
    residue: np.ndarray  # (A,) 0..R-1

    @property
    def num_residues(self) -> int:
        return int(self.residue.max()) + 1

    def atom(self, r: int, name: str) -> int:
        for i in np.flatnonzero(self.residue == r):
            if self.atom_names[i] == name:
                return int(i)
        return -1

    def pdb(self, coords: np.ndarray, keep: np.ndarray | None = None) -> str:
        out = []
        for i, line in enumerate(self.lines):
            if keep is not None and not keep[self.residue[i]]:
                continue
            x, y, z = coords[i]
            out.append(f"{line[:30]}{x:8.3f}{y:8.3f}{z:8.3f}{line[54:]}")
        return "\n".join([*out, "TER", "END", ""])


def parse_chain(text: str, chain_id: str | None, name: str) -> Chain | None:
    """The amino-acid heavy atoms of one chain (the first one if ``chain_id`` is None), first model only."""
    lines, coords, names, residue = [], [], [], []
    keys: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith(("ATOM  ", "HETATM")) or line[17:20].strip() not in AMINO or len(line) < 54:
            continue
        if line[16] not in (" ", "A") or (chain_id is not None and line[21] != chain_id):
            continue
        if chain_id is None:
            chain_id = line[21]
        atom = line[12:16].strip()
        element = line[76:78].strip() if len(line) >= 78 else atom[:1]
        if element in ("H", "D") or atom.startswith("H") and not element:
            continue
        key = (line[22:27], line[17:20])
        if key not in keys:
            keys[key] = len(keys)
        lines.append("ATOM  " + line[6:16] + " " + line[17:].rstrip().ljust(54 - 17))
        coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        names.append(atom)
        residue.append(keys[key])
    if not lines:
        return None
    chain = Chain(name, lines, np.array(coords), names, np.array(residue))
    # keep chains whose every residue has N, CA and C (torsion moves need them)
    if any(chain.atom(r, a) < 0 for r in range(chain.num_residues) for a in ("N", "CA", "C")):
        return None
    return chain


def native_sources(max_targets: int | None = None) -> list[tuple[str, str, str | None]]:
    """(target name, PDB text, chain id) of every native this machine can supply offline."""
    sources = []
    data = importlib.resources.files("tmtools") / "data"
    texts: dict[str, str] = {}
    for code, chain in TMTOOLS_CHAINS:
        if code not in texts:
            texts[code] = (data / f"{code}.pdb").read_text()
        sources.append((f"{code}{chain}", texts[code], chain))
    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "dssp"
        for path in sorted(folder.glob("*.pdb.gz")):
            stem = path.name.removesuffix(".pdb.gz")
            if stem in SKIP_MDA:
                continue
            with gzip.open(path, "rt") as f:
                sources.append((stem, f.read(), None))
    return sources[:max_targets] if max_targets else sources


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _clash(chain: Chain, coords: np.ndarray, ca_idx: np.ndarray, min_dist: float = 3.0) -> bool:
    ca = coords[ca_idx]
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    n = len(ca)
    far = np.abs(np.arange(n)[:, None] - np.arange(n)[None]) > 2
    return bool((d[far] < min_dist).any())


def perturb(chain: Chain, rng: np.random.Generator, n_moves: int, max_angle: float, torsion_fraction: float = 0.7,
            coords: np.ndarray | None = None) -> np.ndarray:
    """Coordinates after ``n_moves`` moves of log-uniform magnitude in [max_angle / 8, max_angle] degrees:
    a share ``torsion_fraction`` of phi/psi torsions (hinges), the rest crankshaft segment moves (local errors)."""
    coords = (chain.coords if coords is None else coords).copy()
    n = chain.num_residues
    ca_idx = np.array([chain.atom(r, "CA") for r in range(n)])
    done = 0
    for _attempt in range(n_moves * 20):
        if done == n_moves:
            break
        angle = np.deg2rad(np.exp(rng.uniform(np.log(max_angle / 8), np.log(max_angle)))) * rng.choice([-1, 1])
        new = coords.copy()
        if rng.random() < torsion_fraction:  # phi or psi torsion of residue r: rigidly move everything downstream
            r = int(rng.integers(1, n - 1))
            if rng.random() < 0.5:
                a, b = chain.atom(r, "N"), chain.atom(r, "CA")
                moving = (chain.residue > r) | ((chain.residue == r) & ~np.isin(chain.atom_names, ["N", "CA"]))
            else:
                a, b = chain.atom(r, "CA"), chain.atom(r, "C")
                moving = (chain.residue > r) | ((chain.residue == r) & np.isin(chain.atom_names, ["O", "OXT"]))
        else:  # crankshaft: rotate residues between two C-alpha atoms about the axis joining them
            r = int(rng.integers(0, n - 4))
            s = int(min(n - 1, r + rng.integers(3, 12)))
            a, b = ca_idx[r], ca_idx[s]
            names = np.array(chain.atom_names)
            moving = (
                ((chain.residue > r) & (chain.residue < s))
                | ((chain.residue == r) & np.isin(names, ["C", "O"]))
                | ((chain.residue == s) & (names == "N"))
            )
        origin = new[a]
        rot = _rotation(new[b] - origin, angle)
        new[moving] = (new[moving] - origin) @ rot.T + origin
        if _clash(chain, new, ca_idx):
            continue
        coords = new
        done += 1
    return coords


def build(root: Path, seed: int = 0, targets: int = 24, decoys: int = 64, max_length: int = 200) -> list[Path]:
    """Write ``targets`` natives with ``decoys`` decoys each under ``<root>/casp/SAMPLE/`` (see module doc)."""
    from datamodules.casp import read_pdb, true_scores  # our own reader/scorer, so the sample is read as real data

    out = Path(root) / FOLDER / EDITION
    written: list[Path] = []
    rng = np.random.default_rng(seed)
    count = 0
    for name, text, chain_id in native_sources():
        if count == targets:
            break
        chain = parse_chain(text, chain_id, name)
        if chain is None or not 50 <= chain.num_residues <= max_length:
            continue
        count += 1
        folder = out / name
        (folder / "decoys").mkdir(parents=True, exist_ok=True)
        native_path = folder / "native.pdb"
        native_path.write_text(f"REMARK   1 SYNTHETIC SAMPLE: native {name} (real structure)\n" + chain.pdb(chain.coords))
        written.append(native_path)
        native = read_pdb(native_path)
        rows = []
        for k in range(decoys):
            # quality spread: number of moves and the largest angle both vary per decoy
            # global quality: a few hinge torsions; local errors: crankshaft remodels of short segments
            n_moves = int(rng.integers(0, 7))
            max_angle = float(np.exp(rng.uniform(np.log(10.0), np.log(180.0))))
            coords = perturb(chain, rng, n_moves, max_angle, torsion_fraction=1.0)
            n_local = int(rng.integers(0, 16))
            coords = perturb(chain, rng, n_local, 180.0, torsion_fraction=0.0, coords=coords)
            n_moves += n_local
            keep = np.ones(chain.num_residues, dtype=bool)
            if rng.random() < 0.2:  # truncation of one terminus
                cut = int(rng.integers(3, max(4, chain.num_residues // 6)))
                if rng.random() < 0.5:
                    keep[:cut] = False
                else:
                    keep[-cut:] = False
            decoy_path = folder / "decoys" / f"{name}_{k:03d}.pdb"
            decoy_path.write_text(chain.pdb(coords, keep))
            written.append(decoy_path)
            scores = true_scores(native, read_pdb(decoy_path))
            rows.append({"model": decoy_path.stem, "n_native_res": len(native), "n_model_res": int(keep.sum()),
                         "n_common_res": int(scores["present"].sum()), "gdt_ts": f"{100 * scores['gdt_ts']:.2f}",
                         "lddt_ca": f"{scores['lddt_global']:.4f}", "moves": n_moves, "max_angle": f"{max_angle:.1f}"})
        with open(folder / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written.append(folder / "scores.csv")
    return written


def add_arguments(parser) -> None:
    parser.add_argument("--targets", type=int, default=24, help="number of native chains (default 24)")
    parser.add_argument("--decoys", type=int, default=64, help="decoys per target (default 64)")
    parser.add_argument("--max-length", dest="max_length", type=int, default=200)
