"""USPTO-50k for one-step retrosynthesis as sequence-to-sequence: product SMILES in, reactants out.

Reads the common distribution (GLN / Liu et al. split: ``raw_train.csv``, ``raw_val.csv``,
``raw_test.csv`` with columns ``id,class,reactants>reagents>production``, atom-mapped) and the
unmapped training file of ``../shared/data/uspto_50k`` (``raw_train_UNMAPPED_derived.csv``), or plain
``product>>reactants`` lists (``.txt``/``.smi``: one reaction a line). Atom maps are removed and every
molecule is canonicalised with RDKit; SMILES are split with the Molecular Transformer's regex.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from lightning import LightningDataModule
from rdkit import Chem, DataStructs, RDLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.base import missing_data_error, resolve_data_dir
from metrics.chemistry import canonical_set

log = logging.getLogger(__name__)
RDLogger.DisableLog("rdApp.*")

# Schwaller et al., Molecular Transformer (ACS Cent. Sci. 2019): bracket atoms, two-letter halogens,
# organic subset, bonds, branches, ring closures (one digit or %nn)
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|\*|\$|\%[0-9]{2}|[0-9])"
)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

CLASS_NAMES = (
    "heteroatom alkylation and arylation",
    "acylation and related processes",
    "C-C bond formation",
    "heterocycle formation",
    "protections",
    "deprotections",
    "reductions",
    "oxidations",
    "functional group interconversion",
    "functional group addition",
)


def tokenize(smiles: str) -> list[str]:
    """Molecular Transformer tokens of ``smiles``; ``ValueError`` if the regex does not cover the string."""
    tokens = SMILES_REGEX.findall(smiles)
    if "".join(tokens) != smiles:
        raise ValueError(f"SMILES not fully tokenisable: {smiles!r}")
    return tokens


class Vocabulary:
    """Token <-> index; specials first (``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            tokens = list(SPECIALS) + [t for t in tokens if t not in SPECIALS]
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists: Sequence[Sequence[str]]) -> Vocabulary:
        counts = Counter(t for tokens in token_lists for t in tokens)
        return cls(list(SPECIALS) + sorted(counts))

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    pad, bos, eos, unk = 0, 1, 2, 3

    def encode(self, tokens: Sequence[str], bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(t, self.unk) for t in tokens]
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        """Join tokens up to the first ``<eos>`` (specials dropped)."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i >= len(SPECIALS) and i < len(self.itos):
                out.append(self.itos[i])
        return "".join(out)


@dataclass
class Reaction:
    id: str
    cls: int  # 1..10, 0 if unknown
    product: str  # canonical, no atom maps
    reactants: str  # canonical set, no atom maps
    mapped: str | None = None  # the original atom-mapped reaction string, when atom-mapped


def _has_maps(smiles: str) -> bool:
    return re.search(r":\d+\]", smiles) is not None


def parse_reaction(text: str, product_first: bool = False) -> tuple[str, str] | None:
    """(product, reactants) canonical and unmapped from ``reactants>reagents>product`` (or
    ``product>>reactants`` when ``product_first``); ``None`` if any part is invalid or empty."""
    parts = text.strip().split(">")
    if len(parts) != 3:
        return None
    if product_first:
        prod, reac = parts[0], parts[2]
    else:
        reac, prod = parts[0], parts[2]
    p, r = canonical_set(prod), canonical_set(reac)
    if p is None or r is None:
        return None
    return p, r


_READ_CACHE: dict[tuple[str, int, int], tuple[list[Reaction], int]] = {}


def read_reactions(path: Path) -> tuple[list[Reaction], int]:
    """Reactions of a USPTO CSV (``id,class,reactants>reagents>production[,...]``) or a plain
    ``product>>reactants`` list; returns (reactions, number of skipped invalid lines).

    Parsed files are memoised per process (keyed by path, size and mtime): a fit followed by a test in
    one process canonicalises the 50k reactions once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _READ_CACHE:
        _READ_CACHE[key] = _read_reactions(path)
    reactions, skipped = _READ_CACHE[key]
    return list(reactions), skipped


def _read_reactions(path: Path) -> tuple[list[Reaction], int]:
    reactions: list[Reaction] = []
    skipped = 0
    if path.suffix in (".txt", ".smi"):
        with open(path) as f:
            for n, line in enumerate(f):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parsed = parse_reaction(line.split()[0], product_first=True)
                if parsed is None:
                    skipped += 1
                    log.warning("%s:%d: invalid reaction SMILES skipped: %.120s", path, n + 1, line)
                    continue
                reactions.append(Reaction(f"{path.stem}-{n}", 0, *parsed))
        return reactions, skipped
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        column = next((c for c in reader.fieldnames or [] if c.startswith("reactants>")), None)
        if column is None:
            raise ValueError(f"{path}: no 'reactants>reagents>production' column (columns: {reader.fieldnames})")
        for n, row in enumerate(reader):
            text = row[column]
            parsed = parse_reaction(text)
            if parsed is None:
                skipped += 1
                log.warning("%s:%d: invalid reaction SMILES skipped: %.120s", path, n + 2, text)
                continue
            try:
                cls = int(row.get("class") or 0)
            except ValueError:
                cls = 0
            reactions.append(Reaction(row.get("id") or f"{path.stem}-{n}", cls, *parsed,
                                      mapped=text if _has_maps(text) else None))
    return reactions, skipped


