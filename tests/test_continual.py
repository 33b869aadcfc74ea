"""EWC / IS penalty callbacks: the applied gradient is autograd of the written penalty; resume; DDP."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.continual import ContinualPenalty, EWCPenalty, ISPenalty

TRAINER = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, log_every_n_steps=1)


class Tiny(LightningModule):
    """A regression net whose ``discriminator`` is protected; automatic optimisation."""

    def __init__(self, with_importance_loss: bool | str = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.discriminator = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
        self.head = nn.Linear(1, 1)  # not protected
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)
        if with_importance_loss == "per_sample":
            self.importance_loss = lambda: (self.discriminator(self.x[:8] * 0.5) - self.y[:8]).pow(2).flatten()
        elif with_importance_loss:
            self.importance_loss = lambda: F.mse_loss(self.discriminator(self.x[:8] * 0.5), self.y[:8])

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.discriminator(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4, shuffle=False)


class Recording:
    """Mixin: keep every task's (Q, theta*) to evaluate the penalty as written, term by term."""

    def consolidate(self, q, theta):
        self.history = getattr(self, "history", []) + [([t.clone() for t in q], [t.clone() for t in theta])]
        super().consolidate(q, theta)

    def written_penalty(self, params):
        k = len(self.history)
        total = 0.0
        for kappa, (q, theta) in enumerate(self.history, start=1):
            ref = theta if self.reference else [torch.zeros_like(t) for t in theta]
            total = total + self.gamma ** (k - kappa) * sum((qi * (p - ti) ** 2).sum() for qi, p, ti in zip(q, params, ref))
        return 0.5 * self.lam * total


class RecordingEWC(Recording, EWCPenalty):
    pass


class RecordingIS(Recording, ISPenalty):
    pass


class RecordingOnes(Recording, ContinualPenalty):
    pass


class GradSpy(Callback):
    def __init__(self, store: list) -> None:
        self.store = store

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.store.append([p.grad.detach().clone() for p in pl_module.discriminator.parameters()])


class CheckAgainstAutograd(Callback):
    """Runs after the penalty: applied gradient == autograd of the written penalty, logged value == penalty."""

    def __init__(self, penalty, before: list) -> None:
        self.penalty, self.before, self.checked = penalty, before, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pen = self.penalty
        if not getattr(pen, "history", None):
            return
        params = [p.detach().clone().requires_grad_(True) for p in pl_module.discriminator.parameters()]
        written = pen.written_penalty(params)
        expected = torch.autograd.grad(written, params)
        applied = [p.grad - b for p, b in zip(pl_module.discriminator.parameters(), self.before[-1])]
        for a, e in zip(applied, expected):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pen.penalty(), written.detach(), rtol=1e-4, atol=1e-5)
        assert float(trainer.callback_metrics[pen.log_key]) == pytest.approx(float(written.detach()), rel=1e-4, abs=1e-6)
        self.checked += 1


@pytest.mark.parametrize(
    "cls, kwargs, module_kwargs",
    [
        (RecordingEWC, dict(lam=0.1, alpha=3, gamma=0.8), {}),  # default: deferred Fisher
        (RecordingEWC, dict(lam=0.1, alpha=1, gamma=0.9), dict(with_importance_loss=False)),  # deferred, alpha=1
        (RecordingEWC, dict(lam=3.0, alpha=3, gamma=0.8, fisher="extra_pass"), {}),
        (RecordingEWC, dict(lam=0.3, alpha=2, gamma=0.9, fisher="last_step"), dict(with_importance_loss=False)),
        (RecordingEWC, dict(lam=3.0, alpha=4, gamma=0.9, fisher="extra_pass"), dict(with_importance_loss="per_sample")),
        (RecordingIS, dict(lam=5.0, alpha=4, gamma=0.7), {}),
        (RecordingOnes, dict(lam=0.5, alpha=1, gamma=0.9, importance="ones"), {}),  # discounted historical averaging
    ],
)
def test_applied_gradient_is_autograd_of_written_penalty(cls, kwargs, module_kwargs) -> None:
    before: list = []
    penalty = cls(target="discriminator", **kwargs)
    check = CheckAgainstAutograd(penalty, before)
    trainer = Trainer(max_epochs=2, callbacks=[GradSpy(before), penalty, check], **TRAINER)
    trainer.fit(Tiny(**module_kwargs))
    deferred = penalty.importance == "fisher" and penalty.fisher == "deferred"
    # deferred: the task ending at step 16 waits for step 17 (pending at the end of the fit)
    assert penalty.steps == 16 and penalty.tasks == (15 if deferred else 16) // kwargs["alpha"]
    assert penalty.pending == (deferred and 16 % kwargs["alpha"] == 0)
    assert check.checked == 16 - kwargs["alpha"]  # every step after the first task
    assert all(float(s.abs().sum()) > 0 for s in penalty.S)


