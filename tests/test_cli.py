"""The ``lightning`` console script: subcommands, configs, defaults, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import CONFIGS, QUIET, REPO, out_args, plugin_tags, run_cli, scalars, version_dirs

CLASSIFIER = str(CONFIGS / "classifier_mnist.yaml")


def test_console_script_lists_subcommands() -> None:
    exe = shutil.which("lightning", path=str(Path(sys.executable).parent))
    assert exe, "the `lightning` console script is not installed next to this Python"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out
    out = subprocess.run(
        [sys.executable, "-m", "lightning_modules", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert "fit" in out and "predict" in out


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_config_parses(config: Path, capsys) -> None:
    """Every shipped config names real classes and keys (parsed, not run)."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_fit_writes_namespaced_tensorboard_scalars_hparams_and_last_ckpt(sample_data: Path, tmp_path: Path) -> None:
    run_cli(
        ["fit", "--config", CLASSIFIER, *out_args(tmp_path), *QUIET, "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2", "--trainer.log_every_n_steps=1"]
    )
    (log_dir,) = version_dirs(tmp_path, "classifier_mnist")
    tags = scalars(log_dir)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(tags)
    assert all("/" in tag for tag in tags if tag != "epoch")
    assert [step for step, _ in tags["train/loss"]] == [0, 1, 2, 3, 4]
    assert "hp_metric" not in tags  # default_hp_metric=False
    # the hparams summary (written once, naming the metric keys) is in the event file
    assert plugin_tags(log_dir, "hparams") == {
        "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert (log_dir / "config.yaml").is_file()
    ckpt = tmp_path / "classifier_mnist" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 5
    assert state["hyper_parameters"]["num_classes"] == 10


def test_validate_test_predict_from_checkpoint(sample_data: Path, tmp_path: Path) -> None:
    common = ["--config", CLASSIFIER, *out_args(tmp_path), *QUIET]
    run_cli(["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=20", "--trainer.limit_val_batches=2"])
    ckpt = str(tmp_path / "classifier_mnist" / "checkpoints" / "last.ckpt")
    cli = run_cli(["test", *common, "--ckpt_path", ckpt])
    assert cli.trainer.callback_metrics["test/acc"] > 0.5  # 20 steps on real digits already beat chance by far
    run_cli(["validate", *common, "--ckpt_path", ckpt, "--trainer.limit_val_batches=2"])
    cli = run_cli(["predict", *common, "--ckpt_path", ckpt, "--trainer.limit_predict_batches=2"])
    preds = cli.trainer.predict_loop.predictions
    assert len(preds) == 2 and preds[0]["probs"].shape == (64, 10)
    assert torch.allclose(preds[0]["probs"].sum(-1), torch.ones(64), atol=1e-5)


def test_fast_dev_run(sample_data: Path, tmp_path: Path) -> None:
    cli = run_cli(["fit", "--config", CLASSIFIER, *out_args(tmp_path), *QUIET, "--trainer.fast_dev_run=1"])
    assert cli.trainer.global_step == 1


def test_wrong_key_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(CLASSIFIER).read_text().replace("hidden: 128", "hiden: 128"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", str(bad)])
    assert exit_.value.code == 2
    assert "hiden" in capsys.readouterr().err


def test_unknown_class_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(CLASSIFIER).read_text().replace("class_path: MNISTDataModule", "class_path: MNISTDataModul"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "--config", str(bad)])
    assert exit_.value.code == 2
    assert "MNISTDataModul" in capsys.readouterr().err


def test_missing_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    from datamodules import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="datamodules.samples mnist"):
        run_cli(["fit", "--config", CLASSIFIER, *out_args(tmp_path), *QUIET,
                 f"--data.data_dir={tmp_path / 'none'}", "--trainer.fast_dev_run=1"])
