"""DDP (2 CPU processes) for both Guided-VAEs: the same optimizer steps and validation losses as one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CONFIGS, QUIET, out_args, run_cli_subprocess, scalars, version_dirs


def _fit_single_and_ddp(tmp_path: Path, config: str, args: list[str], strategy: str, batch: int, env: dict) -> dict:
    """Fit ``config`` with one process (batch ``batch``) and with two (``batch // 2`` each: the same global batch)."""
    common = ["fit", "--config", str(CONFIGS / config), *QUIET, "--trainer.accelerator=cpu", "--seed_everything=0",
              "--trainer.max_epochs=1", *args]
    single = run_cli_subprocess([*common, *out_args(tmp_path / "single"), "--trainer.devices=1",
                                 f"--data.batch_size={batch}"], env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli_subprocess([*common, *out_args(tmp_path / "ddp"), "--trainer.devices=2", f"--trainer.strategy={strategy}",
                              f"--data.batch_size={batch // 2}"], env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "MEMBER: 2/2" in ddp.stderr
    name = Path(config).stem
    out = {}
    for run in ("single", "ddp"):
        ckpt = torch.load(tmp_path / run / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        out[run] = {"step": ckpt["global_step"], **{k: v[-1][1] for k, v in scalars(version_dirs(tmp_path / run, name)[-1]).items()}}
    return out


@pytest.mark.ddp
def test_unsupervised_guided_vae_ddp_matches_one_process(sample_data: Path, tmp_path: Path) -> None:
    runs = _fit_single_and_ddp(
        tmp_path, "guided_vae_mnist.yaml",
        ['--model.arch_kwargs={"hidden": [64]}', "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=4"],
        "ddp", 64, {"PAPERZOO_DATA": str(sample_data)},
    )
    single, ddp = runs["single"], runs["ddp"]
    assert single["step"] == ddp["step"] == 6
    # same global batches of the same data; not bit-identical (each rank draws its own reparameterisation noise)
    for key in ("val/recon", "val/guide", "val/loss"):
        assert abs(ddp[key] - single[key]) / abs(single[key]) < 0.1, (key, single[key], ddp[key])


@pytest.mark.ddp
def test_supervised_guided_vae_ddp_matches_one_process(tmp_path: Path) -> None:
    from datamodules.samples import celeba

    celeba.build(tmp_path / "data", num_images=60)
    runs = _fit_single_and_ddp(
        tmp_path, "guided_vae_celeba.yaml",
        ["--data.image_size=32", "--model.image_size=32", "--model.arch=conv", "--trainer.limit_train_batches=3",
         "--trainer.limit_val_batches=2"],
        # each optimizer's backward leaves the other's parameters without gradients
        "ddp_find_unused_parameters_true", 8, {"PAPERZOO_DATA": str(tmp_path / "data")},
    )
    single, ddp = runs["single"], runs["ddp"]
    assert single["step"] == ddp["step"] == 3 * (5 + 1)  # manual optimisation: 5 adversary updates and 1 VAE update per batch
    for key in ("val/recon", "val/loss"):
        assert abs(ddp[key] - single[key]) / abs(single[key]) < 0.1, (key, single[key], ddp[key])
    assert {"val/excitation_err", "val/adversary_err"} <= set(ddp)
