"""Helpers shared by the tests: run the real CLI, read what it logged."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_DATA = Path(os.environ.get("PAPERZOO_SHARED_DATA", REPO.parent / "shared" / "data"))

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def out_args(tmp_path: Path) -> list[str]:
    """CLI arguments that keep every output of a run under ``tmp_path``."""
    return [f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}"]


def run_cli(args: list[str]):
    """Run the ``lightning`` CLI in-process; returns the LightningCLI object."""
    from lightning_modules.cli import cli

    return cli(args)


def run_cli_subprocess(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lightning_modules ARGS`` in a fresh process (DDP tests: pytest cannot relaunch itself)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lightning_modules", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the TensorBoard event files in ``log_dir``: tag -> [(step, value), ...]."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def event_tags(log_dir: str | Path) -> dict[str, list[str]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc.Tags()


def plugin_tags(log_dir: str | Path, plugin: str) -> set[str]:
    """Tags of the summaries written for a TensorBoard plugin (e.g. ``hparams``, ``images``)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags = set()
    for path in Path(log_dir).glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            tags |= {v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == plugin}
    return tags


def version_dirs(save_dir: Path, name: str) -> list[Path]:
    return sorted((save_dir / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
