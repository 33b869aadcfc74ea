"""USPTO-50k DataModule, SMILES tokenizer, token-budget batching and the offline sample builder."""

from __future__ import annotations

import csv
import functools
import logging
import tempfile
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from rdkit import Chem

from datamodules.base import DataNotFoundError
from datamodules.uspto import (
    TokenBudgetBatchSampler,
    USPTODataModule,
    Vocabulary,
    random_disconnections,
    random_smiles,
    read_reactions,
    tokenize,
)
from metrics.chemistry import canonical_set


@functools.lru_cache(maxsize=1)
def uspto_sample() -> Path:
    """The default offline sample, built once per test process (a data root holding ``uspto_50k/``)."""
    from datamodules.samples import uspto

    root = Path(tempfile.mkdtemp(prefix="uspto_sample_"))
    uspto.build(root)
    return root


def test_tokenizer_examples() -> None:
    assert tokenize("Brc1ccc(Cl)cc1") == ["Br", "c", "1", "c", "c", "c", "(", "Cl", ")", "c", "c", "1"]
    assert tokenize("[NH3+]C%12CC%12") == ["[NH3+]", "C", "%12", "C", "C", "%12"]
    assert tokenize("C/C=C\\[C@@H](O)#N") == ["C", "/", "C", "=", "C", "\\", "[C@@H]", "(", "O", ")", "#", "N"]
    with pytest.raises(ValueError):
        tokenize("C{C}")


def test_sample_reactions_well_formed_and_tokens_round_trip() -> None:
    folder = uspto_sample() / "uspto_50k"
    n_smiles = 0
    classes = set()
    for split in ("train", "val", "test"):
        with open(folder / f"raw_{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows and list(rows[0]) == ["id", "class", "reactants>reagents>production"]
        for row in rows:
            classes.add(int(row["class"]))
            reac, reagents, prod = row["reactants>reagents>production"].split(">")
            assert reagents == ""
            pmol, rmol = Chem.MolFromSmiles(prod), Chem.MolFromSmiles(reac)
            assert pmol is not None and rmol is not None
            # USPTO convention: product atoms numbered 1..n, each from exactly one reactant atom
            pmaps = sorted(a.GetAtomMapNum() for a in pmol.GetAtoms())
            rmaps = sorted(a.GetAtomMapNum() for a in rmol.GetAtoms() if a.GetAtomMapNum())
            assert pmaps == list(range(1, pmol.GetNumAtoms() + 1)) == rmaps
            for a in rmol.GetAtoms():  # mapped atoms keep their element
                if a.GetAtomMapNum():
                    assert a.GetSymbol() == pmol.GetAtomWithIdx(a.GetAtomMapNum() - 1).GetSymbol()
            for smi in (reac, prod, canonical_set(reac), canonical_set(prod)):
                assert "".join(tokenize(smi)) == smi
                n_smiles += 1
    assert classes == set(range(1, 11))  # every USPTO-50k class
    assert n_smiles > 1500


def test_datamodule_counts_invalid_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "uspto_50k"
    folder.mkdir()
    src = uspto_sample() / "uspto_50k"
    for split in ("train", "val", "test"):
        lines = (src / f"raw_{split}.csv").read_text().splitlines()
        if split == "val":
            lines += ["BAD1,1,C1CC>>CCO", "BAD2,2,CCO>>C(C)(C)(C)(C)C"]  # unclosed ring; pentavalent carbon
        (folder / f"raw_{split}.csv").write_text("\n".join(lines) + "\n")
    dm = USPTODataModule(data_dir=str(folder), max_tokens=2000)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.skip_counts()["val"] == 2 and dm.skip_counts()["train"] == 0
    assert sum("invalid reaction SMILES skipped" in r.message for r in caplog.records) == 2
    n_val = len((src / "raw_val.csv").read_text().splitlines()) - 1
    assert len(dm.datasets["val"]) == n_val
    batch = next(iter(dm.train_dataloader()))
    assert batch["tgt"][:, 0].eq(Vocabulary.bos).all()
    assert batch["src"].numel() <= 2000 or len(batch["src"]) == 1


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    dm = USPTODataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="python -m datamodules.samples uspto"):
        dm.setup("fit")


