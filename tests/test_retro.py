"""Retrosynthesis Transformer: beam search, hard-EM mixture, CLI fit/test, pre-training, DDP equality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules.nets.seq2seq import Seq2SeqTransformer, sequence_nll
from lightning_modules.retro import RetroTransformer
from tests.helpers import CONFIGS, QUIET, out_args, run_cli, run_cli_subprocess, scalars, version_dirs
from tests.test_uspto import uspto_sample

BASE = str(CONFIGS / "retro_uspto.yaml")
MIXTURE = str(CONFIGS / "retro_mixture_uspto.yaml")
PRETRAIN = str(CONFIGS / "retro_pretrain_uspto.yaml")
TINY = [
    "--model.init_args.d_model=32", "--model.init_args.nhead=2", "--model.init_args.num_encoder_layers=1",
    "--model.init_args.num_decoder_layers=1", "--model.init_args.dim_feedforward=64",
    "--model.init_args.max_decode_len=40", "--model.init_args.beam_size=3", "--model.init_args.top_ks=[1,3]",
    "--model.init_args.classifier_epochs=2", "--model.init_args.warmup_steps=10",
    "--data.init_args.eval_subset=12", "--data.init_args.eval_batch_size=6", "--data.init_args.augment=0",
    "--trainer.accelerator=cpu", "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1",
]


def _net(num_latent: int = 1, dropout: float = 0.0) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(20, d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2,
                              dim_feedforward=64, dropout=dropout, num_latent=num_latent).eval()


def _src() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 20, (5, 9), generator=g)
    src[1, 6:] = 0  # padded products of different lengths
    src[3, 4:] = 0
    return src


def test_beam_one_equals_greedy() -> None:
    net = _net()
    src = _src()
    greedy, gscore = net.greedy(src, max_len=15)
    beam, bscore = net.beam_search(src, beam_size=1, max_len=15)
    L = min(greedy.shape[1], beam.shape[2])
    assert torch.equal(greedy[:, :L], beam[:, 0, :L])
    assert torch.allclose(gscore, bscore[:, 0], atol=1e-5)


def test_batched_beam_equals_one_product_at_a_time() -> None:
    net = _net()
    src = _src()
    tokens, scores = net.beam_search(src, beam_size=4, max_len=12)
    for i in range(len(src)):
        n = int((src[i] != 0).sum())
        t1, s1 = net.beam_search(src[i : i + 1, :n], beam_size=4, max_len=12)
        assert torch.allclose(s1[0], scores[i], atol=1e-4)
        assert torch.equal(t1[0], tokens[i, :, : t1.shape[2]])
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first


def test_length_penalty_reranks_by_normalised_score() -> None:
    net = _net()
    tokens, scores = net.beam_search(_src(), beam_size=4, max_len=12, length_penalty=1.0)
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-6).all()


def test_merged_top_k_keeps_one_prediction_per_molecule_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mixture's merge (and any beam) drops a prediction whose canonical set ranks below the same set: "OCC"
    after "CCO", "O.CC" after "CC.O"; invalid strings only when verbatim repeats. Scores and latents follow."""
    vocab = ["<pad>", "<bos>", "<eos>", "<unk>", "C", "O", ".", "(", "X"]
    model = RetroTransformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=16,
                             num_latent=2, vocab=vocab).eval()
    ids = {t: i for i, t in enumerate(vocab)}

    def fake_beam(src, beam_size, max_len, length_penalty, z):  # per latent class: beam_size hypotheses
        per_latent = [["CCO", "CC.O", "C(", "C"], ["OCC", "O.CC", "C(", "CO"]]
        toks = torch.zeros(2, beam_size, 5, dtype=torch.long)
        for k in range(2):
            for j, s in enumerate(per_latent[k]):
                toks[k, j, : len(s) + 1] = torch.tensor([ids[c] for c in s] + [ids["<eos>"]])
        scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.5, -2.5, -3.5, -0.5]])
        return toks, scores

    monkeypatch.setattr(model.net, "beam_search", fake_beam)
    out = model.predict_reactants(torch.ones(1, 3, dtype=torch.long), beam_size=4)
    assert out["smiles"] == [["CO", "CCO", "CC.O", "C("]]
    assert out["scores"].tolist() == [[-0.5, -1.0, -2.0, -3.0]]
    assert out["latent"].tolist() == [[1, 0, 0, 0]]


