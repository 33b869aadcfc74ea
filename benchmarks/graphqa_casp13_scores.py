"""Our GDT_TS / LDDT on the real CASP13 models against the references shipped with them (one command).

    python benchmarks/graphqa_casp13_scores.py [--data ../shared/data/casp/CASP13]

Prints, per target: Pearson r and mean |difference| (x100 GDT points) of our GDT_TS against LGA's
(column ``lga_gdt_ts_deeprank_benchmark``, T0980s1 only) and against the TM-score program's GDT-TS when
the ``TMscore`` binary is installed (Debian ``tm-align``); and our C-alpha global LDDT against the
data set's ``lddt_ca`` column. Must show for T0980s1 vs LGA: r >= 0.98 and mean |diff| <= 1.0.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from datamodules.casp import read_pdb, true_scores

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "casp" / "CASP13"


def tmscore_gdt(model: Path, native: Path) -> float:
    out = subprocess.run(["TMscore", str(model), str(native)], capture_output=True, text=True, check=True).stdout
    return 100 * float(re.search(r"GDT-TS-score=\s*([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT)
    args = parser.parse_args()
    has_tmscore = shutil.which("TMscore") is not None
    print(f"{'target':9} {'n':>3} {'reference':22} {'pearson':>8} {'mean|d|':>8} {'max|d|':>7}")
    for target in sorted(p for p in args.data.iterdir() if (p / "scores.csv").is_file()):
        native = read_pdb(target / "native.pdb")
        rows = list(csv.DictReader(open(target / "scores.csv")))
        t0 = time.perf_counter()
        ours = [true_scores(native, read_pdb(target / "decoys" / f"{r['model']}.pdb")) for r in rows]
        seconds = time.perf_counter() - t0
        gdt = np.array([100 * s["gdt_ts"] for s in ours])
        refs = {"lddt_ca column (LDDT)": (np.array([s["lddt_global"] for s in ours]),
                                          np.array([float(r["lddt_ca"]) for r in rows]))}
        if "lga_gdt_ts_deeprank_benchmark" in rows[0]:
            refs["LGA GDT_TS"] = (gdt, np.array([float(r["lga_gdt_ts_deeprank_benchmark"]) for r in rows]))
        if has_tmscore:
            refs["TM-score GDT-TS"] = (gdt, np.array([tmscore_gdt(target / "decoys" / f"{r['model']}.pdb",
                                                                  target / "native.pdb") for r in rows]))
        for name, (a, b) in refs.items():
            d = np.abs(a - b)
            print(f"{target.name:9} {len(rows):3d} {name:22} {np.corrcoef(a, b)[0, 1]:8.4f} {d.mean():8.4f} {d.max():7.4f}")
        print(f"{target.name:9} scoring time {seconds / len(rows) * 1000:.0f} ms per model")
    if not has_tmscore:
        print("(TMscore binary not installed: apt-get install tm-align to add the TM-score comparison)")


if __name__ == "__main__":
    main()