def strip_maps(smiles: str) -> str | None:
    """The same molecule(s) without atom-map numbers (RDKit SMILES, not canonicalised further); ``None`` if invalid."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    for atom in mol.GetAtoms():
        atom.SetAtomMapNum(0)
    return Chem.MolToSmiles(mol)


def _rxnmapper():
    try:
        from rxnmapper import RXNMapper
    except ImportError as err:
        raise ImportError(
            "atom mapping needs rxnmapper (its wheel ships the model weights; it runs offline on CPU): "
            "pip install 'rxnmapper>=0.4'") from err
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return RXNMapper()


def map_reactions(reactions: Sequence[str], batch_size: int = 16, mapper=None) -> list[tuple[str | None, float]]:
    """Atom-map ``reactants>reagents>product`` reaction SMILES with rxnmapper (Schwaller et al. 2021).

    Reagents are folded into the reactants (USPTO-50k has none). Returns ``(mapped reaction or None, confidence)``
    per input; a batch rxnmapper rejects is retried one reaction at a time, and a reaction it still rejects (e.g.
    longer than its 512 tokens) gives ``None`` (the caller counts and logs it)."""
    mapper = mapper or _rxnmapper()
    queries = []
    for text in reactions:
        reac, reag, prod = text.split(">")
        queries.append(".".join(x for x in (reac, reag) if x) + ">>" + prod)
    out: list[tuple[str | None, float]] = []
    for i in range(0, len(queries), batch_size):
        batch = queries[i : i + batch_size]
        try:
            res = mapper.get_attention_guided_atom_maps(batch)
        except Exception:  # noqa: BLE001 - one bad reaction fails rxnmapper's whole batch: retry one by one
            res = []
            for q in batch:
                try:
                    res += mapper.get_attention_guided_atom_maps([q])
                except Exception:  # noqa: BLE001
                    res.append(None)
        out += [(r["mapped_rxn"], float(r["confidence"])) if r else (None, 0.0) for r in res]
    return out


def map_reaction_file(src: Path, dst: Path, batch_size: int = 16) -> tuple[int, int]:
    """Write ``dst``: the USPTO CSV ``src`` with every unmapped reaction atom-mapped by rxnmapper (other columns
    kept, plus ``rxnmapper_confidence``). Reactions rxnmapper cannot map are kept unmapped (counted, logged;
    template extraction then gives no template for them). Written atomically. Returns (mapped, failed)."""
    src, dst = Path(src), Path(dst)
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    column = next((c for c in fields if c.startswith("reactants>")), None)
    if column is None:
        raise ValueError(f"{src}: no 'reactants>reagents>production' column (columns: {fields})")
    todo = [i for i, r in enumerate(rows) if not _has_maps(r[column])]
    log.info("rxnmapper: mapping %d of %d reactions of %s (once; cached in %s)", len(todo), len(rows), src, dst)
    mapped: list[tuple[str | None, float]] = []
    start, chunk = time.perf_counter(), 2000
    for k in range(0, len(todo), chunk):  # in chunks, with progress: the real training file takes ~15 CPU-minutes
        mapped += map_reactions([rows[i][column] for i in todo[k : k + chunk]], batch_size)
        rate = len(mapped) / max(time.perf_counter() - start, 1e-9)
        log.info("rxnmapper: %d/%d mapped (%.1f reactions/s, ~%.0f s left)", len(mapped), len(todo), rate,
                 (len(todo) - len(mapped)) / rate)
    failed = 0
    for i, (m, conf) in zip(todo, mapped):
        if m is None:
            failed += 1
            log.warning("%s:%d: rxnmapper could not map this reaction; kept unmapped: %.120s", src, i + 2,
                        rows[i][column])
            rows[i]["rxnmapper_confidence"] = ""
        else:
            rows[i][column] = m
            rows[i]["rxnmapper_confidence"] = f"{conf:.4f}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + ["rxnmapper_confidence"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(dst)
    return len(todo) - failed, failed


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _first_reaction_mapped(path: Path) -> bool:
    if path.suffix in (".txt", ".smi"):
        return True  # product>>reactants lists carry no maps: nothing to map
    with open(path, newline="") as f:
        row = next(csv.DictReader(f), None)
    return row is None or any(_has_maps(v) for k, v in row.items() if k and k.startswith("reactants>"))


def random_smiles(smiles: str, seed: int) -> str:
    """A random (non-canonical) SMILES of the same molecule(s), reproducible from ``seed``."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return smiles
    out = Chem.MolToRandomSmilesVect(mol, 1, randomSeed=int(seed) % (2**31 - 1) + 1)
    return out[0] if out else smiles