def test_per_sample_fisher_and_tasks_across_fits() -> None:
    """A vector importance loss gives mean squared per-sample gradients; a second fit of the module keeps S, P."""
    penalty = RecordingEWC(lam=1.0, alpha=8, gamma=1.0, fisher="extra_pass")
    module = Tiny(with_importance_loss="per_sample")
    Trainer(max_epochs=1, callbacks=[penalty], **TRAINER).fit(module)
    (q, theta), = penalty.history
    params = list(module.discriminator.parameters())
    expected = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        for p, t in zip(params, theta):
            p.copy_(t)  # Fisher at theta* (the parameters at the task's end)
    for i in range(8):
        out = (module.discriminator(module.x[i : i + 1] * 0.5) - module.y[i : i + 1]).pow(2).sum()
        for e, g in zip(expected, torch.autograd.grad(out, params)):
            e += g**2 / 8
    for a, b in zip(q, expected):
        torch.testing.assert_close(a, b)
    Trainer(max_epochs=1, callbacks=[penalty], **TRAINER).fit(module)  # next task, same module
    assert penalty.tasks == 2 and penalty.steps == 16
    torch.testing.assert_close(penalty.S[0], penalty.history[0][0][0] + penalty.history[1][0][0])


class Snapshot(Callback):
    """A deep copy of the module at the start of training batch ``index`` (before its step)."""

    def __init__(self, index: int) -> None:
        self.index, self.module = index, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.index:
            self.module = copy.deepcopy(pl_module)


def test_deferred_fisher_is_squared_loss_gradient_at_theta_on_next_batch() -> None:
    """Deferred Fisher: task 1 ends after step 3 at theta*; Q = (grad of the loss on batch 4 at theta*) ** 2."""
    penalty = RecordingEWC(lam=1.0, alpha=3, gamma=0.9)
    assert penalty.fisher == "deferred"
    snap = Snapshot(index=3)  # batch 4, the first batch task 1 did not train on
    module = Tiny(with_importance_loss=False)  # no extra pass needed
    Trainer(max_steps=4, callbacks=[snap, penalty], **TRAINER).fit(module)
    assert penalty.tasks == 1 and not penalty.pending
    (q, theta), = penalty.history
    at = snap.module  # the module after step 3 = theta*, before step 4
    params = list(at.discriminator.parameters())
    for t, p in zip(theta, params):
        assert torch.equal(t, p.detach())
    x, y = module.x[12:16], module.y[12:16]
    grads = torch.autograd.grad(F.mse_loss(at.head(at.discriminator(x)), y), params)
    for qi, g in zip(q, grads):
        torch.testing.assert_close(qi, g**2)
    assert float(sum(qi.sum() for qi in q)) > 0


def test_deferred_fisher_gan_discriminator_loss_on_next_d_step() -> None:
    """GAN (manual optimisation): Q = squared D-loss gradient at theta* on the next D step's real and fake batch."""
    from lightning_modules.gan import GAN

    torch.manual_seed(0)
    model = GAN(arch="mlp", hidden=16, layers=2, latent_dim=4, fid_network="none", eval_samples=100)
    calls: list = []
    d_loss = model.d_loss
    model.d_loss = lambda real, fake, penalty=True: calls.append((real.clone(), fake.clone())) or d_loss(real, fake, penalty)
    penalty = RecordingEWC(lam=1.0, alpha=3, gamma=0.9)
    snap = Snapshot(index=3)
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=16)
    Trainer(max_epochs=1, limit_val_batches=0, callbacks=[snap, penalty], **TRAINER).fit(model, data)
    assert penalty.steps == 4 and penalty.tasks == 1 and len(calls) == 4
    (q, theta), = penalty.history
    disc = snap.module.discriminator  # D after its 3rd step (the generator stepped too, D did not move)
    params = list(disc.parameters())
    for t, p in zip(theta, params):
        assert torch.equal(t, p.detach())
    real, fake = calls[3]
    d_real, d_fake = disc(real), disc(fake)
    loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy_with_logits(
        d_fake, torch.zeros_like(d_fake))
    for qi, g in zip(q, torch.autograd.grad(loss, params)):
        torch.testing.assert_close(qi, g**2)


def test_extra_pass_needs_importance_loss() -> None:
    with pytest.raises(ValueError, match="importance_loss"):
        Trainer(max_steps=1, callbacks=[EWCPenalty(fisher="extra_pass")], **TRAINER).fit(Tiny(with_importance_loss=False))
    with pytest.raises(ValueError, match="fisher"):
        EWCPenalty(fisher="fresh")