def test_hard_em_picks_lowest_loss_latent_with_dropout_off() -> None:
    torch.manual_seed(0)
    model = RetroTransformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64,
                             dropout=0.3, num_latent=3, vocab=[f"t{i}" for i in range(20)])
    model.train()
    src = _src()
    tgt = torch.randint(4, 20, (5, 7), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = 1
    tgt[2, 5:] = 0
    z, nll = model.select_latent(src, tgt)
    assert model.net.training  # training mode restored for the M-step
    # brute force, dropout off: the loss of every latent class separately
    model.net.eval()
    with torch.no_grad():
        expected = torch.stack([sequence_nll(model.net(src, tgt[:, :-1], torch.full((5,), k)), tgt[:, 1:])
                                for k in range(3)], dim=1)
    assert torch.allclose(nll, expected, atol=1e-4)
    assert torch.equal(z, expected.argmin(1))
    # with dropout on the selection would be noisy: the losses differ from the dropout-free ones
    model.net.train()
    with torch.no_grad():
        noisy = sequence_nll(model.net(src, tgt[:, :-1], torch.zeros(5, dtype=torch.long)), tgt[:, 1:])
    assert not torch.allclose(noisy, expected[:, 0], atol=1e-4)
    # M-step: only the chosen latent embeddings receive gradients
    model.zero_grad()
    logits = model(src, tgt[:, :-1], z)
    torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], ignore_index=0).backward()
    grad_rows = model.net.latent.weight.grad.abs().sum(1) > 0
    assert grad_rows.tolist() == [k in z.tolist() for k in range(3)]


def test_cli_fit_test_mixture_on_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(uspto_sample()))
    common = ["--config", MIXTURE, *TINY, *QUIET, *out_args(tmp_path), "--model.init_args.num_latent=2"]
    run_cli(["fit", *common, "--trainer.max_steps=3", "--data.init_args.train_subset=60"])
    last = tmp_path / "retro_mixture_uspto" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    vocab = ckpt["hyper_parameters"]["vocab"]
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"] and ckpt["datamodule_hyper_parameters"]
    run_cli(["test", *common, "--ckpt_path", str(last), "--data.init_args.train_subset=60"])
    logged = scalars(version_dirs(tmp_path, "retro_mixture_uspto")[-1])
    for key in ("test/top1_acc", "test/top3_acc", "test/invalid_frac", "test/unique_classes@10"):
        assert key in logged, sorted(logged)
    assert 0.0 <= logged["test/top1_acc"][-1][1] <= logged["test/top3_acc"][-1][1] <= 1.0
    assert 0.0 <= logged["test/unique_classes@10"][-1][1] <= 3.0 * 2  # at most beam * K distinct
    assert logged["data/skipped_test"][-1][1] == 0.0
    # the checkpoint alone rebuilds the model with its vocabulary (no DataModule needed)
    model = RetroTransformer.load_from_checkpoint(last)
    assert model.vocab_itos == vocab and model.net.num_latent == 2