def test_plain_product_reactant_list(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("CC(=O)NC>>CC(=O)O.CN\nNOT_A_SMILES>>CC\n")
    reactions, skipped = read_reactions(tmp_path / "train.txt")
    assert skipped == 1 and len(reactions) == 1
    assert reactions[0].product == "CNC(C)=O" and reactions[0].reactants == canonical_set("CN.CC(=O)O")


def test_augmentation_and_vocab_checkpointing() -> None:
    smi = "CC(=O)Nc1ccc(O)cc1"
    variants = {random_smiles(smi, s) for s in range(10)}
    assert len(variants) > 3 and all(canonical_set(v) == canonical_set(smi) for v in variants)
    dm = USPTODataModule(data_dir=str(uspto_sample() / "uspto_50k"), augment=1)
    dm.setup("fit")
    n = len(dm.reactions("train"))
    ds = dm.datasets["train"]
    assert len(ds) == 2 * n
    # the extra copy is the same product spelled differently, with the same target
    assert canonical_set("".join(ds.sources[n])) == canonical_set("".join(ds.sources[0]))
    assert ds.targets[n] == ds.targets[0]
    state = dm.state_dict()
    fresh = USPTODataModule()
    fresh.load_state_dict(state)
    assert fresh.vocab == dm.vocab


def test_token_budget_batches_cover_and_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [int(x) for x in torch.randint(5, 90, (300,), generator=torch.Generator().manual_seed(0))]
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=600, shuffle=False)
    seen = [i for b in sampler for i in b]
    assert sorted(seen) == list(range(300))  # every example exactly once
    assert all(len(b) * max(lengths[i] for i in b) <= 600 for b in sampler)
    # two ranks: disjoint shards covering everything (evaluation), equal lengths when shuffled (training)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(TokenBudgetBatchSampler, "_world", lambda self, r=rank: (r, 2))
        shards.append([i for b in sampler for i in b])
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) + len(shards[1]) == 300
    train = TokenBudgetBatchSampler(lengths, max_tokens=600, shuffle=True)
    counts = []
    for rank in (0, 1):
        monkeypatch.setattr(TokenBudgetBatchSampler, "_world", lambda self, r=rank: (r, 2))
        counts.append(len(list(train)))
    assert counts[0] == counts[1]


