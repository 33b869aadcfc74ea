"""Speech Commands v0.02 (``<word>/<speaker>_nohash_<n>.wav``, ``validation_list.txt``, ``testing_list.txt``).

torchaudio's ``SPEECHCOMMANDS`` gives the file lists and splits; WAVs are decoded with ``soundfile``
(``torchaudio.load`` needs torchcodec). Clips are 16 kHz, padded/cropped to 1 s, turned into MFCCs (or
log-mel spectrograms) with torchaudio's transforms and standardized per coefficient with training
statistics, all once in ``setup`` (the data sets are held in memory as ``(N, frames, coefficients)``).

Bad input never crashes a collate function: files named in a list but absent, unreadable files and
files not at 16 kHz are counted in :attr:`SpeechCommandsDataModule.skipped` and logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from datamodules.base import missing_data_error, resolve_data_dir

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
KNOWN_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "backward", "forward", "follow", "learn", "visual",
]
OUTLIER_WORDS = ["bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow"]
SUBDIR = Path("SpeechCommands") / "speech_commands_v0.02"


def speaker_of(path: str | os.PathLike) -> str:
    return re.sub(r"_nohash_.*$", "", os.path.basename(path))


def read_clip(path: str | os.PathLike) -> Tensor:
    """A 16 kHz mono clip as float32, padded with zeros or cropped to exactly 1 s.

    Raises ``ValueError`` for another sample rate or an empty file, ``RuntimeError`` (soundfile) when unreadable.
    """
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"{path}: {sr} Hz, expected {SAMPLE_RATE}")
    if audio.shape[0] == 0:
        raise ValueError(f"{path}: no samples")
    x = torch.from_numpy(audio.mean(axis=1))
    if len(x) < SAMPLE_RATE:
        x = torch.nn.functional.pad(x, (0, SAMPLE_RATE - len(x)))
    return x[:SAMPLE_RATE]


class SpeechCommandsDataModule(LightningDataModule):
    """Speech Commands for the ODIN protocol: known words are classes, outlier words a second test dataloader.

    Args:
        data_dir: folder holding ``SpeechCommands/speech_commands_v0.02/`` (default ``$PAPERZOO_DATA/speech_commands``).
        known_words: the classes, labelled ``0..len-1`` in this order (default: the 25 digits and commands).
        outlier_words: their test clips form the outlier dataloader, labelled ``len(known_words) + i``
            (so ``class_names`` names every group).
        features: ``mfcc`` (``n_mfcc`` coefficients) or ``melspec`` (``n_mels`` log-mel bands).
        n_mfcc, n_fft, hop_length, n_mels: the transforms' settings (paper: 64 MFCCs, frame 2048, stride 512).
        test_data_dir: take the test and outlier clips from this copy's ``testing_list.txt`` instead, e.g.
            the real clips in ``../shared/data/speech_commands`` for a model trained on the eSpeak sample.
        test_speaker_half: with ``test_data_dir``: the test copy's speakers are split in two halves by a hash
            of the speaker id; the first half's clips (known words) join the training set, the second
            half is the test set (grouped by speaker: nobody is in both).
        batch_size, num_workers: DataLoader settings.
    """

    folder = "speech_commands"

    def __init__(
        self,
        data_dir: str | None = None,
        known_words: list[str] | None = None,
        outlier_words: list[str] | None = None,
        features: Literal["mfcc", "melspec"] = "mfcc",
        n_mfcc: int = 64,
        n_fft: int = 2048,
        hop_length: int = 512,
        n_mels: int = 128,
        test_data_dir: str | None = None,
        test_speaker_half: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = resolve_data_dir(data_dir, self.folder)
        self.known_words = list(known_words if known_words is not None else KNOWN_WORDS)
        self.outlier_words = list(outlier_words if outlier_words is not None else OUTLIER_WORDS)
        if set(self.known_words) & set(self.outlier_words):
            raise ValueError("known_words and outlier_words overlap")
        if test_speaker_half and not test_data_dir:
            raise ValueError("test_speaker_half needs test_data_dir")
        self.class_names = tuple(self.known_words + self.outlier_words)
        self.skipped: Counter[str] = Counter()
        self.train_set = self.val_set = self.test_set = self.outlier_set = None
        self._stats: tuple[Tensor, Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.known_words)

    @property
    def num_features(self) -> int:
        return self.hparams.n_mfcc if self.hparams.features == "mfcc" else self.hparams.n_mels

    # ------------------------------------------------------------ file lists
    def _lists(self, root: Path, subset: str) -> list[str]:
        from torchaudio.datasets import SPEECHCOMMANDS

        if not (root / SUBDIR).is_dir():
            raise missing_data_error(
                "Speech Commands v0.02", root, "speech_commands",
                "download speech_commands_v0.02.tar.gz and extract it into "
                f"{root / SUBDIR} (or torchaudio.datasets.SPEECHCOMMANDS(root, download=True))",
            )
        walker = SPEECHCOMMANDS(str(root), subset=subset)._walker
        present = [w for w in walker if os.path.isfile(w)]
        missing = len(walker) - len(present)
        if missing:
            self.skipped[f"{subset}: listed but absent"] += missing
            log.warning("Speech Commands %s (%s): %d files in the list are absent (partial copy): skipped",
                        subset, root, missing)
        return present

    def _load(self, paths: list[str], words: list[str], offset: int, what: str) -> tuple[Tensor, Tensor, list[str]]:
        index = {w: i + offset for i, w in enumerate(words)}
        clips, labels, kept = [], [], []
        for p in paths:
            word = os.path.basename(os.path.dirname(p))
            if word not in index:
                continue
            try:
                clips.append(read_clip(p))
            except (ValueError, RuntimeError) as err:  # soundfile's LibsndfileError is a RuntimeError
                self.skipped[f"{what}: {type(err).__name__}"] += 1
                log.warning("skipped %s: %s", p, err)
                continue
            labels.append(index[word])
            kept.append(p)
        if not clips:
            return torch.zeros(0, SAMPLE_RATE), torch.zeros(0, dtype=torch.long), kept
        return torch.stack(clips), torch.tensor(labels), kept

    def _features(self, waves: Tensor) -> Tensor:
        import torchaudio.transforms as T

        hp = self.hparams
        if hp.features == "mfcc":
            tf = T.MFCC(SAMPLE_RATE, n_mfcc=hp.n_mfcc,
                        melkwargs={"n_fft": hp.n_fft, "hop_length": hp.hop_length, "n_mels": hp.n_mels})
            feats = tf(waves)
        else:
            tf = T.MelSpectrogram(SAMPLE_RATE, n_fft=hp.n_fft, hop_length=hp.hop_length, n_mels=hp.n_mels)
            feats = torch.log(tf(waves) + 1e-6)
        return feats.transpose(1, 2).contiguous()  # (N, frames, coefficients)

    def _standardize(self, feats: Tensor) -> Tensor:
        mean, std = self._stats
        return (feats - mean) / std

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        known = self.known_words
        train_paths = self._lists(self.data_dir, "training")
        val_paths = self._lists(self.data_dir, "validation")
        test_root = Path(self.hparams.test_data_dir) if self.hparams.test_data_dir else self.data_dir
        test_paths = self._lists(test_root, "testing")
        if self.hparams.test_speaker_half:
            def first_half(p: str) -> bool:
                return int(hashlib.sha1(speaker_of(p).encode()).hexdigest(), 16) % 2 == 0

            train_paths = train_paths + [p for p in test_paths if first_half(p)]
            test_paths = [p for p in test_paths if not first_half(p)]
        xw, y, _ = self._load(train_paths, known, 0, "training")
        if len(y) == 0:
            raise RuntimeError(f"no training clips of the known words under {self.data_dir}")
        xf = self._features(xw)
        self._stats = (xf.mean(dim=(0, 1)), xf.std(dim=(0, 1)).clamp_min(1e-5))
        self.train_set = TensorDataset(self._standardize(xf), y)
        for name, paths, words, offset in (("val", val_paths, known, 0), ("test", test_paths, known, 0),
                                           ("outlier", test_paths, self.outlier_words, len(known))):
            w, labels, _ = self._load(paths, words, offset, name)
            feats = self._standardize(self._features(w)) if len(labels) else torch.zeros(0, 1, self.num_features)
            setattr(self, f"{name}_set", TensorDataset(feats, labels))
        log.info("Speech Commands: %d train / %d val / %d test / %d outlier clips; skipped %s",
                 len(self.train_set), len(self.val_set), len(self.test_set), len(self.outlier_set), dict(self.skipped))

    def _loader(self, dataset: TensorDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("setup() has not prepared this split")
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle,
                          num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        """``[known-word test clips, outlier-word test clips]``."""
        return [self._loader(self.test_set, shuffle=False), self._loader(self.outlier_set, shuffle=False)]

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


__all__ = ["KNOWN_WORDS", "OUTLIER_WORDS", "SpeechCommandsDataModule", "read_clip", "speaker_of"]
