"""DDP (2 CPU processes) for the VAE: training matches one process; metric values equal a single-process evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from callbacks.disentanglement import evaluate_disentanglement
from datamodules.dsprites import DSpritesDataModule
from datamodules.samples import dsprites as gen
from lightning_modules.vae import VAE
from tests.helpers import CONFIGS, QUIET, out_args, run_cli_subprocess, scalars, version_dirs

METRICS = ("mig", "factor_vae", "irs")


@pytest.mark.ddp
@pytest.mark.slow
def test_vae_ddp_matches_single_process(tmp_path: Path) -> None:
    gen.build(tmp_path / "data", subsample=8)  # 1,296 training / 144 validation images
    override = tmp_path / "metrics.yaml"
    override.write_text(
        "trainer:\n  callbacks:\n    - class_path: DisentanglementMetrics\n      init_args:\n"
        "        every_n_epochs: 1\n        scale: 0.01\n        metrics: [mig, factor_vae, irs]\n"
    )
    env = {"PAPERZOO_DATA": str(tmp_path / "data")}
    common = ["fit", "--config", str(CONFIGS / "vae_dsprites.yaml"), "--config", str(override), *QUIET,
              "--model.init_args.arch=mlp", '--model.init_args.arch_kwargs={"hidden": [64]}',
              "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--seed_everything=0", "--data.val_fraction=0.1"]
    single = run_cli_subprocess([*common, *out_args(tmp_path / "single"), "--trainer.devices=1", "--data.batch_size=32"], env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli_subprocess([*common, *out_args(tmp_path / "ddp"), "--trainer.devices=2", "--trainer.strategy=ddp",
                              "--data.batch_size=16"], env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "MEMBER: 2/2" in ddp.stderr
    ckpt = torch.load(tmp_path / "ddp" / "metrics" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 41  # ceil(1296 / (2 x 16)): the same optimizer steps as one process
    logs = {name: scalars(version_dirs(tmp_path / name, "metrics")[-1]) for name in ("single", "ddp")}
    # training: same global batch and data; not bit-identical (per-rank noise for the reparameterisation)
    for key in ("val/recon", "val/loss"):
        a, b = logs["single"][key][-1][1], logs["ddp"][key][-1][1]
        assert abs(a - b) / abs(a) < 0.1, (key, a, b)
    # metrics: rank 0 computed, the value was broadcast; equal to one process scoring the same weights
    model = VAE(arch="mlp", arch_kwargs={"hidden": [64]}, latent_dim=10)
    model.load_state_dict(ckpt["state_dict"])
    dm = DSpritesDataModule(data_dir=str(tmp_path / "data" / "dsprites"), val_fraction=0.1)
    dm.setup()
    again, _ = evaluate_disentanglement(model, dm.factor_sampler, METRICS, scale=0.01, seed=0)
    for key in METRICS:
        assert logs["ddp"][f"val/disent/{key}"][-1][1] == pytest.approx(again[key], abs=1e-6), key
