"""Speech Commands sample: all 35 words of v0.02 synthesized offline with eSpeak NG, in the real layout.

SYNTHETIC SPEECH, not the real data set. Written under ``<root>/speech_commands/SpeechCommands/
speech_commands_v0.02/``: ``<word>/<speaker>_nohash_0.wav`` (16 kHz mono 16-bit PCM, at most 1 s),
``validation_list.txt`` and ``testing_list.txt`` from the data set's own hashing rule on the speaker id
(10% / 10%), and ``_background_noise_/`` with a few noise files. A "speaker" is one eSpeak voice x
variant x pitch x rate; its id is 8 hex digits of a SHA-1 of that description, like the real ids.

eSpeak NG (the ``espeakng-loader`` wheel bundles library and voices) is not deterministic across calls
within one process, so every clip is synthesized in its own freshly forked process (the library is
never initialised in the parent): the sample is byte-reproducible. ``python datamodules/samples/
speech_commands.py --synth WORD VOICE PITCH RATE GAIN SEED OUT.wav`` synthesizes one clip by hand.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

NAME = "speech_commands"
FOLDER = "speech_commands"
SUBDIR = Path("SpeechCommands") / "speech_commands_v0.02"
SAMPLE_RATE = 16_000

KNOWN_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
    "backward", "forward", "follow", "learn", "visual",
)
OUTLIER_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
WORDS = KNOWN_WORDS + OUTLIER_WORDS

VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "croak", "")
PITCHES = (25, 40, 55, 70, 85)
RATES = (120, 150, 180, 210)

MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # the data set's README


def which_set(filename: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """The data set's own split rule: a stable hash of the speaker id (the part before ``_nohash_``)."""
    hash_name = re.sub(r"_nohash_.*$", "", os.path.basename(filename))
    hashed = hashlib.sha1(hash_name.encode()).hexdigest()
    percentage = (int(hashed, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < testing_percentage + validation_percentage:
        return "testing"
    return "training"


def speakers(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct speakers (voice, variant, pitch, rate), a seeded choice among all combinations."""
    combos = list(itertools.product(VOICES, VARIANTS, PITCHES, RATES))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(combos), size=min(n, len(combos)), replace=False)
    out = []
    for i in picks:
        voice, variant, pitch, rate = combos[int(i)]
        desc = f"{voice}+{variant}:{pitch}:{rate}" if variant else f"{voice}:{pitch}:{rate}"
        out.append({"voice": voice + (f"+{variant}" if variant else ""), "pitch": pitch, "rate": rate,
                    "id": hashlib.sha1(desc.encode()).hexdigest()[:8]})
    return out


# ---------------------------------------------------------------- the per-clip worker (no torch import)
def _synthesize(text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, int]:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    sample_rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)  # SYNCHRONOUS
    if sample_rate <= 0:
        raise RuntimeError("espeak_Initialize failed")
    chunks: list[np.ndarray] = []
    callback_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def collect(wav, n, events):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    cb = callback_t(collect)
    lib.espeak_SetSynthCallback(cb)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"eSpeak voice {voice!r} not found")
    lib.espeak_SetParameter(1, rate, 0)  # espeakRATE
    lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
    data = text.encode()
    lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
    lib.espeak_Synchronize()
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), sample_rate


def _worker(argv: list[str]) -> None:
    from scipy.signal import resample_poly
    import soundfile as sf

    text, voice, pitch, rate, gain, noise_seed, out = argv
    audio, sr = _synthesize(text, voice, int(pitch), int(rate))
    x = audio.astype(np.float64) / 32768.0
    nz = np.flatnonzero(np.abs(x) > 1e-3)  # trim leading/trailing silence
    if len(nz):
        x = x[nz[0] : nz[-1] + 1]
    x = resample_poly(x, 320, 441) if sr == 22_050 else resample_poly(x, SAMPLE_RATE, sr)
    x = x[:SAMPLE_RATE]
    rng = np.random.default_rng(int(noise_seed))
    x = x / max(np.abs(x).max(), 1e-6) * float(gain)
    pad = SAMPLE_RATE - len(x)
    left = int(rng.integers(0, pad + 1)) if pad > 0 else 0  # where the word sits in the second
    x = np.concatenate([np.zeros(left), x, np.zeros(max(pad - left, 0))])
    x = x + rng.normal(0.0, 0.003, size=len(x))  # a little room noise
    sf.write(out, np.clip(x, -1, 1), SAMPLE_RATE, subtype="PCM_16")


def _run_jobs(jobs: list[list[str]], parallel: int) -> None:
    """Each clip in a fresh forked process (``maxtasksperchild=1``): eSpeak starts from the same state."""
    import multiprocessing

    import scipy.signal  # noqa: F401  (imported once, before forking)
    import soundfile  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, parallel), maxtasksperchild=1) as pool:
        pool.map(_worker, jobs, chunksize=1)


def build(root: Path, seed: int = 0, speakers_count: int = 12, words: str = "all", parallel: int = 2,
          noise_files: int = 2) -> list[Path]:
    """Write the sample; ``speakers_count`` speakers say every word once (35 x speakers clips)."""
    base = Path(root) / FOLDER / SUBDIR
    chosen = list(WORDS) if words == "all" else [w for w in words.split(",") if w]
    bad = set(chosen) - set(WORDS)
    if bad:
        raise ValueError(f"not Speech Commands words: {sorted(bad)}")
    people = speakers(speakers_count, seed)
    jobs, written = [], []
    for s in people:
        for w in chosen:
            path = base / w / f"{s['id']}_nohash_0.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            h = int(hashlib.sha1(f"{seed}:{s['id']}:{w}".encode()).hexdigest()[:8], 16)
            gain = 0.3 + 0.6 * (h % 1000) / 1000
            jobs.append([w, s["voice"], str(s["pitch"]), str(s["rate"]), f"{gain:.3f}", str(h), str(path)])
            written.append(path)
    _run_jobs(jobs, parallel)
    lists = {"validation": [], "testing": []}
    for path in written:
        split = which_set(path.name)
        if split in lists:
            lists[split].append(f"{path.parent.name}/{path.name}")
    for split, names in lists.items():
        p = base / f"{split}_list.txt"
        p.write_text("".join(f"{n}\n" for n in sorted(names)))
        written.append(p)
    import soundfile as sf

    noise_dir = base / "_background_noise_"
    noise_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(noise_files):
        white = rng.normal(0, 0.1, SAMPLE_RATE * 5)
        noise = white if i % 2 == 0 else np.cumsum(white) / 50  # white, then brown-ish
        noise = noise / max(np.abs(noise).max(), 1e-6) * 0.3
        path = noise_dir / ("white_noise.wav" if i % 2 == 0 else f"brown_noise_{i}.wav")
        sf.write(path, noise, SAMPLE_RATE, subtype="PCM_16")
        written.append(path)
    return written


def add_arguments(parser) -> None:
    parser.add_argument("--speakers", dest="speakers_count", type=int, default=12,
                        help="speakers (voice x variant x pitch x rate) saying every word (default 12)")
    parser.add_argument("--words", default="all", help="comma-separated words (default: all 35)")
    parser.add_argument("--parallel", type=int, default=2, help="synthesis subprocesses at once")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--synth":
    _worker(sys.argv[2:])