class _BatchRecorder(LightningModule):
    """Trains one weight and records every training batch's products, to compare batch sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[str, ...]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(tuple(batch["product"]))
        return (self.w - batch["src"].float().mean()) ** 2

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("stop_at", [5, 0])  # batches into the second epoch; 0 = at the first epoch's end
def test_training_resumes_mid_epoch_without_repeating_batches(stop_at: int, tmp_path: Path) -> None:
    def dm() -> USPTODataModule:
        return USPTODataModule(data_dir=str(uspto_sample() / "uspto_50k"), max_tokens=1200, seed=3)

    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, use_distributed_sampler=False)
    full = _BatchRecorder()
    Trainer(max_epochs=3, enable_checkpointing=False, **kw).fit(full, datamodule=dm())
    n = len(full.seen) // 3
    epochs = [full.seen[i * n:(i + 1) * n] for i in range(3)]
    assert n > 8 and all(sorted(e) == sorted(epochs[0]) for e in epochs)  # every batch once an epoch
    assert epochs[0] != epochs[1] != epochs[2]  # in a new order each epoch (set_epoch reaches the sampler)
    # a run saves a checkpoint at step `steps` and crashes a few steps later; the resumed run goes on from there
    steps = n + (stop_at or n)
    first = _BatchRecorder()
    save = ModelCheckpoint(dirpath=tmp_path, filename="stop", every_n_train_steps=steps, save_top_k=-1)
    Trainer(max_steps=steps + 3, callbacks=[save], **kw).fit(first, datamodule=dm())
    state = torch.load(tmp_path / "stop.ckpt", weights_only=False)["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": 1, "batches_done": stop_at or n}]
    rest = _BatchRecorder()
    Trainer(max_epochs=3, enable_checkpointing=False, **kw).fit(rest, datamodule=dm(),
                                                                 ckpt_path=tmp_path / "stop.ckpt")
    assert first.seen[:steps] + rest.seen == full.seen  # same batches, same order: none repeated, none left out


def test_random_disconnections_break_one_acyclic_bond() -> None:
    smi = "CC(=O)Nc1ccc(OCC)cc1"
    targets = random_disconnections(smi, max_examples=10, seed=0)
    heavy = Chem.MolFromSmiles(smi).GetNumAtoms()
    assert 3 <= len(targets) <= 10 and len(set(targets)) == len(targets)
    for t in targets:
        frags = t.split(".")
        assert len(frags) == 2
        assert sum(Chem.MolFromSmiles(f).GetNumAtoms() for f in frags) == heavy
        assert Chem.MolFromSmiles(smi).GetRingInfo().NumRings() == Chem.MolFromSmiles(t).GetRingInfo().NumRings()


def test_pretraining_vocabulary_holds_the_real_reactants_tokens() -> None:
    # fine-tuning keeps the pre-trained vocabulary: tokens only reactants have (the sample's Suzuki boronic acids,
    # B) must be in it, or no fine-tuned model could ever write them
    folder = uspto_sample() / "uspto_50k"
    plain = USPTODataModule(data_dir=folder)
    plain.setup("fit")
    pre = USPTODataModule(data_dir=folder, pretrain="random", pretrain_examples=3)
    pre.setup("fit")
    fragments = set(t for tokens in pre.datasets["train"].targets for t in tokens)
    assert "B" not in fragments  # pre-training targets are pieces of products: no boronic acid among them
    assert set(plain.vocab.itos) <= set(pre.vocab.itos)
    assert "B" in pre.vocab.stoi


@pytest.mark.realdata
def test_real_uspto_files_read(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "uspto_50k"
    # the atom-mapped val/test files and the unmapped training file; first 300 lines of each
    small = tmp_path / "uspto_50k"
    small.mkdir()
    for name in ("raw_val.csv", "raw_test.csv", "raw_train_UNMAPPED_derived.csv"):
        with open(folder / name) as f:
            head = [next(f) for _ in range(301)]
        (small / name).write_text("".join(head))
    dm = USPTODataModule(data_dir=str(small))
    dm.setup("fit")
    dm.setup("test")
    assert dm._path("train").name == "raw_train_UNMAPPED_derived.csv"
    assert {k: dm.skip_counts()[k] for k in ("train", "val", "test")} == {"train": 0, "val": 0, "test": 0}
    assert len(dm.reactions("train")) == len(dm.reactions("val")) == len(dm.reactions("test")) == 300
    test0 = dm.reactions("test")[0]
    assert test0.mapped is not None and ":" not in test0.product and test0.cls == 5
    assert dm.reactions("train")[0].mapped is None
    for r in dm.reactions("val") + dm.reactions("train"):
        assert "".join(tokenize(r.product)) == r.product and "".join(tokenize(r.reactants)) == r.reactants


@pytest.mark.realdata
@pytest.mark.slow
def test_real_uspto_full_sizes(shared_data: Path) -> None:
    dm = USPTODataModule(data_dir=str(shared_data / "uspto_50k"))
    sizes = {s: len(dm.reactions(s)) + dm.skip_counts()[s] for s in ("train", "val", "test")}
    assert sizes == {"train": 40008, "val": 5001, "test": 5007}
    assert sum(dm.skip_counts()[s] for s in ("train", "val", "test")) == 0


def test_template_split_rare_subset_and_template_pretraining(tmp_path: Path) -> None:
    folder = str(uspto_sample() / "uspto_50k")
    cache = str(tmp_path / "cache")
    dm = USPTODataModule(data_dir=folder, split="template", augment=0, cache_dir=cache)
    sizes = {s: len(dm.reactions(s)) for s in ("train", "val", "test")}
    total = sum(1 for s in ("train", "val", "test") for _ in read_reactions(Path(folder) / f"raw_{s}.csv")[0])
    assert sum(sizes.values()) == total and sizes["train"] >= 0.75 * total and sizes["test"] > 0
    train_templates = {dm._template_of(r) for r in dm.reactions("train")}
    # the paper's template split: no test reaction can be solved by a training template
    assert not any(dm._template_of(r) in train_templates for r in dm.reactions("test") + dm.reactions("val"))
    rare = USPTODataModule(data_dir=folder, rare_templates=2, cache_dir=cache)
    counts = {}  # the paper counts a template's reactions over the entire data set, not just training
    for s in ("train", "val", "test"):
        for r in read_reactions(Path(folder) / f"raw_{s}.csv")[0]:
            counts[rare._template_of(r)] = counts.get(rare._template_of(r), 0) + 1
    kept = rare.reactions("test")
    test = read_reactions(Path(folder) / "raw_test.csv")[0]
    assert 0 < len(kept) < len(test)
    assert {r.id for r in kept} == {r.id for r in test if counts[rare._template_of(r)] <= 2}
    pre = USPTODataModule(data_dir=folder, pretrain="template", train_subset=30, pretrain_examples=3, cache_dir=cache)
    pre.setup("fit")
    ds = pre.datasets["train"]
    assert len(ds) > 30  # several template outcomes per product
    assert all(canonical_set("".join(t)) is not None for t in ds.targets)


def test_template_work_is_done_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_data extracts the templates and makes the template pre-training examples once (in 2 processes:
    the same examples as one process), caches them, and a later run (or another DDP rank) only reads them."""
    import datamodules.uspto as uspto

    folder, cache = str(uspto_sample() / "uspto_50k"), tmp_path / "cache"
    kwargs = dict(data_dir=folder, pretrain="template", train_subset=40, pretrain_examples=3, cache_dir=str(cache))
    first = USPTODataModule(**kwargs, preprocess_workers=2)
    first.prepare_data()
    first.setup("fit")
    reactions = first.reactions("train")
    templates = sorted({t for t in map(uspto.template_of, reactions) if t})
    serial = uspto.template_pretraining_targets([r.product for r in reactions], templates, 3, seed=0, processes=1)
    assert [["".join(t)] for t in first.datasets["train"].targets] == [[t] for ts in serial for t in ts]
    assert len(list(cache.glob("raw_train.*.templates.json"))) == 1
    assert len(list(cache.glob("pretrain_template.*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(uspto, "_TEMPLATE_CACHE", {})  # a fresh process: nothing in memory
    monkeypatch.setattr(uspto, "extract_template", fail)
    monkeypatch.setattr(uspto.TemplateLibrary, "apply", fail)
    again = USPTODataModule(**kwargs)
    again.setup("fit")
    assert again.datasets["train"].targets == first.datasets["train"].targets


def test_template_library_screen_has_no_false_negatives() -> None:
    """The fingerprint screen only skips templates whose product side cannot match: the candidates equal a
    brute-force substructure match over every template, and each reaction's own template is among them."""
    from rdchiral.main import rdchiralReactants

    from datamodules.uspto import TemplateLibrary

    dm = USPTODataModule(data_dir=str(uspto_sample() / "uspto_50k"))
    train = dm.reactions("train")
    library = TemplateLibrary(sorted({t for t in map(dm._template_of, train) if t}))
    assert len(library) > 50 and library.skipped == 0
    for r in train[:40]:
        mol = rdchiralReactants(r.product).reactants_achiral
        found = library.candidates(mol)
        assert found == [i for i, q in enumerate(library.queries) if mol.HasSubstructMatch(q)]
        assert library.templates.index(dm._template_of(r)) in found
        outcomes = library.apply(r.product, max_examples=10, seed=0)
        assert len(set(outcomes)) == len(outcomes) and r.product not in outcomes
    # the recorded reactants are among a product's template outcomes when all its matching templates are tried
    assert sum(r.reactants in library.apply(r.product, max_examples=100) for r in train[:40]) >= 36


def test_template_options_need_atom_maps(tmp_path: Path) -> None:
    folder = tmp_path / "uspto_50k"
    folder.mkdir()
    header = "id,class,reactants>reagents>production\n"
    (folder / "raw_train.csv").write_text(header + "R1,2,CC(=O)O.NC>>CNC(C)=O\n")  # unmapped
    for split in ("val", "test"):
        (folder / f"raw_{split}.csv").write_text(header + "R2,2,CC(=O)O.NC>>CNC(C)=O\n")
    with pytest.raises(ValueError, match="atom maps"):
        USPTODataModule(data_dir=str(folder), split="template").reactions("train")


def _unmapped_copy(tmp_path: Path, n: int = 3) -> Path:
    """A data folder whose training file holds ``n`` sample reactions with their atom maps stripped."""
    from datamodules.uspto import strip_maps

    src = uspto_sample() / "uspto_50k"
    folder = tmp_path / "uspto_50k"
    folder.mkdir()
    with open(src / "raw_train.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:n]
    col = "reactants>reagents>production"
    lines = ["id,class,reactants>reagents>production"]
    for r in rows:
        reac, _, prod = r[col].split(">")
        lines.append(f"{r['id']},{r['class']},{strip_maps(reac)}>>{strip_maps(prod)}")
    (folder / "raw_train.csv").write_text("\n".join(lines) + "\n")
    for split in ("val", "test"):
        (folder / f"raw_{split}.csv").write_text((src / f"raw_{split}.csv").read_text())
    return folder


def test_rxnmapper_maps_training_file_once_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rxnmapper")
    import datamodules.uspto as uspto

    folder = _unmapped_copy(tmp_path)
    cache = tmp_path / "cache"
    dm = USPTODataModule(data_dir=str(folder), atom_mapping="rxnmapper", cache_dir=str(cache))
    dm.prepare_data()
    mapped_files = list(cache.glob("raw_train.*.rxnmapper.csv"))
    assert len(mapped_files) == 1 and dm._path("train") == mapped_files[0]
    assert dm._path("val") == folder / "raw_val.csv"  # already mapped: used as is
    plain = USPTODataModule(data_dir=str(folder)).reactions("train")
    train = dm.reactions("train")
    assert len(train) == 3 and all(r.mapped is not None for r in train)
    # same canonical reactions as the unmapped file; every product atom carries a map number
    assert [(r.product, r.reactants) for r in train] == [(r.product, r.reactants) for r in plain]
    for r in train:
        prod = Chem.MolFromSmiles(r.mapped.split(">")[2])
        assert all(a.GetAtomMapNum() > 0 for a in prod.GetAtoms())
        assert dm._template_of(r) is not None  # the template options now work on these reactions

    # a second DataModule reads the cache: rxnmapper is not run again
    def no_mapping(*args, **kwargs):
        raise AssertionError("mapped twice")

    monkeypatch.setattr(uspto, "map_reaction_file", no_mapping)
    again = USPTODataModule(data_dir=str(folder), atom_mapping="rxnmapper", cache_dir=str(cache))
    again.prepare_data()
    assert [r.mapped for r in again.reactions("train")] == [r.mapped for r in train]


def test_rxnmapper_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    folder = _unmapped_copy(tmp_path, n=1)
    monkeypatch.setitem(sys.modules, "rxnmapper", None)  # import rxnmapper -> ImportError
    dm = USPTODataModule(data_dir=str(folder), atom_mapping="rxnmapper", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ImportError, match="pip install 'rxnmapper"):
        dm.prepare_data()
    assert not list((tmp_path / "c").glob("*.csv"))  # nothing half-written