def random_disconnections(smiles: str, max_examples: int = 10, seed: int = 0) -> list[str]:
    """Random pre-training targets of the paper: break one acyclic single bond between heavy atoms;
    the two fragments (canonical, ``.``-joined) are the target. Up to ``max_examples`` distinct ones."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return []
    bonds = [b.GetIdx() for b in mol.GetBonds() if b.GetBondType() == Chem.BondType.SINGLE and not b.IsInRing()]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(bonds), generator=gen).tolist()
    out: list[str] = []
    for i in order:
        frag = Chem.FragmentOnBonds(mol, [bonds[i]], addDummies=False)
        try:
            Chem.SanitizeMol(frag)
            for atom in frag.GetAtoms():  # let RDKit recompute hydrogens on the broken ends
                atom.SetNoImplicit(False)
                if atom.GetIsAromatic() and atom.GetSymbol() == "N":
                    continue
                atom.SetNumExplicitHs(0)
            Chem.SanitizeMol(frag)
        except Exception:  # noqa: BLE001 (RDKit raises several types) - an unsanitisable break is skipped
            continue
        target = canonical_set(Chem.MolToSmiles(frag))
        if target is None or target in out or "." not in target:
            continue
        out.append(target)
        if len(out) >= max_examples:
            break
    return out


def extract_template(mapped: str, rid: str = "") -> str | None:
    """Retro template (rdchiral's ``product>>reactants`` SMARTS) of an atom-mapped reaction; ``None`` if none."""
    try:
        from rdchiral.template_extractor import extract_from_reaction
    except ImportError as err:  # pragma: no cover - rdchiral is a declared dependency
        raise ImportError("template options need rdchiral: pip install rdchiral") from err
    reac, _, prod = mapped.split(">")
    try:
        out = extract_from_reaction({"reactants": reac, "products": prod, "_id": rid})
    except Exception:  # noqa: BLE001 - rdchiral raises several types on odd reactions; counted by the caller
        return None
    return out.get("reaction_smarts") if isinstance(out, dict) else None


_TEMPLATE_CACHE: dict[str, str | None] = {}  # reaction id|mapped string -> extracted template (per process)


def _template_key(r: Reaction) -> str:
    return f"{r.id}|{r.mapped}"


def _extract_item(item: tuple[str, str, str]) -> tuple[str, str | None]:
    key, mapped, rid = item
    return key, extract_template(mapped, rid)


def template_of(r: Reaction) -> str | None:
    """Retro template of a reaction, extracted once per process from its atom maps (memoised like the files)."""
    if r.mapped is None:
        return None
    key = _template_key(r)
    if key not in _TEMPLATE_CACHE:
        _TEMPLATE_CACHE[key] = extract_template(r.mapped, r.id)
    return _TEMPLATE_CACHE[key]


def extract_templates(reactions: Sequence[Reaction], processes: int = 1) -> None:
    """Extract (and memoise for :func:`template_of`) the templates of ``reactions`` in ``processes`` processes:
    USPTO-50k's 50,016 reactions took 328 s in 2 processes (``benchmarks/retro_real_templates.py``)."""
    todo = {_template_key(r): (r.mapped, r.id) for r in reactions
            if r.mapped is not None and _template_key(r) not in _TEMPLATE_CACHE}
    items = [(k, m, rid) for k, (m, rid) in todo.items()]
    if processes > 1 and len(items) > 1:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            _TEMPLATE_CACHE.update(pool.imap_unordered(_extract_item, items, chunksize=200))
    else:
        _TEMPLATE_CACHE.update(map(_extract_item, items))


class TemplateLibrary:
    """Retro templates (rdchiral ``product>>reactants`` SMARTS) compiled once, for template pre-training.

    Applying every template of USPTO-50k (10,619 in the training split) to every product with rdchiral would be
    ~10k rdchiral runs per product; a random handful of tries (the obvious shortcut) rarely hits one of the few
    templates whose product side occurs in the molecule: 50 random tries gave no example for 68% of real training
    products, this class gives the 10 asked for to all (``benchmarks/retro_real_templates.py``). So the candidates
    are found first, without false negatives:
    RDKit pattern fingerprints screen the templates' product-side queries (a query's bits must all be set in the
    molecule's), then ``HasSubstructMatch`` confirms; only those templates are run with rdchiral, in a seeded
    random order, until ``max_examples`` distinct reactant sets are found. Templates rdchiral cannot compile are
    counted (``skipped``) and left out."""

    fp_size = 2048

    def __init__(self, templates: Sequence[str]) -> None:
        from rdchiral.main import rdchiralReaction

        self.templates: list[str] = []
        self.reactions: list[object] = []
        self.queries: list[Chem.Mol] = []
        fps = []
        self.skipped = 0
        for t in templates:
            try:
                rxn = rdchiralReaction(t)
                query = rxn.template_r  # the product side of a retro template: what must occur in the product
                query.UpdatePropertyCache(strict=False)
                fp = Chem.PatternFingerprint(query, fpSize=self.fp_size)
            except Exception:  # noqa: BLE001 - rdchiral/RDKit raise several types on odd templates; counted
                self.skipped += 1
                continue
            self.templates.append(t)
            self.reactions.append(rxn)
            self.queries.append(query)
            fps.append(np.frombuffer(DataStructs.BitVectToBinaryText(fp), dtype=np.uint8))
        self._fps = np.stack(fps) if fps else np.zeros((0, self.fp_size // 8), dtype=np.uint8)
        if self.skipped:
            log.warning("template library: %d of %d templates could not be compiled by rdchiral; left out",
                        self.skipped, len(templates))

    def __len__(self) -> int:
        return len(self.templates)

    def candidates(self, mol: Chem.Mol) -> list[int]:
        """Indices of the templates whose product side is a substructure of ``mol``."""
        fp = np.frombuffer(DataStructs.BitVectToBinaryText(Chem.PatternFingerprint(mol, fpSize=self.fp_size)),
                           dtype=np.uint8)
        screened = np.flatnonzero(~(self._fps & ~fp).any(axis=1))
        return [int(i) for i in screened if mol.HasSubstructMatch(self.queries[i])]

    def apply(self, product: str, max_examples: int = 10, seed: int = 0) -> list[str]:
        """Up to ``max_examples`` distinct canonical reactant sets (not the product itself) from the templates
        that match ``product``, tried in a seeded random order."""
        from rdchiral.main import rdchiralReactants, rdchiralRun

        try:
            reactants = rdchiralReactants(product)
        except Exception:  # noqa: BLE001 - an unparsable product gives no examples
            return []
        found = self.candidates(reactants.reactants_achiral)
        order = torch.randperm(len(found), generator=torch.Generator().manual_seed(seed)).tolist()
        out: list[str] = []
        for k in order:
            try:
                outcomes = rdchiralRun(self.reactions[found[k]], reactants)
            except Exception:  # noqa: BLE001 - a template rdchiral cannot run on this product is skipped
                continue
            for o in outcomes:
                c = canonical_set(o)
                if c is not None and c not in out and c != product:
                    out.append(c)
                    break
            if len(out) >= max_examples:
                break
        return out


def apply_templates(product: str, templates: Sequence[str] | TemplateLibrary, max_examples: int = 10,
                    seed: int = 0) -> list[str]:
    """Template pre-training targets for one product (see :class:`TemplateLibrary`; pass a library to reuse it)."""
    library = templates if isinstance(templates, TemplateLibrary) else TemplateLibrary(templates)
    return library.apply(product, max_examples, seed)


_WORKER_LIBRARY: TemplateLibrary | None = None  # one compiled library per worker process


def _init_worker_library(templates: Sequence[str]) -> None:
    global _WORKER_LIBRARY
    _WORKER_LIBRARY = TemplateLibrary(templates)


def _apply_item(item: tuple[str, int, int]) -> list[str]:
    product, max_examples, seed = item
    return _WORKER_LIBRARY.apply(product, max_examples, seed)


def template_pretraining_targets(products: Sequence[str], templates: Sequence[str], max_examples: int = 10,
                                 seed: int = 0, processes: int = 1) -> list[list[str]]:
    """Template pre-training targets of every product (product ``i`` seeded ``seed + i``, so the result does not
    depend on ``processes``): USPTO-50k's 40,008 training products cost ~53 min of one core."""
    items = [(p, max_examples, seed + i) for i, p in enumerate(products)]
    if processes > 1 and len(items) > 1:
        from multiprocessing import Pool

        with Pool(processes, initializer=_init_worker_library, initargs=(list(templates),)) as pool:
            return list(pool.imap(_apply_item, items, chunksize=64))
    library = TemplateLibrary(templates)
    return [library.apply(*item) for item in items]


def _write_json(path: Path, obj: object) -> bool:
    """Write ``obj`` to ``path`` atomically; ``False`` (logged) where the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj))
        tmp.replace(path)
    except OSError as err:
        log.warning("could not write the cache file %s (%s): it will be computed again next time", path, err)
        return False
    return True


class Seq2SeqDataset(Dataset):
    """(source tokens, target tokens, class, target SMILES) examples; encoded at batch time."""

    def __init__(self, sources: list[list[str]], targets: list[list[str]], classes: list[int],
                 products: list[str], reactants: list[str]) -> None:
        self.sources, self.targets, self.classes = sources, targets, classes
        self.products, self.reactants = products, reactants

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> int:
        return i

    def lengths(self) -> list[int]:
        return [max(len(s), len(t) + 1) for s, t in zip(self.sources, self.targets)]


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length whose padded size ``n * max_len`` stays within ``max_tokens``.

    Shards itself across DDP ranks (run with ``use_distributed_sampler: false``): with ``shuffle`` the
    batch order is permuted with ``seed + epoch`` and the batch count padded to a multiple of the world
    size (so every rank runs as many optimiser steps); without it every batch is seen exactly once.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool, seed: int = 0,
                 max_batch: int | None = None) -> None:
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.start = 0  # batches of the next iteration to skip, once (set by ResumableDataLoader when resuming)
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_max = 0
        for i in order:
            new_max = max(cur_max, lengths[i])
            if cur and (new_max * (len(cur) + 1) > max_tokens or (max_batch and len(cur) >= max_batch)):
                batches.append(cur)
                cur, new_max = [], lengths[i]
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> TokenBudgetBatchSampler:
        """Itself: Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler`` (not on the batch sampler)."""
        return self

    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _local(self) -> list[list[int]]:
        rank, world = self._world()
        batches = self.batches
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            batches = [batches[i] for i in perm.tolist()]
            if world > 1 and len(batches) % world:
                batches = batches + batches[: world - len(batches) % world]
        return batches[rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator, so the batch order is drawn at the first ``next``: after Lightning's ``set_epoch``, also when
        # a resumed run made the iterator before setting the epoch. ``start`` skips batches once (resuming).
        local, start = self._local(), self.start
        self.start = 0
        yield from local[start:]

    def __len__(self) -> int:
        return len(self._local())


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`TokenBudgetBatchSampler` whose epoch resumes mid-way.

    Lightning saves a loader's ``state_dict`` in the checkpoint (its ``_Stateful`` protocol) and loads it before
    the resumed run's first batch. An epoch's batches are fixed by ``seed + epoch``, so the state is the epoch and
    the batches handed out in it; a resumed run skips those: no batch trained twice, none left out. Lightning
    fetches nothing ahead from a loader with a length, so batches handed out are batches trained on.
    """

    _epoch = 0
    _done = 0
    _resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator:
        sampler = self.batch_sampler
        assert isinstance(sampler, TokenBudgetBatchSampler)
        start = 0
        if self._resume is not None:
            epoch, done = self._resume
            self._resume = None
            start = done if epoch == sampler.epoch else 0  # a checkpoint from an epoch's end resumes the next one
        sampler.start = start
        self._epoch, self._done = sampler.epoch, start
        for batch in super().__iter__():
            self._done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches_done": self._done}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches_done"]))


