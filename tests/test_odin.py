"""ODIN: PCA/RSS/Mahalanobis against direct numpy, the callback through the CLI, checkpoint and DDP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from metrics.outliers import (
    CovarianceAccumulator,
    OutlierScores,
    fit_pca,
    fpr_at_tpr,
    mahalanobis,
    pca_rank,
    pca_scores,
    precision_recall_f1,
    rss,
    score_precision,
    summarize,
)
from tests.helpers import CONFIGS, QUIET, out_args, run_cli, run_cli_subprocess, scalars, version_dirs

CONFIG = str(CONFIGS / "odin_mnist.yaml")
# small and deterministic: no MC-dropout (random), features of modest size so the PCA is float64
SMALL = [
    "--trainer.callbacks.init_args.layers=[net.block2, net.fc]",
    "--trainer.callbacks.init_args.pooling=avg",
    "--trainer.callbacks.init_args.levels=[0.8, 0.99]",
    "--trainer.callbacks.init_args.baselines=[msp, energy, odin_liang]",
    "--trainer.callbacks.init_args.lof_max_train=300",
    "--trainer.callbacks.init_args.fit_samples=600",
]


def _data(n: int = 300, m: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(m, m, generator=g) * torch.linspace(3, 0.1, m)
    return torch.randn(n, m, generator=g, dtype=torch.float64).float() @ mix + 5.0


def test_pca_rank_is_smallest_k_reaching_the_level() -> None:
    ratio = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert [pca_rank(ratio, v) for v in (0.4, 0.5, 0.8, 0.81, 0.95, 0.99, 1.0)] == [1, 1, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError, match="level"):
        pca_rank(ratio, 0.0)
    pca = fit_pca(_data())
    cum = torch.cumsum(pca.explained_variance_ratio.double(), 0)
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        k = pca.rank(level)
        assert cum[k - 1] >= level - 1e-6 and (k == 1 or cum[k - 2] < level)


def test_pca_rss_mahalanobis_match_numpy() -> None:
    x = _data()
    pca = fit_pca(x)
    a = x.double().numpy()
    mean = a.mean(0)
    _, s, vt = np.linalg.svd(a - mean, full_matrices=False)
    np.testing.assert_allclose(pca.mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(pca.variances.numpy(), s**2 / (len(a) - 1), rtol=1e-4)
    new = _data(50, seed=1).double().numpy() * 1.3
    for k in (1, 4, 9):
        p = vt[:k].T
        # the subspace is the same (loadings are unique up to sign)
        np.testing.assert_allclose(pca.components[:, :k].double().numpy() @ pca.components[:, :k].double().numpy().T,
                                   p @ p.T, atol=1e-5)
        resid = (new - mean) - (new - mean) @ p @ p.T
        expected_rss = (resid**2).sum(1)
        got = rss(torch.from_numpy(new).float(), pca.mean, pca.components[:, :k])
        np.testing.assert_allclose(got.numpy(), expected_rss, rtol=1e-3, atol=1e-3)
        t_train = (a - mean) @ p
        cinv = np.linalg.inv(np.atleast_2d(np.cov(t_train.T)))
        t_new = (new - mean) @ p
        expected_md = np.sqrt(np.einsum("ni,ij,nj->n", t_new, cinv, t_new))
        t_train_ours = pca_scores(x, pca.mean, pca.components[:, :k])
        got_md = mahalanobis(pca_scores(torch.from_numpy(new).float(), pca.mean, pca.components[:, :k]),
                             score_precision(t_train_ours))
        np.testing.assert_allclose(got_md.numpy(), expected_md, rtol=1e-3)


def test_streamed_moments_equal_in_memory_pca() -> None:
    x = _data(257)
    acc = CovarianceAccumulator(x.shape[1])
    for chunk in x.split(50):
        acc.update(chunk)
    from metrics.outliers import pca_from_moments

    streamed, direct = pca_from_moments(*acc.compute()), fit_pca(x)
    torch.testing.assert_close(streamed.components, direct.components)
    torch.testing.assert_close(streamed.variances, direct.variances)
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.zeros(3, 5))


def test_auroc_fpr95_and_flags() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.cat([torch.randn(400, generator=g), torch.randn(300, generator=g) + 1.5])
    truth = torch.cat([torch.zeros(400), torch.ones(300)]).long()
    res = summarize(scores, truth, threshold=1.0)
    assert abs(float(res["auroc"]) - roc_auc_score(truth.numpy(), scores.numpy())) < 1e-6
    # distances are large: torchmetrics would read them as logits and saturate a sigmoid into ties
    big = scores * 1000 + 500
    assert abs(float(summarize(big, truth)["auroc"]) - roc_auc_score(truth.numpy(), big.numpy())) < 1e-6
    # FPR at 95% TPR by hand: threshold = 5th percentile of the outlier scores
    out_sorted = scores[truth == 1].sort(descending=True).values
    thr = out_sorted[int(np.ceil(0.95 * 300)) - 1]
    assert abs(float(fpr_at_tpr(scores, truth)) - float((scores[truth == 0] >= thr).float().mean())) < 1e-6
    assert abs(float(fpr_at_tpr(big, truth)) - float((scores[truth == 0] >= thr).float().mean())) < 1e-6
    p, r, f = precision_recall_f1(scores > 1.0, truth)
    tp = int(((scores > 1.0) & (truth == 1)).sum())
    assert abs(float(p) - tp / int((scores > 1.0).sum())) < 1e-6 and abs(float(r) - tp / 300) < 1e-6
    assert abs(float(f) - 2 * p * r / (p + r)) < 1e-6
    metric = OutlierScores()
    metric.update(scores[:350], truth[:350])
    metric.update(scores[350:], truth[350:])
    s, t, grp = metric.compute()
    assert torch.equal(s[:, 0], scores) and torch.equal(t, truth) and (grp == -1).all()


def test_outlier_dataloader_of_mnist(sample_data: Path) -> None:
    from datamodules import MNISTDataModule

    dm = MNISTDataModule(classes=[0, 1, 2, 3, 4], outlier_classes=[5, 6, 7, 8, 9])
    dm.setup("test")
    inl, out = dm.test_dataloader()
    assert len(inl.dataset) == 500 and len(out.dataset) == 500
    assert set(out.dataset.tensors[1].tolist()) == {5, 6, 7, 8, 9}  # original labels = groups
    with pytest.raises(ValueError, match="overlap"):
        MNISTDataModule(classes=[0, 1, 5], outlier_classes=[5, 6])


def _results(cli) -> dict[str, dict[str, float]]:
    from callbacks.outliers import ODIN

    (odin,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, ODIN)]
    return odin


def test_fit_test_predict_and_checkpoint_restores_fitted_pca(sample_data: Path, tmp_path: Path) -> None:
    common = ["--config", CONFIG, *out_args(tmp_path), *QUIET, *SMALL]
    cli = run_cli(["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=8",
                   "--trainer.limit_val_batches=1"])
    odin = _results(cli)
    assert odin.fits == 1 and odin.fitted["n_fit"] == 600
    ranks = odin.fitted["layers"]["net.fc"]["ranks"]
    assert 1 <= ranks["r0.8"] <= ranks["r0.99"] <= 128
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    in_memory = {k: dict(v) for k, v in odin.results.items()}
    assert odin.fits == 1
    ckpt = tmp_path / "odin_mnist" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    (key,) = [k for k in state["callbacks"] if k.startswith("ODIN")]
    assert state["callbacks"][key]["fitted"] is not None  # last.ckpt re-written after fitting

    cli2 = run_cli(["test", *common, "--ckpt_path", str(ckpt)])
    odin2 = _results(cli2)
    assert odin2.fits == 0  # scored with the checkpoint's PCA: no refit
    assert set(odin2.results) == set(in_memory)
    for name, res in in_memory.items():
        for stat, value in res.items():
            assert abs(odin2.results[name][stat] - value) < 1e-6, (name, stat)
    metrics = cli2.trainer.callback_metrics
    for key in ("test/odin/net.fc/rss_r0.99/auroc", "test/odin/net.fc/mahalanobis_r0.8/fpr95",
                "test/odin/net.fc/lof_r0.99/f1", "test/odin/net.block2/rss_or_mahalanobis_r0.99/recall",
                "test/odin/baseline/odin_liang/auroc", "test/acc"):
        assert key in metrics, key
    # even 8 steps separate unseen digits from the hidden layers better than chance
    assert max(v["auroc"] for k, v in odin2.results.items() if "auroc" in v and "baseline" not in k) > 0.7

    cli3 = run_cli(["predict", *common, "--ckpt_path", str(ckpt), "--trainer.limit_predict_batches=2"])
    preds = cli3.trainer.predict_loop.predictions
    assert len(preds) == 2
    batch = preds[0]
    assert _results(cli3).fits == 0
    assert batch["outlier_scores"]["net.fc/rss_r0.99"].shape == (128,)
    assert batch["outlier_flags"]["net.fc/rss_and_mahalanobis_r0.8"].dtype == torch.bool
    # the flag is the threshold at the 9th decile of the training distances
    thr = _results(cli3).fitted["thresholds"]["net.fc/rss_r0.99"]
    assert torch.equal(batch["outlier_flags"]["net.fc/rss_r0.99"], batch["outlier_scores"]["net.fc/rss_r0.99"] > thr)


def test_bad_layer_and_missing_outliers_are_clear_errors(sample_data: Path, tmp_path: Path) -> None:
    common = ["--config", CONFIG, *out_args(tmp_path), *QUIET, *SMALL, "--trainer.fast_dev_run=1"]
    with pytest.raises(ValueError, match="no layer 'net.nope'"):
        run_cli(["fit", *common, "--trainer.callbacks.init_args.layers=[net.nope]"])
    with pytest.raises(RuntimeError, match="outlier"):
        run_cli(["test", *common, "--data.outlier_classes=null"])


@pytest.mark.ddp
def test_ddp_auroc_equals_single_process(sample_root: Path, tmp_path: Path) -> None:
    # one thread per process and batches that divide every shard: each sample goes through the same
    # kernels in both runs (thread count and batch shape change float rounding, not the method)
    env = {"PAPERZOO_DATA": str(sample_root), "OMP_NUM_THREADS": "1"}
    common = ["--config", CONFIG, *QUIET, *SMALL, "--trainer.accelerator=cpu", "--data.batch_size=50",
              "--trainer.callbacks.init_args.batch_size=50"]
    # one trained model, saved without a fitted ODIN: each test run below fits on demand
    fit = run_cli_subprocess(["fit", *common, *out_args(tmp_path / "fit"), "--trainer.max_epochs=1",
                              "--trainer.limit_train_batches=8", "--trainer.limit_val_batches=1",
                              "--trainer.callbacks.init_args.fit_on_train_end=false"], env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = str(tmp_path / "fit" / "odin_mnist" / "checkpoints" / "last.ckpt")
    runs = {}
    for name, devices in (("single", ["--trainer.devices=1"]),
                          ("ddp", ["--trainer.devices=2", "--trainer.strategy=ddp"])):
        res = run_cli_subprocess(["test", *common, *out_args(tmp_path / name), *devices, "--ckpt_path", ckpt], env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        (log_dir,) = version_dirs(tmp_path / name, "odin_mnist")
        runs[name] = {k: v[-1][1] for k, v in scalars(log_dir).items() if k.startswith("test/odin/")}
        if name == "ddp":
            assert "MEMBER: 2/2" in res.stderr
    aurocs = [k for k in runs["single"] if k.endswith("/auroc")]
    assert len(aurocs) == 2 * 2 * 3 + 3
    for key in aurocs:
        assert abs(runs["single"][key] - runs["ddp"][key]) < 1e-6, key
    for key in runs["single"]:  # thresholds too: every flag statistic agrees
        assert abs(runs["single"][key] - runs["ddp"][key]) < 1e-5, key
