"""Templates on the real USPTO-50k: rxnmapper maps of the training split, the template split, the rare subset and
template pre-training, all through ``USPTODataModule``.

1. ``atom_mapping=rxnmapper``: the unmapped real training file (``raw_train_UNMAPPED_derived.csv``) is atom-mapped
   once and cached (``--cache-dir``; ~15 min on 2 CPU cores the first time, instant after);
2. rdchiral retro templates of all 50,016 reactions (training: rxnmapper's maps; val/test: the official maps),
   extracted in ``--workers`` processes: how many reactions have one, how many distinct templates, how many test
   reactions a training template can solve (the ceiling of any template-based model on the given split);
3. ``split=template``: the paper's template split (no val/test reaction solvable by a training template), checked;
4. ``rare_templates=10``: the paper's rare-reaction subset (test reactions whose template occurs at most 10 times in
   the entire data set; the paper reports "around 400");
5. ``pretrain=template``: the training templates applied to ``--pretrain-products`` random training products with
   :class:`TemplateLibrary` (fingerprint screen + substructure match, then rdchiral), beside the naive alternative
   (``--naive-tries`` randomly chosen templates per product): examples per product and seconds per product.

    PAPERZOO_DATA=../shared/data python benchmarks/retro_real_templates.py --cache-dir ~/.cache/paperzoo
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
import warnings
from collections import Counter

from datamodules.uspto import TemplateLibrary, USPTODataModule, extract_templates


def _naive(product: str, templates: list[str], tries: int, max_examples: int, seed: int) -> list[str]:
    """The shortcut TemplateLibrary replaces: ``tries`` random templates per product, each run with rdchiral."""
    from rdchiral.main import rdchiralReactants, rdchiralReaction, rdchiralRun

    from metrics.chemistry import canonical_set

    reactants = rdchiralReactants(product)
    out: list[str] = []
    for t in random.Random(seed).sample(templates, min(tries, len(templates))):
        try:
            outcomes = rdchiralRun(rdchiralReaction(t), reactants)
        except Exception:  # noqa: BLE001
            continue
        c = next((c for c in map(canonical_set, outcomes) if c is not None and c not in out and c != product), None)
        if c is not None:
            out.append(c)
        if len(out) >= max_examples:
            break
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with the USPTO-50k CSVs (default $PAPERZOO_DATA/uspto_50k)")
    p.add_argument("--cache-dir", dest="cache", default=None,
                   help="USPTODataModule's cache_dir, where the rxnmapper-mapped training file is cached "
                        "(default $PAPERZOO_DATA/uspto_50k_cache)")
    p.add_argument("--workers", type=int, default=2, help="processes for template extraction")
    p.add_argument("--rare", type=int, default=10, help="rare subset: template seen at most this many times")
    p.add_argument("--pretrain-products", dest="pretrain_products", type=int, default=300)
    p.add_argument("--pretrain-examples", dest="pretrain_examples", type=int, default=10)
    p.add_argument("--naive-tries", dest="naive_tries", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    common = dict(data_dir=args.data_dir, atom_mapping="rxnmapper", cache_dir=args.cache, seed=args.seed)
    rows: list[tuple[str, str]] = []

    start = time.perf_counter()
    dm = USPTODataModule(**common)
    dm.prepare_data()
    given = {s: dm._read_mapped(s) for s in ("train", "val", "test")}
    rows.append(("rxnmapper maps of the training file (cached after the first run)",
                 f"{sum(r.mapped is not None for r in given['train']):,} of {len(given['train']):,} mapped, "
                 f"{time.perf_counter() - start:.0f} s"))

    start = time.perf_counter()
    extract_templates([r for s in given.values() for r in s], args.workers)
    t_extract = time.perf_counter() - start
    tmpl = {s: [dm._template_of(r) for r in given[s]] for s in given}
    total = sum(len(v) for v in given.values())
    with_t = sum(t is not None for v in tmpl.values() for t in v)
    train_set = set(tmpl["train"]) - {None}
    every = Counter(t for v in tmpl.values() for t in v if t is not None)
    solvable = sum(t in train_set for t in tmpl["test"])
    rows += [
        ("reactions with an rdchiral template (train / val / test)",
         " / ".join(f"{sum(t is not None for t in tmpl[s]):,} of {len(tmpl[s]):,}" for s in tmpl)
         + f" ({with_t / total:.3f}); extraction {t_extract:.0f} s in {args.workers} processes"),
        ("distinct templates (all splits / training split)", f"{len(every):,} / {len(train_set):,}"),
        ("given split: test reactions whose template occurs in training (template-based ceiling)",
         f"{solvable:,} of {len(tmpl['test']):,} = {solvable / len(tmpl['test']):.3f}"),
    ]

    split = USPTODataModule(**common, split="template")
    parts = {s: split.reactions(s) for s in ("train", "val", "test")}
    seen = {split._template_of(r) for r in parts["train"]} - {None}
    leaked = sum(split._template_of(r) in seen for s in ("val", "test") for r in parts[s])
    rows.append(("template split: train / val / test reactions; val+test solvable by a training template",
                 " / ".join(f"{len(parts[s]):,}" for s in parts) + f"; {leaked}"))

    rare = USPTODataModule(**common, rare_templates=args.rare)
    kept = rare.reactions("test")
    rows.append((f"rare-template subset (template occurs <= {args.rare} times in the data set; paper: ~400)",
                 f"{len(kept):,} of {len(given['test']):,} test reactions"))

    products = [r.product for r in random.Random(args.seed).sample(given["train"], args.pretrain_products)]
    templates = sorted(train_set)
    start = time.perf_counter()
    library = TemplateLibrary(templates)
    t_build = time.perf_counter() - start
    for name, fn in (("TemplateLibrary (screen + match, then rdchiral)",
                      lambda prod, i: library.apply(prod, args.pretrain_examples, args.seed + i)),
                     (f"naive: {args.naive_tries} random templates per product",
                      lambda prod, i: _naive(prod, templates, args.naive_tries, args.pretrain_examples, args.seed + i))):
        start = time.perf_counter()
        counts = [len(fn(prod, i)) for i, prod in enumerate(products)]
        dt = (time.perf_counter() - start) / len(products)
        rows.append((f"template pre-training, {name}: examples per product (mean / median / share with none), "
                     f"s per product, {len(products)} random training products",
                     f"{statistics.mean(counts):.2f} / {statistics.median(counts):.0f} / "
                     f"{sum(c == 0 for c in counts) / len(counts):.3f}, {dt:.3f} s (x {len(given['train']):,} "
                     f"products = {dt * len(given['train']) / 60:.0f} min)"))
    rows.append(("TemplateLibrary build (rdchiral compile + fingerprints of the training templates)",
                 f"{len(library):,} templates, {library.skipped} not compilable, {t_build:.0f} s"))

    print("\n| measure (real USPTO-50k) | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
