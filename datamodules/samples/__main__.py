"""``python -m datamodules.samples NAME --root DIR``: build an offline sample and print what was written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datamodules.base import DATA_ENV, data_root
from datamodules.samples import builders


def main(argv: list[str] | None = None) -> int:
    found = builders()
    parser = argparse.ArgumentParser(prog="python -m datamodules.samples", description=__doc__)
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, module in found.items():
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--root", type=Path, default=None, help=f"data root (default: ${DATA_ENV} or ./data)")
        p.add_argument("--seed", type=int, default=0)
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
    args = vars(parser.parse_args(argv))
    module = found[args.pop("name")]
    root = args.pop("root") or data_root()
    written = module.build(root, **args)
    for path in written:
        print(path)
    print(f"{module.NAME}: wrote {len(written)} file(s) under {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
