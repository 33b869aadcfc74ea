"""ODIN on Speech Commands in one command: accuracy and per-word outlier precision/recall/F1.

    python -m datamodules.samples speech_commands --root data --speakers 60     # SYNTHETIC eSpeak NG sample
    python benchmarks/odin_speech_table.py [--real ../shared/data/speech_commands] [-- extra lightning args]

Runs (A) the BiLSTM of ``configs/odin_speech_commands.yaml`` trained on the sample, tested on the sample's
test split; with ``--real``: (B) the same model tested on the real v0.02 clips (all from the official
test split) and (C) a second model trained on the sample plus the real clips of half of the speakers,
tested on the other half (grouped by speaker id). Per outlier word: F1 (precision/recall) of the flags at
the 9th decile of the training scores for RSS, Mahalanobis, their OR and AND, and MC-dropout entropy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = "configs/odin_speech_commands.yaml"
SCORES = [("RSS", "net.lstm3/rss_r0.99"), ("Mahalanobis", "net.lstm3/mahalanobis_r0.99"),
          ("OR", "net.lstm3/rss_or_mahalanobis_r0.99"), ("AND", "net.lstm3/rss_and_mahalanobis_r0.99"),
          ("MC-dropout", "baseline/mc_dropout")]
PAPER = "paper (real Speech Commands): 78% accuracy on the 25 words; best per-word F1 from 0.25 (tree) to 0.47 (house)"


def _table(title: str, acc: float, odin, n_test: int, n_out: int) -> list[str]:
    lines = [f"## {title}", "", f"test accuracy (25 known words, {n_test} clips): **{acc:.4f}**; "
             f"{n_out} outlier clips", ""]
    lines += ["| word | " + " | ".join(f"{s} F1 (P/R)" for s, _ in SCORES) + " |", "|" + "---|" * (1 + len(SCORES))]
    words = sorted({w for _, name in SCORES for w in odin.group_results.get(name, {})})
    for word in words:
        cells = []
        for _, name in SCORES:
            r = odin.group_results.get(name, {}).get(word)
            cells.append(f"{r['f1']:.2f} ({r['precision']:.2f}/{r['recall']:.2f})" if r else "")
        lines.append(f"| {word} | " + " | ".join(cells) + " |")
    cells = []
    for _, name in SCORES:
        r = odin.results.get(name, {})
        auroc = f" (AUROC {r['auroc']:.2f})" if "auroc" in r else ""
        cells.append(f"{r.get('f1', float('nan')):.2f}{auroc}" if r else "")
    lines += [f"| all outliers | " + " | ".join(cells) + " |", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--real", default=None, help="folder holding the real SpeechCommands/ copy")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args(argv)

    from callbacks.outliers import ODIN
    from datamodules.speech_commands import SpeechCommandsDataModule
    from lightning_modules.cli import cli

    out = args.out or Path(tempfile.mkdtemp(prefix="odin_speech_"))
    common = ["--config", args.config, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

    def run(name: str, extra: list[str]):
        r = cli(["fit", *common, f"--trainer.default_root_dir={out / name}",
                 f"--trainer.logger.init_args.save_dir={out / name}", *extra, *args.extra])
        (odin,) = [cb for cb in r.trainer.callbacks if isinstance(cb, ODIN)]
        return r, odin

    lines = ["# ODIN on Speech Commands (BiLSTM, 64 MFCCs); the sample is SYNTHESIZED speech (eSpeak NG)", "",
             PAPER, ""]
    r, odin = run("sample", [])
    res = r.trainer.test(r.model, datamodule=r.datamodule, verbose=False)
    dm = r.datamodule
    def emit(new: list[str]) -> None:  # print as we go: a later failure keeps the earlier tables
        lines.extend(new)
        print("\n".join(new), flush=True)

    print("\n".join(lines), flush=True)
    emit(_table("A: trained on the eSpeak sample, tested on the sample's test split (synthetic)",
                    res[0]["test/acc"], odin, len(dm.test_set), len(dm.outlier_set)))
    if args.real:
        hp = {k: v for k, v in dict(r.datamodule.hparams).items() if not k.startswith("_")}
        hp.update(test_data_dir=args.real)
        real = SpeechCommandsDataModule(**hp)
        res = r.trainer.test(r.model, datamodule=real, verbose=False)
        emit(_table("B: the same model tested on the real v0.02 clips (official test split, partial copy)",
                        res[0]["test/acc"], odin, len(real.test_set), len(real.outlier_set)))
        r2, odin2 = run("half", [f"--data.test_data_dir={args.real}", "--data.test_speaker_half=true"])
        res = r2.trainer.test(r2.model, datamodule=r2.datamodule, verbose=False)
        emit(_table("C: trained on the sample + real clips of half of the speakers, tested on the other half",
                        res[0]["test/acc"], odin2, len(r2.datamodule.test_set), len(r2.datamodule.outlier_set)))
    text = "\n".join(lines)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