class USPTODataModule(LightningDataModule):
    """USPTO-50k (or its offline sample) for retrosynthesis seq2seq.

    Args:
        data_dir: folder with the CSVs; default ``$PAPERZOO_DATA/uspto_50k``.
        train_file: ``auto`` = ``raw_train.csv`` if present, else ``raw_train_UNMAPPED_derived.csv``.
        val_file, test_file: CSV (USPTO format) or ``.txt`` (``product>>reactants`` a line).
        augment: "Aug" of the paper: extra training copies per example with a random non-canonical
            product SMILES (fixed at setup, reproducible from ``seed``).
        pretrain: ``random``: replace the training targets by random disconnections of the training
            products (up to ``pretrain_examples`` each; the paper's Pre-train (R)); ``template``: by the
            outcomes of the training split's templates applied to the training products (Pre-train (T); needs
            atom-mapped training reactions and rdchiral).
        split: ``given`` (the files' split) or ``template``: all reactions regrouped so that no validation/test
            reaction has a template that occurs in training (the paper's template split; 80/10/10 of the
            templates' reactions, ``seed``). Needs atom maps everywhere.
        rare_templates: keep only test reactions whose template occurs at most this many times in the entire
            data set (train + val + test, before any subsetting): the paper's rare-reaction subset uses 10 (about 400
            of USPTO-50k's test reactions). Needs atom maps everywhere.
        atom_mapping: ``given`` (use the files' atom maps) or ``rxnmapper``: a file without atom maps (the real
            ``raw_train_UNMAPPED_derived.csv``) is atom-mapped with rxnmapper once (in ``prepare_data``, ~10-20
            reactions/s on a CPU) and the mapped copy is cached in ``cache_dir`` (keyed by the source
            file's hash) and used from then on; the template options then work on the real data.
        cache_dir: derived files, each made once (in ``prepare_data``: rank 0 of a node) and keyed by a hash of
            what it is made from: rxnmapper-mapped copies, the templates extracted from each file, template
            pre-training examples. Default ``$PAPERZOO_DATA/uspto_50k_cache``; where it is not writable, the
            work is redone in every run (logged).
        preprocess_workers: processes for template extraction and template pre-training examples (the real
            training split costs ~11 and ~53 min of one core, once thanks to the cache).
        max_tokens: token budget of a training batch (padded ``batch * max(len(src), len(tgt)+1)``).
        eval_batch_size: products per validation/test batch (beam search memory grows with it).
        train_subset, eval_subset: keep only the first N reactions (quick runs).
        max_length: drop (counted, logged) examples whose source or target is longer (tokens).
    """

    folder = "uspto_50k"

    def __init__(
        self,
        data_dir: str | None = None,
        train_file: str = "auto",
        val_file: str = "raw_val.csv",
        test_file: str = "raw_test.csv",
        augment: int = 0,
        pretrain: Literal["none", "random", "template"] = "none",
        pretrain_examples: int = 10,
        split: Literal["given", "template"] = "given",
        rare_templates: int | None = None,
        atom_mapping: Literal["given", "rxnmapper"] = "given",
        cache_dir: str | None = None,
        preprocess_workers: int = 1,
        max_tokens: int = 4096,
        max_batch: int | None = None,
        eval_batch_size: int = 64,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        max_length: int = 300,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir, self.folder)
        self.vocab: Vocabulary | None = None
        self.skipped: dict[str, int] = {}
        self.splits: dict[str, list[Reaction]] = {}
        self.datasets: dict[str, Seq2SeqDataset] = {}

    # ------------------------------------------------------------------ reading
    def _path(self, split: str) -> Path:
        name = getattr(self.hparams, f"{split}_file")
        if split == "train" and name == "auto":
            mapped = self.data_dir / "raw_train.csv"
            name = mapped.name if mapped.is_file() else "raw_train_UNMAPPED_derived.csv"
        path = self.data_dir / name
        if not path.is_file():
            raise missing_data_error("USPTO-50k", self.data_dir, "uspto", None)
        if self.hparams.atom_mapping == "rxnmapper" and not _first_reaction_mapped(path):
            return self._mapped_copy(path)
        return path

    def _mapped_copy(self, path: Path) -> Path:
        """The rxnmapper-mapped copy of ``path`` in the cache (made once)."""
        dst = self._cache_dir() / f"{path.stem}.{_file_digest(path)}.rxnmapper.csv"
        if not dst.is_file():
            mapped, failed = map_reaction_file(path, dst)
            log.info("rxnmapper: %d reactions mapped, %d could not be mapped; cached as %s", mapped, failed, dst)
        return dst

    def _cache_dir(self) -> Path:
        return resolve_data_dir(self.hparams.cache_dir, "uspto_50k_cache")

    def prepare_data(self) -> None:
        # rank 0 of each node makes the derived files once (rxnmapper maps, templates, template pre-training
        # examples); every rank's setup then reads them from the cache
        if self.hparams.atom_mapping == "rxnmapper":
            for split in ("train", "val", "test"):
                self._path(split)
        if self.hparams.split == "template" or self.hparams.rare_templates is not None:
            self.reactions("train")
        if self.hparams.pretrain == "template":
            self._template_pretraining_targets(self.reactions("train"))

    def _cached_templates(self, by_split: dict[str, list[Reaction]]) -> None:
        """Make the templates of these reactions known to :func:`template_of`: read from the cache file of the
        split's CSV, the missing ones extracted (``preprocess_workers`` processes) and added to that file."""
        for split, reactions in by_split.items():
            path = self._path(split)
            cache = self._cache_dir() / f"{path.stem}.{_file_digest(path)}.templates.json"
            stored: dict[str, str | None] = json.loads(cache.read_text()) if cache.is_file() else {}
            for key, template in stored.items():
                _TEMPLATE_CACHE.setdefault(key, template)
            missing = [r for r in reactions if r.mapped is not None and _template_key(r) not in stored]
            if not missing:
                continue
            start = time.perf_counter()
            extract_templates(missing, self.hparams.preprocess_workers)
            stored.update({_template_key(r): _TEMPLATE_CACHE[_template_key(r)] for r in missing})
            if _write_json(cache, stored):
                log.info("USPTO %s: templates of %d reactions extracted in %.0f s, cached in %s", split, len(missing),
                         time.perf_counter() - start, cache)

    def _template_pretraining_targets(self, reactions: list[Reaction]) -> list[list[str]]:
        """Template pre-training targets of the training products (the training templates applied to them), made
        once and cached: the key hashes the products, the templates, ``pretrain_examples`` and ``seed``."""
        if self.hparams.split == "given":  # (the template split's reactions, from every file, have theirs already)
            self._cached_templates({"train": reactions})
        templates = sorted({t for t in map(template_of, reactions) if t})
        n, seed = self.hparams.pretrain_examples, self.hparams.seed
        products = [r.product for r in reactions]
        key = hashlib.sha256(json.dumps(["template-pretraining/1", n, seed, templates, products]).encode())
        cache = self._cache_dir() / f"pretrain_template.{key.hexdigest()[:16]}.json"
        if cache.is_file():
            targets = json.loads(cache.read_text())
            log.info("USPTO template pre-training: examples of %d products read from %s", len(products), cache)
            return targets
        start = time.perf_counter()
        targets = template_pretraining_targets(products, templates, n, seed, self.hparams.preprocess_workers)
        log.info("USPTO template pre-training: %d examples for %d products from %d templates in %.0f s (%d processes)",
                 sum(map(len, targets)), len(products), len(templates), time.perf_counter() - start,
                 self.hparams.preprocess_workers)
        _write_json(cache, targets)
        return targets

    def reactions(self, split: str) -> list[Reaction]:
        """Canonical reactions of a split (``train``/``val``/``test``), invalid lines skipped and counted."""
        if split not in self.splits and (self.hparams.split == "template" or self.hparams.rare_templates is not None):
            self._template_splits()
        if split not in self.splits:
            path = self._path(split)
            reactions, skipped = read_reactions(path)
            subset = self.hparams.train_subset if split == "train" else self.hparams.eval_subset
            if subset is not None:
                reactions = reactions[:subset]
            self.splits[split] = reactions
            self.skipped[split] = skipped
            log.info("USPTO %s: %d reactions from %s, %d invalid lines skipped", split, len(reactions), path, skipped)
        return self.splits[split]

    def _read_mapped(self, split: str) -> list[Reaction]:
        path = self._path(split)
        reactions, skipped = read_reactions(path)
        self.skipped[split] = skipped
        unmapped = sum(r.mapped is None for r in reactions)
        if unmapped and self.hparams.atom_mapping == "rxnmapper":
            log.warning("%s: %d of %d reactions could not be atom-mapped by rxnmapper: no template for them", path,
                        unmapped, len(reactions))
        elif unmapped:
            raise ValueError(
                f"{path}: {unmapped} of {len(reactions)} reactions have no atom maps; the template split, the "
                "rare-template subset and template pre-training need atom-mapped reactions (map the training file "
                "first: --data.init_args.atom_mapping=rxnmapper maps it once with rxnmapper and caches it)")
        return reactions

    _template_of = staticmethod(template_of)

    def _template_splits(self) -> None:
        given = {s: self._read_mapped(s) for s in ("train", "val", "test")}
        self._cached_templates(given)
        if self.hparams.split == "template":
            every = given["train"] + given["val"] + given["test"]
            groups: dict[str, list[Reaction]] = {}
            no_template = 0
            for r in every:
                t = self._template_of(r)
                if t is None:
                    no_template += 1
                    t = f"<none:{r.id}>"  # its own group
                groups.setdefault(t, []).append(r)
            keys = sorted(groups)
            order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(self.hparams.seed)).tolist()
            out = {"train": [], "val": [], "test": []}
            n = len(every)
            for i in order:
                target = "train" if len(out["train"]) < 0.8 * n else "val" if len(out["val"]) < 0.1 * n else "test"
                out[target] += groups[keys[i]]
            log.info("USPTO template split: %d templates, %d/%d/%d reactions (%d without a template)", len(keys),
                     *(len(out[s]) for s in ("train", "val", "test")), no_template)
        else:
            out = given
        if self.hparams.rare_templates is not None:
            # the paper: "templates from the entire USPTO-50k dataset ... that occur at most 10 times"
            counts = Counter(self._template_of(r) for s in ("train", "val", "test") for r in out[s])
            before = len(out["test"])
            out["test"] = [r for r in out["test"]
                           if self._template_of(r) is not None and counts[self._template_of(r)] <= self.hparams.rare_templates]
            log.info("USPTO rare-template subset: %d of %d test reactions (template seen <= %d times in the data set)",
                     len(out["test"]), before, self.hparams.rare_templates)
        for split, reactions in out.items():
            subset = self.hparams.train_subset if split == "train" else self.hparams.eval_subset
            self.splits[split] = reactions[:subset] if subset is not None else reactions

    def _examples(self, split: str) -> Seq2SeqDataset:
        reactions = self.reactions(split)
        seed = self.hparams.seed
        pairs: list[tuple[str, str, int, str]] = []  # source smiles, target smiles, class, product
        if split == "train" and self.hparams.pretrain == "random":
            for i, r in enumerate(reactions):
                for t in random_disconnections(r.product, self.hparams.pretrain_examples, seed + i):
                    pairs.append((r.product, t, r.cls, r.product))
        elif split == "train" and self.hparams.pretrain == "template":
            if any(r.mapped is None for r in reactions):
                self._read_mapped("train")  # raises the clear error
            for r, targets in zip(reactions, self._template_pretraining_targets(reactions)):
                pairs += [(r.product, t, r.cls, r.product) for t in targets]
        else:
            pairs = [(r.product, r.reactants, r.cls, r.product) for r in reactions]
        if split == "train" and self.hparams.augment:
            extra = []
            for i, (src, tgt, c, p) in enumerate(pairs):
                for a in range(self.hparams.augment):
                    extra.append((random_smiles(src, seed * 1_000_003 + i * 31 + a), tgt, c, p))
            pairs += extra
        sources, targets, classes, products, reactants = [], [], [], [], []
        too_long = 0
        for src, tgt, c, p in pairs:
            s, t = tokenize(src), tokenize(tgt)
            if max(len(s), len(t)) > self.hparams.max_length:
                too_long += 1
                continue
            sources.append(s)
            targets.append(t)
            classes.append(c)
            products.append(p)
            reactants.append(tgt)
        if too_long:
            log.warning("USPTO %s: %d examples longer than max_length=%d tokens skipped", split, too_long,
                        self.hparams.max_length)
        self.skipped[f"{split}_too_long"] = too_long
        return Seq2SeqDataset(sources, targets, classes, products, reactants)

    def setup(self, stage: str | None = None) -> None:
        # the vocabulary always comes from the training split (and is saved in the checkpoint)
        if "train" not in self.datasets:
            self.datasets["train"] = self._examples("train")
        if self.vocab is None:
            ds = self.datasets["train"]
            tokens = ds.sources + ds.targets
            if self.hparams.pretrain != "none":
                # fine-tuning keeps the pre-trained checkpoint's vocabulary, so it must also hold the tokens that
                # only the real reactants have (leaving groups such as a boronic acid's B): pre-training targets
                # are pieces of the products and would leave them <unk>, impossible to predict after fine-tuning
                tokens = tokens + [tokenize(r.reactants) for r in self.reactions("train")]
            self.vocab = Vocabulary.build(tokens)
            log.info("USPTO vocabulary: %d tokens from the training split", len(self.vocab))
        for split in ("val", "test"):
            if split not in self.datasets and stage in (None, "fit", "validate", "test", "predict"):
                if split == "val" and stage in ("test", "predict"):
                    continue
                if split == "test" and stage in ("fit", "validate"):
                    continue
                self.datasets[split] = self._examples(split)

    def skip_counts(self) -> dict[str, int]:
        """Counted skips per split (invalid SMILES lines, too-long examples): logged by the module."""
        return dict(self.skipped)

    # ------------------------------------------------------------------ batching
    def collate(self, split: str):
        ds = self.datasets[split]
        vocab = self.vocab

        def fn(indices: list[int]) -> dict:
            src = [vocab.encode(ds.sources[i]) for i in indices]
            tgt = [vocab.encode(ds.targets[i], bos=True, eos=True) for i in indices]
            return {
                "src": _pad(src, vocab.pad),
                "tgt": _pad(tgt, vocab.pad),
                "cls": torch.tensor([ds.classes[i] for i in indices], dtype=torch.long),
                "product": [ds.products[i] for i in indices],
                "reactants": [ds.reactants[i] for i in indices],
            }

        return fn

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup("test" if split == "test" else "fit")
        ds = self.datasets[split]
        if shuffle:
            sampler = TokenBudgetBatchSampler(ds.lengths(), self.hparams.max_tokens, True, self.hparams.seed,
                                              self.hparams.max_batch)
        else:
            n = self.hparams.eval_batch_size
            lengths = ds.lengths()
            sampler = TokenBudgetBatchSampler(lengths, n * max(lengths, default=1), False, max_batch=n)
        loader = ResumableDataLoader if shuffle else DataLoader
        return loader(ds, batch_sampler=sampler, collate_fn=self.collate(split), num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict:
        return {"vocab": self.vocab.itos if self.vocab is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("vocab"):
            self.vocab = Vocabulary(state_dict["vocab"])


def _pad(seqs: list[list[int]], pad: int) -> Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def token_count(batch: dict) -> int:
    """Non-pad target tokens of a batch (for throughput)."""
    return int((batch["tgt"][:, 1:] != Vocabulary.pad).sum())


__all__ = [
    "CLASS_NAMES", "Reaction", "SMILES_REGEX", "TemplateLibrary", "TokenBudgetBatchSampler", "USPTODataModule",
    "Vocabulary", "apply_templates", "extract_templates", "map_reaction_file", "map_reactions",
    "random_disconnections", "random_smiles", "read_reactions", "strip_maps", "template_of",
    "template_pretraining_targets", "tokenize",
]
