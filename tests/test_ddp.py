"""DDP on CPU (gloo), resume from a checkpoint, and two simulated nodes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import CONFIGS, QUIET, REPO, free_port, out_args, run_cli, run_cli_subprocess, scalars, version_dirs

CLASSIFIER = str(CONFIGS / "classifier_mnist.yaml")
# one epoch on the 3,600 training digits, 400 validation digits (divisible by 2: no DistributedSampler padding)
TRAIN = ["--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--seed_everything=0"]


def _final(save_dir: Path, name: str, tag: str) -> float:
    (log_dir,) = version_dirs(save_dir, name)
    return scalars(log_dir)[tag][-1][1]


@pytest.mark.ddp
def test_ddp_matches_single_process(sample_root: Path, tmp_path: Path) -> None:
    env = {"PAPERZOO_DATA": str(sample_root)}
    single = run_cli_subprocess(
        ["fit", "--config", CLASSIFIER, *TRAIN, *QUIET, *out_args(tmp_path / "single"),
         "--trainer.devices=1", "--data.batch_size=64"], env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli_subprocess(
        ["fit", "--config", CLASSIFIER, *TRAIN, *QUIET, *out_args(tmp_path / "ddp"),
         "--trainer.devices=2", "--trainer.strategy=ddp", "--data.batch_size=32"], env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "MEMBER: 2/2" in ddp.stderr  # two processes really ran
    ckpt = torch.load(tmp_path / "ddp" / "classifier_mnist" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 57  # ceil(3600 / (2 * 32)): same number of optimizer steps as one process
    acc_single = _final(tmp_path / "single", "classifier_mnist", "val/acc")
    acc_ddp = _final(tmp_path / "ddp", "classifier_mnist", "val/acc")
    assert acc_single > 0.85 and acc_ddp > 0.85
    # same global batch, same data; not bit-identical (sampler order, gradient all-reduce order): see README
    assert abs(acc_single - acc_ddp) < 0.03
    loss_single = _final(tmp_path / "single", "classifier_mnist", "val/loss")
    loss_ddp = _final(tmp_path / "ddp", "classifier_mnist", "val/loss")
    assert abs(loss_single - loss_ddp) < 0.1


def test_resume_continues_from_saved_global_step(sample_data: Path, tmp_path: Path) -> None:
    common = ["fit", "--config", CLASSIFIER, *out_args(tmp_path), *QUIET, "--trainer.limit_train_batches=6",
              "--trainer.limit_val_batches=2", "--trainer.log_every_n_steps=1"]
    run_cli([*common, "--trainer.max_epochs=1"])
    last = tmp_path / "classifier_mnist" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["global_step"] == 6
    cli = run_cli([*common, "--trainer.max_epochs=2", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 12
    second_run = version_dirs(tmp_path, "classifier_mnist")[-1]
    steps = [step for step, _ in scalars(second_run)["train/loss"]]
    assert steps == list(range(6, 12))  # continued from step 6, no step repeated
    # optimizer state came back too: Adam's step counter continued
    state = torch.load(last, weights_only=False)["optimizer_states"][0]["state"]
    assert int(next(iter(state.values()))["step"]) == 12


@pytest.mark.ddp
def test_two_nodes_on_loopback(sample_root: Path, tmp_path: Path) -> None:
    port = str(free_port())
    args = ["-m", "lightning_modules", "fit", "--config", CLASSIFIER, *TRAIN, *QUIET, *out_args(tmp_path),
            "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp",
            "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2"]
    procs = []
    for node_rank in (0, 1):
        env = {**os.environ, "PAPERZOO_DATA": str(sample_root), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "NODE_RANK": str(node_rank), "PYTHONWARNINGS": "ignore"}
        procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0][1]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1][1]
    ckpt = torch.load(tmp_path / "classifier_mnist" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5
