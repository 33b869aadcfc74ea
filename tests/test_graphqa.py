"""GraphQA: network, ablation switches, grouped metrics, CLI fit/test, DDP test equality, training targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch_geometric.data import Batch, Data

from datamodules.samples import casp as casp_sample
from lightning_modules.nets.graph import GraphQANet, shrinking_widths
from metrics.ranking import GroupedQAMetrics, group_scores
from tests.helpers import CONFIGS, QUIET, out_args, run_cli, run_cli_subprocess, scalars, version_dirs

CONFIG = str(CONFIGS / "graphqa_casp.yaml")
TINY_MODEL = ["--model.layers=2", "--model.enc_widths=[16,32,32]", "--model.out_widths=[8,16,16]"]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("graphqa_data")
    casp_sample.build(root, seed=0, targets=6, decoys=4, max_length=130)
    return root


def _graph(n: int = 12, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    src = torch.arange(n - 1)
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
    e = edge_index.size(1)
    return Data(aa=torch.randint(0, 22, (n,), generator=g), dssp=torch.rand(n, 14, generator=g),
                present=torch.ones(n, dtype=torch.bool), edge_index=edge_index,
                edge_dist=torch.rand(e, generator=g) * 10, edge_sep=torch.zeros(e, dtype=torch.long), num_nodes=n)


def test_widths_shrink_to_powers_of_two() -> None:
    assert shrinking_widths(512, 64, 6) == [512, 512, 256, 256, 128, 64]
    net = GraphQANet(layers=6)
    dims = [(layer.edge.parts[0].out_features, layer.node.parts[0].out_features, layer.glob[0].out_features)
            for layer in net.layers]
    assert dims[-1] == (16, 64, 32) and dims[0][1] >= dims[-1][1]
    assert all(a >= b for x, y in zip(dims, dims[1:]) for a, b in zip(x, y))


def test_forward_shapes_ranges_and_switches() -> None:
    batch = Batch.from_data_list([_graph(12, 0), _graph(7, 1)])
    for kwargs in ({}, {"use_global": False}, {"edge_features": False}, {"raw": True}):
        net = GraphQANet(layers=3, enc_widths=(16, 32, 32), out_widths=(8, 16, 16), **kwargs).eval()
        local, glob = net(batch)
        assert local.shape == (19,) and glob.shape == (2,)
        assert ((local > 0) & (local < 1)).all() and ((glob > 0) & (glob < 1)).all()
    raw = GraphQANet(layers=2, enc_widths=(16, 32, 32), out_widths=(8, 16, 16), raw=True).eval()
    other = batch.clone()
    other.dssp = torch.rand_like(other.dssp)
    assert torch.equal(raw(batch)[1], raw(other)[1])  # GraphQA_RAW reads residue identity only
    full = GraphQANet(layers=2, enc_widths=(16, 32, 32), out_widths=(8, 16, 16)).eval()
    assert not torch.equal(full(batch)[1], full(other)[1])
    no_edges = GraphQANet(layers=2, enc_widths=(16, 32, 32), out_widths=(8, 16, 16), edge_features=False).eval()
    other = batch.clone()
    other.edge_dist = other.edge_dist + 3.0
    assert torch.equal(no_edges(batch)[1], no_edges(other)[1])
    # data and model built for different feature widths: a clear error, not a shape error deep in torch
    with pytest.raises(ValueError, match="num_dssp=8"):
        GraphQANet(num_dssp=8, layers=2, enc_widths=(16, 32, 32), out_widths=(8, 16, 16))(batch)
    with pytest.raises(ValueError, match="num_msa=44"):
        GraphQANet(num_msa=44, layers=2, enc_widths=(16, 32, 32), out_widths=(8, 16, 16))(batch)


def test_grouped_metrics_match_scipy_and_dedupe() -> None:
    rng = np.random.default_rng(0)
    true = rng.random(40)
    pred = true + rng.normal(scale=0.2, size=40)
    group = np.repeat([0, 1, 2, 3], 10)
    m = GroupedQAMetrics("target", k=3)
    t = lambda a: torch.tensor(a)  # noqa: E731
    m.update(t(pred[:25]), t(true[:25]), t(group[:25]), t(np.arange(25)))
    m.update(t(pred[20:]), t(true[20:]), t(group[20:]), t(np.arange(20, 40)))  # 20..24 twice (DDP padding)
    out = m.compute()
    assert float(out["rmse"]) == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-5)
    assert float(out["r"]) == pytest.approx(stats.pearsonr(pred, true)[0], rel=1e-5)
    assert float(out["kendall"]) == pytest.approx(stats.kendalltau(pred, true)[0], rel=1e-5)
    per = [stats.pearsonr(pred[group == g], true[group == g])[0] for g in range(4)]
    assert float(out["r_target"]) == pytest.approx(np.mean(per), rel=1e-5)
    s = group_scores(np.array([0.9, 0.1, 0.5]), np.array([0.2, 0.8, 0.5]), k=1)
    assert s["first_rank_loss"] == pytest.approx(0.6) and s["recall@1"] == 0.0
    assert group_scores(np.array([0.1, 0.9]), np.array([0.3, 0.7]), k=2)["ndcg@2"] == pytest.approx(1.0)


def test_cli_fit_and_test_log_the_metric_table(sample_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(sample_root))
    common = ["--config", CONFIG, *TINY_MODEL, *QUIET, *out_args(tmp_path), "--data.batch_size=4",
              "--data.test_fraction=0.34", "--data.val_fraction=0.25", "--trainer.log_every_n_steps=1"]
    run_cli(["fit", *common, "--trainer.max_epochs=2"])
    cli = run_cli(["test", *common, "--ckpt_path", str(tmp_path / "graphqa_casp" / "checkpoints" / "last.ckpt")])
    logged = cli.trainer.callback_metrics
    for key in ("test/global/gdtts/r_target", "test/global/gdtts/rmse", "test/global/gdtts/first_rank_loss",
                "test/global/gdtts/ndcg@5", "test/local/lddt/r_model", "test/local/lddt/rmse"):
        assert key in logged and torch.isfinite(logged[key])
    assert 0.0 <= float(logged["test/global/gdtts/rmse"]) < 1.0
    fit_dir = version_dirs(tmp_path, "graphqa_casp")[0]
    assert "val/global/gdtts/r_target" in scalars(fit_dir)
    test_dir = version_dirs(tmp_path, "graphqa_casp")[-1]
    from tests.helpers import event_tags

    assert any("funnel" in tag for tag in event_tags(test_dir).get("images", []))


@pytest.mark.ddp
def test_ddp_test_metrics_equal_single_process(sample_root: Path, tmp_path: Path) -> None:
    env = {"PAPERZOO_DATA": str(sample_root)}
    common = ["--config", CONFIG, *TINY_MODEL, *QUIET, "--data.batch_size=3", "--data.test_fraction=0.5",
              "--trainer.accelerator=cpu"]
    fit = run_cli_subprocess(["fit", *common, *out_args(tmp_path / "fit"), "--trainer.max_epochs=1"], env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(tmp_path / "fit" / "graphqa_casp" / "checkpoints" / "last.ckpt")
    results = {}
    for name, extra in (("single", ["--trainer.devices=1"]),
                        ("ddp", ["--trainer.devices=2", "--trainer.strategy=ddp"])):
        run = run_cli_subprocess(["test", *common, *out_args(tmp_path / name), "--ckpt_path", ckpt, *extra], env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        (log_dir,) = version_dirs(tmp_path / name, "graphqa_casp")
        results[name] = {k: v[-1][1] for k, v in scalars(log_dir).items() if k.startswith("test/")}
    assert "test/global/gdtts/r_target" in results["single"]
    # 12 test decoys over 2 ranks with batches of 3: padding and split differ, the metrics do not
    for key, value in results["single"].items():
        if "/gdtts/" in key or "/lddt/" in key:
            assert results["ddp"][key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.slow
def test_sample_training_reaches_targets(tmp_path: Path, monkeypatch) -> None:
    """The issue's must-show, as one command: build the default sample (24 targets x 64 decoys), then
    ``lightning fit`` and ``lightning test --ckpt_path last`` with configs/graphqa_casp.yaml unchanged; on the
    6 held-out targets R_target (GDT_TS) >= 0.7 and R_model (LDDT) >= 0.5, the issue's thresholds.

    ``pytest tests/test_graphqa.py -m slow -s`` prints the metric table (about 8 minutes on 2 CPU cores).
    """
    import importlib.util

    if importlib.util.find_spec("MDAnalysisTests") is None:  # only its data files are read (installed --no-deps)
        pytest.skip("the default sample's 24 natives need MDAnalysisTests' chains "
                    "(pip install --no-deps MDAnalysisTests; `make setup` does it)")
    root = tmp_path / "data"
    casp_sample.build(root, seed=0)
    assert len([p for p in (root / "casp" / "SAMPLE").iterdir() if p.is_dir()]) == 24
    monkeypatch.setenv("PAPERZOO_DATA", str(root))
    common = ["--config", CONFIG, *QUIET, *out_args(tmp_path)]
    run_cli(["fit", *common])
    cli = run_cli(["test", *common, "--ckpt_path", str(tmp_path / "graphqa_casp" / "checkpoints" / "last.ckpt")])
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert len(cli.datamodule.splits["test"]) == 6 and len(cli.datamodule.test_set) == 6 * 64
    print("\nGraphQA on the sample's 6 held-out targets (test/...):")
    for key in sorted(logged):
        print(f"  {key:40s} {logged[key]:.4f}")
    assert logged["test/global/gdtts/r_target"] >= 0.7
    assert logged["test/local/lddt/r_model"] >= 0.5
