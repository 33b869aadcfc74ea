"""Speech Commands: the eSpeak NG sample builder, the DataModule's bad-input handling, the BiLSTM, the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import CONFIGS, QUIET, out_args, run_cli

CONFIG = str(CONFIGS / "odin_speech_commands.yaml")
WORDS = "one,two,three,cat,dog"
KNOWN = ["one", "two", "three"]
OUTLIERS = ["cat", "dog"]
DATA_ARGS = [f"--data.known_words=[{', '.join(KNOWN)}]", f"--data.outlier_words=[{', '.join(OUTLIERS)}]",
             "--model.num_classes=3", "--model.hidden=16"]


@pytest.fixture(scope="module")
def speech_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 speakers (5 training, 2 validation, 1 testing by the data set's hash rule) x 5 words."""
    from datamodules.samples import speech_commands

    root = tmp_path_factory.mktemp("speech")
    speech_commands.build(root, speakers_count=8, words=WORDS)
    return root


def _base(root: Path) -> Path:
    return root / "speech_commands" / "SpeechCommands" / "speech_commands_v0.02"


def test_sample_layout_and_split_rule(speech_root: Path) -> None:
    import soundfile as sf

    from datamodules.samples.speech_commands import which_set

    base = _base(speech_root)
    wavs = sorted(base.glob("*/*_nohash_*.wav"))
    assert len(wavs) == 8 * 5
    info = sf.info(str(wavs[0]))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)
    listed = {s: (base / f"{s}_list.txt").read_text().split() for s in ("validation", "testing")}
    assert len(listed["validation"]) == 2 * 5 and len(listed["testing"]) == 1 * 5
    for split, names in listed.items():
        assert all(which_set(n) == split for n in names)
    assert len(list((base / "_background_noise_").glob("*.wav"))) == 2
    # one speaker = one voice setting: all its words sound different (no empty synthesis)
    clips = [sf.read(str(p))[0] for p in sorted(base.glob(f"*/{wavs[0].name}"))]
    assert all(np.abs(c).max() > 0.2 for c in clips)


def test_split_rule_matches_the_official_lists(shared_data: Path) -> None:
    from datamodules.samples.speech_commands import which_set

    base = shared_data / "speech_commands" / "SpeechCommands" / "speech_commands_v0.02"
    for split in ("validation", "testing"):
        names = (base / f"{split}_list.txt").read_text().split()[:2000]
        assert all(which_set(n) == split for n in names)


def test_sample_is_byte_reproducible(tmp_path: Path) -> None:
    from datamodules.samples import speech_commands

    digests = []
    for run in ("a", "b"):
        files = speech_commands.build(tmp_path / run, speakers_count=2, words="one,cat", noise_files=1)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in files])
    assert digests[0] == digests[1]


def test_datamodule_skips_bad_files_with_a_count(speech_root: Path, tmp_path: Path) -> None:
    import shutil

    import soundfile as sf

    from datamodules.speech_commands import SpeechCommandsDataModule

    root = tmp_path / "copy"
    shutil.copytree(speech_root / "speech_commands", root)
    base = root / "SpeechCommands" / "speech_commands_v0.02"
    train_wavs = [p for p in sorted(base.glob("one/*.wav"))
                  if f"one/{p.name}" not in (base / "testing_list.txt").read_text()
                  and f"one/{p.name}" not in (base / "validation_list.txt").read_text()]
    sf.write(train_wavs[0], np.zeros(8000), 8000)  # wrong sample rate
    train_wavs[1].write_bytes(train_wavs[1].read_bytes()[:30])  # truncated header
    with open(base / "testing_list.txt", "a") as f:
        f.write("two/deadbeef_nohash_0.wav\n")  # listed but absent
    dm = SpeechCommandsDataModule(data_dir=str(root), known_words=KNOWN, outlier_words=OUTLIERS)
    dm.setup("fit")
    assert dm.skipped["testing: listed but absent"] == 1
    assert sum(v for k, v in dm.skipped.items() if k.startswith("training")) == 2
    assert len(dm.train_set) == 5 * 3 - 2
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (32, 64)  # 1 s at stride 512: 32 frames of 64 MFCCs
    assert y.max() < 3
    assert len(dm.outlier_set) == 2 and set(dm.outlier_set.tensors[1].tolist()) == {3, 4}
    assert dm.class_names[3] == "cat"
    with pytest.raises(FileNotFoundError, match="datamodules.samples speech_commands"):
        SpeechCommandsDataModule(data_dir=str(tmp_path / "none")).setup("fit")


def test_bilstm_layers() -> None:
    from lightning_modules.nets.rnn import BiLSTMClassifier

    net = BiLSTMClassifier(64, 25, hidden=32).eval()
    x = torch.randn(3, 32, 64)
    assert net(x).shape == (3, 25)
    assert net.lstm3(net.lstm2(net.lstm1(x))).shape == (3, 64)
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3, 0.3]
    # the final state of each direction: forward's last step, backward's first
    seq = net.lstm3.lstm(net.lstm2(net.lstm1(x)))[0]
    torch.testing.assert_close(net.lstm3(net.lstm2(net.lstm1(x))), torch.cat([seq[:, -1, :32], seq[:, 0, 32:]], -1))


def test_cli_fit_and_test_with_odin_per_word(speech_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(speech_root))
    cli = run_cli(["fit", "--config", CONFIG, *out_args(tmp_path), *QUIET, *DATA_ARGS, "--trainer.max_epochs=2",
                   "--trainer.callbacks.init_args.mc_samples=2"])
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
    for key in ("test/odin/net.lstm3/rss_r0.99/cat/f1", "test/odin/net.lstm3/rss_and_mahalanobis_r0.99/dog/precision",
                "test/odin/baseline/mc_dropout/cat/recall", "test/odin/net.lstm3/mahalanobis_r0.99/auroc"):
        assert key in metrics, key