def test_l2_special_case() -> None:
    """No reference, gamma=0, importance 1: the applied gradient is lam * theta (plain L2)."""
    before: list = []
    after: list = []
    penalty = ContinualPenalty(target="discriminator", lam=0.3, alpha=1, gamma=0.0, importance="ones", reference=False)
    params_seen: list = []

    class Params(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            params_seen.append([p.detach().clone() for p in pl_module.discriminator.parameters()])

    trainer = Trainer(max_steps=5, callbacks=[GradSpy(before), penalty, GradSpy(after), Params()], **TRAINER)
    trainer.fit(Tiny())
    for b, a, theta in list(zip(before, after, params_seen))[1:]:
        for bi, ai, ti in zip(b, a, theta):
            torch.testing.assert_close(ai - bi, 0.3 * ti)


def _state(penalty: ContinualPenalty) -> list[torch.Tensor]:
    return [t.clone() for t in penalty.S + penalty.P]


@pytest.mark.parametrize(
    "cls, kwargs, tasks",  # tasks done after 8 and 16 steps (alpha=4; deferred: the boundary at 8 is pending)
    [(EWCPenalty, {}, (1, 3)), (EWCPenalty, dict(fisher="extra_pass"), (2, 4)), (ISPenalty, {}, (2, 4))],
)
def test_resume_restores_s_and_p(cls, kwargs, tasks, tmp_path: Path) -> None:
    kwargs = dict(lam=2.0, alpha=4, gamma=0.9, **kwargs)
    straight = cls(**kwargs)
    Trainer(max_epochs=2, callbacks=[straight], **TRAINER).fit(Tiny())

    first = cls(**kwargs)
    trainer = Trainer(max_epochs=1, callbacks=[first], **TRAINER)
    trainer.fit(Tiny())
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    saved = _state(first)

    seen: dict = {}
    resumed = cls(**kwargs)

    class AtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["S_P"], seen["steps"], seen["tasks"] = _state(resumed), resumed.steps, resumed.tasks
            seen["pending"] = resumed.pending

    Trainer(max_epochs=2, callbacks=[resumed, AtStart()], **TRAINER).fit(Tiny(), ckpt_path=tmp_path / "one.ckpt")
    assert seen["steps"] == 8 and seen["tasks"] == tasks[0] and seen["pending"] == (tasks[0] == 1)
    for a, b in zip(seen["S_P"], saved):
        torch.testing.assert_close(a, b)
    assert resumed.steps == straight.steps == 16 and resumed.tasks == straight.tasks == tasks[1]
    for a, b in zip(_state(resumed), _state(straight)):
        torch.testing.assert_close(a, b)  # the resumed run continued the same penalty
    assert resumed.R == pytest.approx(straight.R)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        EWCPenalty(alpha=0)
    with pytest.raises(ValueError, match="gamma"):
        EWCPenalty(gamma=1.5)
    with pytest.raises(AttributeError):
        Trainer(max_steps=1, callbacks=[EWCPenalty(target="nope")], **TRAINER).fit(Tiny())


class DumpPenaltyState(Callback):
    """Each rank saves its penalty callbacks' S, P, R and task count (used by the DDP test's subprocess)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        states = {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks if isinstance(cb, ContinualPenalty)}
        torch.save(states, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_s_and_p(tmp_path: Path) -> None:
    import json

    from tests.helpers import CONFIGS, QUIET, out_args, run_cli_subprocess

    dump = {"class_path": "tests.test_continual.DumpPenaltyState", "init_args": {"out_dir": str(tmp_path)}}
    is_penalty = {"class_path": "ISPenalty", "init_args": {"alpha": 4, "lam": 10.0}}
    result = run_cli_subprocess([
        "fit", "--config", str(CONFIGS / "ewc_gan_gaussians.yaml"), *QUIET, *out_args(tmp_path),
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.max_steps=40", "--trainer.val_check_interval=10", "--trainer.log_every_n_steps=5",
        "--data.init_args.train_size=8192", "--data.init_args.batch_size=64", "--model.init_args.eval_samples=1000",
        "--trainer.callbacks.alpha=5", f"--trainer.callbacks+={json.dumps(is_penalty)}",
        f"--trainer.callbacks+={json.dumps(dump)}",
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert set(ranks[0]) == {"EWCPenalty", "ISPenalty"}
    for name in ranks[0]:
        a, b = ranks[0][name], ranks[1][name]
        # 20 D steps per rank; EWC (deferred Fisher from DDP-averaged gradients): the task ending at step 20 is pending
        assert a["tasks"] == b["tasks"] == (3 if name == "EWCPenalty" else 5)
        assert a["pending"] == b["pending"] == (name == "EWCPenalty")
        for key in ("S", "P"):
            for x, y in zip(a[key], b[key]):
                assert torch.equal(x, y), (name, key)
        assert a["R"] == b["R"] and sum(float(s.abs().sum()) for s in a["S"]) > 0