def test_pretrain_checkpoint_initialises_fine_tuning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPERZOO_DATA", str(uspto_sample()))
    common = [*TINY, *QUIET, *out_args(tmp_path), "--data.init_args.train_subset=20", "--trainer.max_steps=2",
              "--trainer.limit_val_batches=1"]
    run_cli(["fit", "--config", PRETRAIN, *common])
    pre = tmp_path / "retro_pretrain_uspto" / "checkpoints" / "last.ckpt"
    pre_state = torch.load(pre, weights_only=False)["state_dict"]
    cli = run_cli(["fit", "--config", BASE, *common, "--trainer.max_steps=0",
                   f"--model.init_args.init_from={pre}"])
    model = cli.model
    for name, value in model.net.state_dict().items():
        assert torch.equal(value, pre_state[f"net.{name}"]), name
    assert model.vocab_itos == torch.load(pre, weights_only=False)["hyper_parameters"]["vocab"]
    # a fine-tuned checkpoint stands alone: it loads and tests without the pre-training file it started from
    tuned_dir = tmp_path / "tuned"
    run_cli(["fit", "--config", BASE, *TINY, *QUIET, *out_args(tuned_dir), "--data.init_args.train_subset=20",
             "--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--model.init_args.init_from={pre}"])
    tuned = tuned_dir / "retro_uspto" / "checkpoints" / "last.ckpt"
    pre.unlink()
    loaded = RetroTransformer.load_from_checkpoint(tuned, map_location="cpu")
    tuned_state = torch.load(tuned, weights_only=False)["state_dict"]
    assert all(torch.equal(v, tuned_state[f"net.{k}"]) for k, v in loaded.net.state_dict().items())
    test = run_cli(["test", "--config", BASE, *TINY, *QUIET, *out_args(tmp_path / "test"), "--data.init_args.train_subset=20",
                    "--data.init_args.eval_subset=2", "--model.init_args.max_decode_len=5",
                    f"--model.init_args.init_from={pre}", "--ckpt_path", str(tuned)])
    assert "test/top1_acc" in test.trainer.callback_metrics


