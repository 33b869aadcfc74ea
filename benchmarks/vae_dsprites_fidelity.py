"""Fidelity of the dSprites generator to the real data: per-shape IoU over every real image of both subsets.

    python -m benchmarks.vae_dsprites_fidelity [--data ../shared/data/dsprites]

For each image of ``dsprites_subset.npz`` (20,000) and ``dsprites_downsampled.npz`` (46,080) the
generator renders the image's latents; the table gives per shape the mean and the 5th percentile of
the intersection-over-union with the real image.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from datamodules.dsprites import load_npz
from datamodules.samples import dsprites as gen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dsprites"))
    args = parser.parse_args(argv)
    print(f"{'file':<26} {'shape':<8} {'images':>7} {'mean IoU':>9} {'5th pct':>8} {'exact':>7}")
    for name in gen.SUBSET_FILES:
        path = Path(args.data) / name
        if not path.is_file():
            print(f"{name:<26} missing ({path})")
            continue
        start = time.perf_counter()
        imgs, classes = load_npz(path)
        iou = gen.iou(gen.render_classes(classes), imgs)
        for shape, shape_name in enumerate(gen.SHAPE_NAMES):
            sel = iou[classes[:, 0] == shape]
            print(f"{name:<26} {shape_name:<8} {len(sel):>7} {sel.mean():>9.4f} {np.percentile(sel, 5):>8.4f} {np.mean(sel == 1):>7.3f}")
        print(f"{name:<26} {'all':<8} {len(iou):>7} {iou.mean():>9.4f} {np.percentile(iou, 5):>8.4f} {np.mean(iou == 1):>7.3f}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
