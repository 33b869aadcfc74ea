"""USPTO-50k-format sample: real molecules shipped with RDKit, disconnected by well-known retro templates.

Products are real molecules (``rdkit/Data/NCI/first_5K.smi`` and the ``.smi`` files under
``rdkit/Contrib``); the REACTIONS are made here (synthetic): each retro template (one or more for each
of the ten USPTO-50k classes) is applied with RDKit to every product it matches, giving atom-mapped
``reactants>>product`` strings (product atoms numbered 1..n, reactant atoms carry the number of the
product atom they become; leaving-group atoms are unmapped, as in USPTO) and the class label.
Written as ``<root>/uspto_50k/raw_{train,val,test}.csv`` with columns ``id,class,reactants>reagents>production``.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import rdkit
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

RDLogger.DisableLog("rdApp.*")

NAME = "uspto"
FOLDER = "uspto_50k"

# (class, name, retro SMARTS product>>reactants). Mapped atoms keep their identity; unmapped atoms on the
# right are the added leaving groups / reagent atoms.
TEMPLATES: list[tuple[int, str, str]] = [
    (1, "O-alkylation (Williamson ether)", "[c:1][O:2][CH2:3][#6:4]>>[c:1][OH:2].Br[CH2:3][#6:4]"),
    (1, "N-arylation (SNAr / Buchwald)", "[c:1][NH:2][CX4:3]>>[c:1]Cl.[NH2:2][CX4:3]"),
    (1, "reductive amination", "[CX4;H2:1]([#6:3])-!@[NH:2][CX4:4]>>[CH:1]([#6:3])=O.[NH2:2][CX4:4]"),
    (2, "amide coupling", "[#6:4][C:1](=[O:2])[NH:3][#6:5]>>[#6:4][C:1](=[O:2])O.[NH2:3][#6:5]"),
    (2, "ester formation", "[#6:4][C:1](=[O:2])[O:3][CX4:5]>>[#6:4][C:1](=[O:2])Cl.[OH:3][CX4:5]"),
    (2, "sulfonamide formation",
     "[#6:5][S:1](=[O:2])(=[O:3])[NH:4][#6:6]>>[#6:5][S:1](=[O:2])(=[O:3])Cl.[NH2:4][#6:6]"),
    (3, "Suzuki coupling", "[c:1]-!@[c:2]>>[c:1]Br.OB(O)[c:2]"),
    (3, "Grignard addition to aldehyde", "[CX4;H1:1]([OH:2])([c:3])[CX4:4]>>[CH:1](=[O:2])[c:3].Br[Mg][CX4:4]"),
    (4, "benzimidazole formation",
     "[#6:9][c:1]1[nH:2][c:3]2[c:4][c:5][c:6][c:7][c:8]2[n:10]1"
     ">>[#6:9][C:1](=O)O.[NH2:2][c:3]1[c:4][c:5][c:6][c:7][c:8]1[NH2:10]"),
    (4, "benzothiazole formation",
     "[#6:9][c:1]1[n:2][c:3]2[c:4][c:5][c:6][c:7][c:8]2[s:10]1"
     ">>[#6:9][C:1](=O)O.[NH2:2][c:3]1[c:4][c:5][c:6][c:7][c:8]1[SH:10]"),
    (4, "benzoxazole formation",
     "[#6:9][c:1]1[n:2][c:3]2[c:4][c:5][c:6][c:7][c:8]2[o:10]1"
     ">>[#6:9][C:1](=O)O.[NH2:2][c:3]1[c:4][c:5][c:6][c:7][c:8]1[OH:10]"),
    (4, "Hantzsch thiazole synthesis",
     "[#6,#7:6][c:1]1[n:2][c:3]([#6:7])[c:4][s:5]1>>[#6,#7:6][C:1](=[S:5])[NH2:2].Br[C:4][C:3](=O)[#6:7]"),
    (4, "tetrazole formation", "[#6:6][c:1]1[nH:2][n:3][n:4][n:5]1>>[#6:6][C:1]#[N:2].[N-:3]=[N+:4]=[N-:5]"),
    (5, "Boc protection",
     "[CH3:1][C:2]([CH3:3])([CH3:4])[O:5][C:6](=[O:7])[N:8]>>"
     "CC(C)(C)OC(=O)O[C:6](=[O:7])[O:5][C:2]([CH3:1])([CH3:3])[CH3:4].[N:8]"),
    (5, "acetal protection of a ketone (dioxolane)",
     "[C:1]1([#6:6])([#6:7])[O:2][CH2:3][CH2:4][O:5]1>>[C:1]([#6:6])([#6:7])=[O:2].[OH:5][CH2:4][CH2:3]O"),
    (5, "benzyl ester protection",
     "[#6:1][C:2](=[O:3])[O:4][CH2:5][c:6]1[cH:7][cH:8][cH:9][cH:10][cH:11]1"
     ">>[#6:1][C:2](=[O:3])[OH:4].Br[CH2:5][c:6]1[cH:7][cH:8][cH:9][cH:10][cH:11]1"),
    (5, "acetyl protection of an amine",
     "[CH3:1][C:2](=[O:3])[NH:4][CX4:5]>>[CH3:1][C:2](=[O:3])OC(C)=O.[NH2:4][CX4:5]"),
    (6, "Boc deprotection", "[NX3;H2,H1;!$(N-[C,S]=[O,N,S]);!$(N-a):1][CX4:2]>>CC(C)(C)OC(=O)[N:1][CX4:2]"),
    (6, "ester hydrolysis", "[#6:3][C:1](=[O:2])[OH:4]>>[#6:3][C:1](=[O:2])[O:4]C"),
    (7, "nitro reduction", "[c:1][NH2:2]>>[c:1][N+:2](=O)[O-]"),
    (7, "ketone reduction", "[CX4;H1:1]([OH:2])([#6:3])[#6:4]>>[C:1](=[O:2])([#6:3])[#6:4]"),
    (8, "alcohol oxidation to aldehyde", "[#6:1][CH1:2]=[O:3]>>[#6:1][CH2:2][OH:3]"),
    (8, "alcohol oxidation to ketone", "[#6:1][C;H0;!$(C-[!#6]):2](=[O:3])[#6:4]>>[#6:1][CH:2]([OH:3])[#6:4]"),
    (9, "alcohol to bromide", "[CX4;H2:1]([#6:3])[Br:2]>>[CH2:1]([#6:3])O.[Br:2]P(Br)Br"),
    (9, "nitrile from primary amide", "[#6:1][C:2]#[N:3]>>[#6:1][C:2](=O)[NH2:3]"),
    (10, "aromatic nitration", "[c:1][N+:2](=[O:3])[O-:4]>>[cH:1].O[N+:2](=[O:3])[O-:4]"),
    (10, "aromatic bromination", "[c:1][Br:2]>>[cH:1].[Br:2][Br]"),
]


def rdkit_molecules(limit: int | None = None) -> list[str]:
    """Canonical SMILES of the real molecules RDKit ships (NCI first 5K, then Contrib .smi files)."""
    root = Path(rdkit.__file__).parent
    files = [root / "Data" / "NCI" / "first_5K.smi", *sorted((root / "Contrib").rglob("*.smi"))]
    seen: set[str] = set()
    out: list[str] = []
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if not parts or parts[0].lower() in ("smiles", "#"):
                continue
            mol = Chem.MolFromSmiles(parts[0])
            if mol is None or mol.GetNumAtoms() < 4 or mol.GetNumAtoms() > 50:
                continue
            frags = Chem.GetMolFrags(mol, asMols=True)
            mol = max(frags, key=lambda m: m.GetNumAtoms())  # strip salts / solvents
            smi = Chem.MolToSmiles(mol)
            if smi not in seen and "*" not in smi:
                seen.add(smi)
                out.append(smi)
            if limit and len(out) >= limit:
                return out
    return out


def _fix_hydrogens(mol: Chem.Mol) -> Chem.Mol | None:
    """Recompute implicit hydrogens of the atoms the template touched, then sanitise."""
    rw = Chem.RWMol(mol)
    for atom in rw.GetAtoms():
        if atom.HasProp("old_mapno") or not atom.HasProp("react_atom_idx"):
            if atom.GetIsAromatic() and atom.GetSymbol() in ("N", "n") and atom.GetTotalNumHs() > 0:
                continue
            atom.SetNoImplicit(False)
            atom.SetNumExplicitHs(0)
    try:
        Chem.SanitizeMol(rw)
    except Exception:  # noqa: BLE001 - RDKit raises several sanitisation errors; the outcome is skipped
        return None
    return rw.GetMol()


def _reaction(smarts: str) -> AllChem.ChemicalReaction:
    rxn = AllChem.ReactionFromSmarts(smarts)
    rxn.Initialize()
    return rxn


def apply_retro(template: AllChem.ChemicalReaction, product: str | Chem.Mol, max_outcomes: int = 2) -> list[str]:
    """Atom-mapped ``reactants>>product`` strings from applying a retro template to ``product``."""
    plain = Chem.MolFromSmiles(product) if isinstance(product, str) else product
    if not template.IsInitialized():
        template.Initialize()
    if plain is None or not template.IsMoleculeReactant(plain):
        return []
    mol = Chem.Mol(plain)
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(atom.GetIdx() + 1)
    mapped_product = Chem.MolToSmiles(mol)
    out: list[str] = []
    seen: set[str] = set()
    for outcome in template.RunReactants((plain,), maxProducts=50):
        mols = []
        for m in outcome:
            fixed = _fix_hydrogens(m)
            if fixed is None:
                break
            for atom in fixed.GetAtoms():
                idx = int(atom.GetProp("react_atom_idx")) if atom.HasProp("react_atom_idx") else -1
                atom.SetAtomMapNum(idx + 1)
            mols.append(fixed)
        else:
            smi = ".".join(Chem.MolToSmiles(m) for m in mols)
            unmapped = Chem.MolFromSmiles(smi)
            if unmapped is None:
                continue
            maps = sorted(a.GetAtomMapNum() for a in unmapped.GetAtoms() if a.GetAtomMapNum())
            if maps != list(range(1, mol.GetNumAtoms() + 1)):
                continue  # every product atom must come from exactly one reactant atom
            for a in unmapped.GetAtoms():
                a.SetAtomMapNum(0)
            key = Chem.MolToSmiles(unmapped)
            if key in seen or key == Chem.MolToSmiles(plain):  # no-op outcome
                continue
            seen.add(key)
            out.append(f"{smi}>>{mapped_product}")
            if len(out) >= max_outcomes:
                break
    return out


def make_reactions(n_molecules: int | None = None, per_class: int = 60, seed: int = 0) -> list[tuple[str, int, str]]:
    """(id, class, mapped reaction) from the first ``n_molecules`` RDKit molecules (all by default): at
    most ``per_class`` reactions per class, shared evenly by the class's templates, one outcome per product
    and template. Rare classes (heterocycle formation, protections) end up with fewer."""
    rng = random.Random(seed)
    molecules = rdkit_molecules(n_molecules)
    rng.shuffle(molecules)
    n_in_class = defaultdict(int)
    for c, _, _ in TEMPLATES:
        n_in_class[c] += 1
    open_templates = [(c, name, _reaction(s)) for c, name, s in TEMPLATES]
    count: dict[str, int] = defaultdict(int)
    per: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
    for smi in molecules:
        if not open_templates:
            break
        mol = Chem.MolFromSmiles(smi)
        for c, name, rxn in list(open_templates):
            for r in apply_retro(rxn, mol, max_outcomes=1):
                per[c].append((f"SAMPLE{c:02d}{len(per[c]):04d}", c, r))
                count[name] += 1
            if count[name] >= -(-per_class // n_in_class[c]):
                open_templates.remove((c, name, rxn))
    reactions = [r for c in sorted(per) for r in per[c]]
    rng.shuffle(reactions)
    return reactions


def add_arguments(parser) -> None:
    parser.add_argument("--molecules", type=int, default=None, help="how many RDKit molecules to try (default all)")
    parser.add_argument("--per-class", dest="per_class", type=int, default=60, help="max reactions per class")


def build(root: Path, seed: int = 0, molecules: int | None = None, per_class: int = 60) -> list[Path]:
    """Write ``<root>/uspto_50k/raw_{train,val,test}.csv`` (80/10/10 split of the made reactions)."""
    reactions = make_reactions(molecules, per_class, seed)
    n = len(reactions)
    n_val = n_test = max(1, n // 10)
    splits = {"test": reactions[:n_test], "val": reactions[n_test : n_test + n_val],
              "train": reactions[n_test + n_val :]}
    out_dir = Path(root) / FOLDER
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split in ("train", "val", "test"):
        path = out_dir / f"raw_{split}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "class", "reactants>reagents>production"])
            for rid, c, rxn in splits[split]:
                w.writerow([rid, c, rxn])
        written.append(path)
    return written