@pytest.mark.ddp
@pytest.mark.slow  # ~2 minutes on the shared 2-core machine (three CLI runs in subprocesses)
def test_ddp_test_metrics_equal_single_process(tmp_path: Path) -> None:
    env = {"PAPERZOO_DATA": str(uspto_sample())}
    common = ["--config", BASE, *TINY, *QUIET, "--data.init_args.train_subset=40"]
    fit = run_cli_subprocess(["fit", *common, "--trainer.max_steps=4", *out_args(tmp_path / "fit")], env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    last = tmp_path / "fit" / "retro_uspto" / "checkpoints" / "last.ckpt"
    results = {}
    for devices in (1, 2):
        extra = ["--trainer.strategy=ddp"] if devices == 2 else []
        out = tmp_path / f"test{devices}"
        # 12 test products, 6 per batch: two batches, one per rank under DDP
        run = run_cli_subprocess(["test", *common, f"--trainer.devices={devices}", *extra, "--ckpt_path", str(last),
                                  *out_args(out)], env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        if devices == 2:
            assert "MEMBER: 2/2" in run.stderr
        logged = scalars(version_dirs(out, "retro_uspto")[-1])
        results[devices] = {k: v[-1][1] for k, v in logged.items() if k.startswith("test/")}
    assert "test/top1_acc" in results[1] and "test/unique_classes@10" in results[1]
    assert results[1] == results[2]


def test_real_data_run_keeps_the_checkpoint_of_the_batch_where_time_ran_out(tmp_path: Path) -> None:
    """retro_real.py's ``last.ckpt`` is one file, saved inside the epoch when training is told to stop (so
    ``--resume`` continues the epoch: tests/test_checkpoint.py), and periodically before."""
    from lightning import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from benchmarks.retro_real import last_checkpoint
    from tests.test_checkpoint import QUIET as quiet
    from tests.test_checkpoint import StopAt  # what the max_time Timer does when time runs out

    last = tmp_path / "checkpoints" / "last.ckpt"
    Trainer(max_epochs=5, limit_train_batches=16, limit_val_batches=0, callbacks=[StopAt(7), last_checkpoint(last, 60.0)],
            **quiet).fit(BoringModel())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    state = torch.load(last, weights_only=False)
    epochs = state["loops"]["fit_loop"]["epoch_progress"]["current"]
    batches = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert state["global_step"] == 7 and epochs["ready"] == 1 and epochs["completed"] == 0  # inside epoch 0
    assert batches["processed"] == 7  # saved in on_train_batch_end, as ModelCheckpoint(every_n_train_steps) does

    # a new run in the same folder (no --resume) overwrites the one file; periodic saves (every 0 minutes: every
    # batch) go to it too, and training that ends otherwise (max_steps) leaves its last step there
    saves = []
    checkpoint = last_checkpoint(last, 0.0)
    checkpoint._save_checkpoint = lambda trainer, path, f=checkpoint._save_checkpoint: (saves.append(trainer.global_step),
                                                                                        f(trainer, path))
    Trainer(max_steps=3, limit_val_batches=0, callbacks=[checkpoint], **quiet).fit(BoringModel())
    assert saves == [1, 2, 3] and torch.load(last, weights_only=False)["global_step"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_sample_compare_trains_both_models_at_each_seed_and_prints_the_means(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``benchmarks/retro_sample_compare.py --seeds``: one command, base and mixture fine-tuned at every seed from one
    shared pre-training, runs kept apart per seed, and a mean row per model."""
    import json

    from benchmarks.retro_sample_compare import main

    out, report = tmp_path / "runs", tmp_path / "results.json"
    main(["--data-root", str(uspto_sample()), "--out", str(out), "--json", str(report), "--seeds", "0", "1",
          "--latent", "2", "--pretrain", "random", "--pretrain-steps", "2", "--max-steps", "2", "--d-model", "32",
          "--layers", "1", "--ff", "64", "--warmup", "10", "--max-decode-len", "20", "--eval-subset", "6",
          "--eval-batch-size", "6", "--classifier-epochs", "1", "--augment", "0"])
    results = json.loads(report.read_text())
    rows = ["base, seed 0", "mixture K=2, seed 0", "base, seed 1", "mixture K=2, seed 1",
            "base, mean of 2 seeds", "mixture K=2, mean of 2 seeds"]
    assert list(results) == rows
    for model in ("base", "mixture K=2"):
        seeds = [results[f"{model}, seed {s}"] for s in (0, 1)]
        mean = results[f"{model}, mean of 2 seeds"]
        for key in ("test/top1_acc", "test/top10_acc", "test/unique_classes@10"):
            assert mean[key] == pytest.approx((seeds[0][key] + seeds[1][key]) / 2)
        assert all(r["steps"] == 2 for r in seeds)
    # one pre-training serves every seed; each seed's fine-tuned models are its own
    assert (out / "retro_pretrain_random" / "checkpoints" / "last.ckpt").is_file()
    weights = {}
    for s in (0, 1):
        for name in ("retro_base", "retro_mixture"):
            ckpt = torch.load(out / f"seed{s}" / name / "checkpoints" / "last.ckpt", weights_only=False)
            weights[s, name] = ckpt["state_dict"]["net.generator.weight"]
    assert not torch.equal(weights[0, "retro_base"], weights[1, "retro_base"])
    printed = capsys.readouterr().out
    assert "| mixture K=2, mean of 2 seeds | 2 |" in printed and "mixture - base top-10, per seed:" in printed


def test_cli_fit_stopped_inside_an_epoch_resumes_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's checkpoint (ResumableCheckpoint) saves ``last`` at the batch where training stops inside an epoch;
    ``--ckpt_path last`` continues that epoch (the token-budget loader's position is in the checkpoint)."""
    monkeypatch.setenv("PAPERZOO_DATA", str(uspto_sample()))
    common = ["--config", BASE, *TINY, *QUIET, *out_args(tmp_path), "--data.init_args.max_tokens=1024",
              "--trainer.limit_val_batches=0"]
    last = tmp_path / "retro_uspto" / "checkpoints" / "last.ckpt"

    def progress() -> tuple[int, int, int]:
        state = torch.load(last, weights_only=False)
        loops = state["loops"]["fit_loop"]
        return (state["global_step"], loops["epoch_progress"]["current"]["completed"],
                loops["epoch_loop.batch_progress"]["current"]["processed"])

    fit = run_cli(["fit", *common, "--trainer.max_steps=5"])
    assert len(fit.trainer.train_dataloader) > 8  # both stops fall inside epoch 0
    assert progress() == (5, 0, 5)
    run_cli(["fit", *common, "--trainer.max_steps=8", "--ckpt_path", "last"])
    assert progress() == (8, 0, 8)  # batches 5-7 of the same epoch, not a new epoch
