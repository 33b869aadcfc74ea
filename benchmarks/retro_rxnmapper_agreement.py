"""Do rxnmapper's atom maps give the same reaction templates as USPTO-50k's official maps?

For every reaction of the (atom-mapped) validation file: strip the atom maps, map the bare reaction with rxnmapper
(the mapping ``--data.init_args.atom_mapping=rxnmapper`` applies to the unmapped real training file), extract the
rdchiral retro template from both mappings and compare:

- ``exact``: identical rdchiral template strings (rdchiral renumbers maps left to right, but the fragments' SMARTS
  can still be written differently for the same template, so this is a lower bound);
- ``up to map numbers``: identical after removing map numbers and sorting the fragments of each side;
- ``reproduces reactants`` (``--apply``): rxnmapper's template, applied to the product with rdchiral, gives the
  recorded reactants (the property template pre-training and the template split rely on), beside the same rate
  for the official template.

    python benchmarks/retro_rxnmapper_agreement.py [--data-dir ../shared/data/uspto_50k] [--limit N --seed 0]
"""

from __future__ import annotations

import argparse
import csv
import logging
import random
import re
import statistics
import time
import warnings
from pathlib import Path

from datamodules.base import resolve_data_dir
from datamodules.uspto import extract_template, map_reactions, strip_maps
from metrics.chemistry import canonical_set


def unnumbered(template: str) -> str:
    """The template without atom-map numbers, fragments of each side sorted."""
    sides = re.sub(r":\d+\]", "]", template).split(">>")
    return ">>".join(".".join(sorted(side.split("."))) for side in sides)


def reproduces(template: str | None, product: str, reactants: str | None) -> bool:
    if template is None or reactants is None:
        return False
    from rdchiral.main import rdchiralReactants, rdchiralReaction, rdchiralRun

    try:
        outcomes = rdchiralRun(rdchiralReaction(template), rdchiralReactants(product))
    except Exception:  # noqa: BLE001 - rdchiral raises several types; a template it cannot run reproduces nothing
        return False
    return any(canonical_set(o) == reactants for o in outcomes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="folder with raw_val.csv (default $PAPERZOO_DATA/uspto_50k)")
    p.add_argument("--file", default="raw_val.csv")
    p.add_argument("--limit", type=int, default=None, help="a seeded random subset of this many reactions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--apply", action="store_true", help="also check that each template reproduces the reactants")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    path = resolve_data_dir(args.data_dir, "uspto_50k") / args.file
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    n_file = len(rows)
    if args.limit is not None and args.limit < n_file:
        rows = [rows[i] for i in sorted(random.Random(args.seed).sample(range(n_file), args.limit))]
    official = [r["reactants>reagents>production"] for r in rows]
    bare = []
    for text in official:
        reac, _, prod = text.split(">")
        bare.append(f"{strip_maps(reac)}>>{strip_maps(prod)}")

    start = time.perf_counter()
    mapped = []
    for i in range(0, len(bare), 500):  # in chunks, with progress (the whole file takes minutes on a CPU)
        mapped += map_reactions(bare[i : i + 500], args.batch_size)
        print(f"mapped {len(mapped)}/{len(bare)} in {time.perf_counter() - start:.0f} s", flush=True)
    t_map = time.perf_counter() - start
    start = time.perf_counter()
    counts = dict(n=len(rows), map_failed=0, official_none=0, rxn_none=0, exact=0, unnumbered=0, both=0,
                  rep_official=0, rep_rxn=0)
    for n_done, (text, (m, _)) in enumerate(zip(official, mapped)):
        if n_done and n_done % 1000 == 0:
            print(f"templates of {n_done} reactions: {counts['exact']} identical so far "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        t_off = extract_template(text)
        t_rxn = extract_template(m) if m is not None else None
        counts["map_failed"] += m is None
        counts["official_none"] += t_off is None
        counts["rxn_none"] += m is not None and t_rxn is None
        if t_off is None:
            continue
        counts["both"] += 1
        counts["exact"] += t_off == t_rxn
        counts["unnumbered"] += t_rxn is not None and unnumbered(t_off) == unnumbered(t_rxn)
        if args.apply:
            reac, _, prod = text.split(">")
            product, reactants = canonical_set(prod), canonical_set(reac)
            counts["rep_official"] += reproduces(t_off, product, reactants)
            counts["rep_rxn"] += reproduces(t_rxn, product, reactants)
    t_tpl = time.perf_counter() - start
    conf = statistics.mean(c for m, c in mapped if m is not None)
    n, both = counts["n"], max(counts["both"], 1)
    subset = f"seeded subset (seed {args.seed}) of {n} of {n_file}" if n < n_file else f"all {n}"
    print(f"{path}: {subset} reactions; rxnmapper {t_map:.0f} s ({n / t_map:.1f} reactions/s), "
          f"templates{' + application' if args.apply else ''} {t_tpl:.0f} s; mean rxnmapper confidence {conf:.3f}")
    print("| measure | count | fraction |\n|---|---|---|")
    print(f"| rxnmapper failed to map | {counts['map_failed']} | {counts['map_failed'] / n:.4f} of all |")
    print(f"| no template from the official maps (excluded below) | {counts['official_none']} | "
          f"{counts['official_none'] / n:.4f} of all |")
    print(f"| no template from rxnmapper's maps | {counts['rxn_none']} | {counts['rxn_none'] / n:.4f} of all |")
    print(f"| template identical (exact rdchiral string) | {counts['exact']} | {counts['exact'] / both:.4f} |")
    print(f"| template identical up to map numbers | {counts['unnumbered']} | {counts['unnumbered'] / both:.4f} |")
    if args.apply:
        print(f"| official template reproduces the reactants | {counts['rep_official']} | "
              f"{counts['rep_official'] / both:.4f} |")
        print(f"| rxnmapper template reproduces the reactants | {counts['rep_rxn']} | "
              f"{counts['rep_rxn'] / both:.4f} |")
    print(f"(fractions below the first three rows are of the {counts['both']} reactions with an official template)")


if __name__ == "__main__":
    main()
