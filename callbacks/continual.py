"""Online EWC and intelligent-synapses (IS) penalties as callbacks, for any module and any target submodule.

The penalty (Liang et al., "GAN training is a continual learning problem", online memory with discount):
a new *task* ends every ``alpha`` optimizer steps of the target's optimizer; at the end of task ``k`` the
target's parameters ``theta*_k`` and an importance ``Q_k`` (one tensor per parameter) are folded into

    S_k = gamma * S_{k-1} + Q_k               P_k = gamma * P_{k-1} + Q_k * theta*_k
    R_k = gamma * R_{k-1} + sum_i Q_k,i * theta*_k,i ** 2          (a scalar, only for the logged value)

so that, with ``k`` tasks done,

    L_CL(theta) = lambda / 2 * sum_{kappa=1..k} gamma^(k - kappa) * sum_i Q_kappa,i * (theta_i - theta*_kappa,i) ** 2
                = lambda / 2 * sum_i (S_k,i * theta_i ** 2 - 2 * P_k,i * theta_i) + lambda / 2 * R_k

and its gradient is ``lambda * (S * theta - P)``. No per-task copies are kept: S and P are one tensor each
per parameter.

Importance ``Q``:

* ``fisher`` (:class:`EWCPenalty`): a diagonal empirical-Fisher approximation at ``theta*_k`` from a fresh
  minibatch (one the task did not train on), chosen by ``fisher``:

  - ``deferred`` (default): the task that ended at ``theta*_k`` is consolidated at the *next* step of the
    target's optimizer, which computes the module's own loss gradient anyway, at ``theta*_k`` (the target has
    not moved since), on its new minibatch (for a GAN: new real samples and samples of the current
    generator). In ``on_before_optimizer_step``, before the penalty gradient is added,
    ``Q_k = g ** 2`` with ``g`` = that step's gradient, averaged across ranks (DDP's reducer has already
    averaged ``p.grad``; other multi-process strategies get an explicit all-reduce). The squared *minibatch*
    gradient is the usual cheap empirical-Fisher diagonal (it differs from the mean of per-sample squared
    gradients by the per-sample variance term); no extra forward or backward pass. The paper's "forward
    propagating a new minibatch through the discriminator" is that next step's minibatch. Caveats: the
    loss is the step's training loss (with WGAN-GP's gradient penalty, if any); a boundary still pending
    at the end of a fit is saved in the checkpoint and consumed by the next step, so for tasks learned in
    separate fits (a classifier on data sets in sequence) use ``extra_pass``: the pending boundary would
    be consumed on the next task's data.
  - ``extra_pass``: at the boundary, one extra forward/backward of the module's ``importance_loss(self) ->
    Tensor`` (the GAN modules: the discriminator loss, without gradient penalty, on the previous step's
    real batch and freshly generated samples). A scalar gives the squared gradient (as ``deferred``); a
    vector of per-sample losses gives the mean of per-sample squared gradients, the exact empirical-Fisher
    diagonal (one backward per sample). Gradients are averaged across ranks before squaring.
  - ``last_step``: the squared gradient of the task's last step (computed at the parameters *before* that
    step's update, on a batch the task trained on). No extra pass; the cheapest.
* ``path`` (:class:`ISPenalty`): the path integral ``sum_t -g_t * (theta_{t+1} - theta_t)`` over the task's
  steps, with ``g_t`` the gradient of the module's own loss (before the penalty is added), *without* the
  ``(Delta theta)^2 + xi`` normaliser (the paper drops it). Negative task totals (the task raised the loss
  along that coordinate) are clamped to 0 so that S stays non-negative and the penalty convex.
* ``ones``: Q = 1. With ``alpha=1`` this is discounted historical averaging; with ``reference=False``
  (theta* = 0, so P = 0) and ``gamma=0`` it is plain L2 weight decay ``lambda / 2 * ||theta||^2``.

How it is applied (the protocol): the module's own loss is left alone; in ``on_before_optimizer_step`` of
the target's optimizer (after backward, gradient accumulation and AMP unscaling, before clipping) the
callback adds ``lambda * (S * theta - P)`` to each target parameter's ``.grad``. This works for automatic
and manual optimisation alike, once per optimizer step. The task boundary is handled in a step
post-hook of that optimizer. Under DDP the gradients are already averaged when the hook runs, and the
importance is averaged across ranks before it enters S and P, so S and P are identical on every rank.

Logged: ``train/ewc_penalty`` (:class:`EWCPenalty`; ``train/is_penalty`` for :class:`ISPenalty`) = L_CL at
the parameters before the step, and ``train/cl_tasks`` (tasks completed). State (S, P, R, counters and
the IS accumulator) is saved in the checkpoint so a resumed run continues the same penalty.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

log = logging.getLogger(__name__)

Importance = Literal["fisher", "path", "ones"]
FisherMode = Literal["deferred", "extra_pass", "last_step"]


class ContinualPenalty(Callback):
    """Online quadratic continual-learning penalty on ``target`` (see the module docstring).

    Args:
        target: dotted name of the submodule to protect (``"discriminator"``; ``""`` = the whole module).
        lam: the weight ``lambda``.
        alpha: optimizer steps per task.
        gamma: discount of earlier tasks in [0, 1].
        importance: ``fisher`` (EWC), ``path`` (IS) or ``ones``.
        reference: keep the reference term theta* (``False``: P = 0, the penalty pulls towards 0).
        log_key: name of the logged penalty.
        fisher: how ``importance="fisher"`` gets its minibatch (module docstring): ``deferred`` (default; the
            next step's gradient at theta*, no extra pass), ``extra_pass`` (the module's ``importance_loss()``
            at the boundary; a vector of per-sample losses = exact empirical Fisher) or ``last_step`` (the
            squared gradient of the task's last step).
    """

    def __init__(
        self,
        target: str = "discriminator",
        lam: float = 10.0,
        alpha: int = 1000,
        gamma: float = 0.99,
        importance: Importance = "fisher",
        reference: bool = True,
        log_key: str = "train/ewc_penalty",
        fisher: FisherMode = "deferred",
    ) -> None:
        if alpha < 1:
            raise ValueError(f"alpha (steps per task) must be >= 1, got {alpha}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if importance not in ("fisher", "path", "ones"):
            raise ValueError(f"importance must be fisher, path or ones, got {importance!r}")
        if fisher not in ("deferred", "extra_pass", "last_step"):
            raise ValueError(f"fisher must be deferred, extra_pass or last_step, got {fisher!r}")
        self.target, self.lam, self.alpha, self.gamma = target, float(lam), int(alpha), float(gamma)
        self.importance, self.reference, self.log_key = importance, reference, log_key
        self.fisher = fisher
        self.pending = False  # deferred Fisher: a task ended; its importance comes from the next step
        self.log_every_step = False  # compute the logged value only on the trainer's logging steps
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        self.S: list[Tensor] = []
        self.P: list[Tensor] = []
        self.R = 0.0
        self.steps = 0  # optimizer steps of the target's optimizer
        self.tasks = 0
        self.omega: list[Tensor] = []  # IS: path integral of the running task
        self._loaded_state: dict[str, Any] | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._hook = None
        self._module: LightningModule | None = None
        self._trainer: Trainer | None = None
        self._grad: list[Tensor] | None = None  # IS / fisher fallback: task gradient of this step
        self._theta: list[Tensor] | None = None  # IS: parameters before this step

    @property
    def state_key(self) -> str:
        return self._generate_state_key(target=self.target, importance=self.importance)

    # ------------------------------------------------------------------ set-up
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        module = pl_module.get_submodule(self.target) if self.target else pl_module
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{type(self).__name__}: target {self.target!r} has no trainable parameters")
        same = len(named) == len(self.params) and all(p is q for (_, p), q in zip(named, self.params))
        if not same:  # a new module; a later fit of the same module (tasks in sequence) keeps S and P
            self.names = [n for n, _ in named]
            self.params = [p for _, p in named]
            self.S = [torch.zeros_like(p, memory_format=torch.preserve_format).detach() for p in self.params]
            self.P = [torch.zeros_like(s) for s in self.S]
            self.omega = [torch.zeros_like(s) for s in self.S] if self.importance == "path" else []
        self._module, self._trainer = pl_module, trainer
        if self.importance == "fisher" and self.fisher == "extra_pass" and not hasattr(pl_module, "importance_loss"):
            raise ValueError(
                f"{type(self).__name__}(fisher='extra_pass') needs the module to define importance_loss() -> Tensor "
                f"(the loss on a fresh minibatch); {type(pl_module).__name__} does not: use fisher='deferred'"
            )
        first = self.params[0]
        owners = [opt for opt in trainer.optimizers if any(q is first for g in opt.param_groups for q in g["params"])]
        if not owners:
            raise ValueError(f"{type(self).__name__}: no optimizer holds the parameters of {self.target!r}")
        self._optimizer = owners[0]
        self._hook = self._optimizer.register_step_post_hook(self._after_step)
        if self._loaded_state is not None:
            self._restore(self._loaded_state)
            self._loaded_state = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._detach_hook()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._detach_hook()

    def _detach_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ------------------------------------------------------------------ the penalty
    def penalty(self) -> Tensor:
        """L_CL at the current parameters (a float tensor; 0 before the first task ends)."""
        if not self.tasks:
            return torch.zeros(())
        with torch.no_grad():
            total = sum(((s * p - 2 * q) * p).sum() for s, p, q in zip(self.S, self.params, self.P))
            return 0.5 * self.lam * (total + self.R)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if optimizer is not self._optimizer:
            return
        if self.pending:  # deferred Fisher: this step's gradient is at theta* of the task that just ended
            self._consolidate_deferred()
        ending = (self.steps + 1) % self.alpha == 0
        if self.importance == "path" or (ending and self.importance == "fisher" and self.fisher == "last_step"):
            self._grad = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.importance == "path":
            self._theta = [p.detach().clone() for p in self.params]
        if not self.tasks:
            return
        logging_now = getattr(trainer._logger_connector, "should_update_logs", True) or self.log_every_step
        value = self.penalty() if logging_now else None
        with torch.no_grad():
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in self.params]
            torch._foreach_addcmul_(grads, self.S, [p.detach() for p in self.params], value=self.lam)
            if self.reference:
                torch._foreach_add_(grads, self.P, alpha=-self.lam)
        if value is not None:
            pl_module.log(self.log_key, value, on_step=True, on_epoch=False, batch_size=1)
            pl_module.log("train/cl_tasks", float(self.tasks), on_step=True, on_epoch=False, batch_size=1)

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if self.importance == "path" and self._theta is not None and self._grad is not None:
            with torch.no_grad():
                delta = torch._foreach_sub([p.detach() for p in self.params], self._theta)
                torch._foreach_addcmul_(self.omega, self._grad, delta, value=-1.0)
            self._theta = None
        if self.steps % self.alpha == 0:
            if self.importance == "fisher" and self.fisher == "deferred":
                self.pending = True
            else:
                self._end_task()
        if self.importance != "path":
            self._grad = None

    # ------------------------------------------------------------------ task boundary
    def _importance(self) -> list[Tensor]:
        if self.importance == "ones":
            return [torch.ones_like(p) for p in self.params]
        if self.importance == "path":
            return [o.clamp(min=0.0) for o in self.omega]
        module = self._module
        if self.fisher == "extra_pass":
            with torch.enable_grad():
                flags = [p.requires_grad for p in self.params]
                for p in self.params:
                    p.requires_grad_(True)
                loss = module.importance_loss()
                losses = loss.reshape(-1) if loss.dim() else loss.reshape(1)
                squares = [torch.zeros_like(p) for p in self.params]
                for i, li in enumerate(losses):  # a vector: per-sample losses, Fisher = mean of squared gradients
                    grads = torch.autograd.grad(li, self.params, allow_unused=True, retain_graph=i + 1 < len(losses))
                    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)]
                    grads = self._mean_across_ranks(grads)
                    torch._foreach_addcmul_(squares, grads, grads, value=1.0 / len(losses))
                for p, flag in zip(self.params, flags):
                    p.requires_grad_(flag)
            return [s.detach() for s in squares]
        grads = self._grad or [torch.zeros_like(p) for p in self.params]
        return [g.detach() ** 2 for g in grads]

    def _consolidate_deferred(self) -> None:
        """Deferred Fisher: Q = (rank-averaged gradient of this step, before the penalty) ** 2 at theta*."""
        grads = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in self.params]
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1 and not isinstance(trainer.strategy, DDPStrategy):
            grads = self._mean_across_ranks(grads)  # DDP's reducer has already averaged p.grad
        self.consolidate(torch._foreach_mul(grads, grads), [p.detach() for p in self.params])
        self.pending = False

    def _mean_across_ranks(self, tensors: list[Tensor]) -> list[Tensor]:
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        flat = trainer.strategy.reduce(flat, reduce_op="mean")
        return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def _end_task(self) -> None:
        q = self._importance()
        if self.importance != "fisher":  # fisher: already from rank-averaged gradients
            q = self._mean_across_ranks(q)
        self.consolidate(q, [p.detach() for p in self.params])
        if self.importance == "path":
            for o in self.omega:
                o.zero_()

    def consolidate(self, q: list[Tensor], theta: list[Tensor]) -> None:
        """Fold task ``k``'s importance ``q`` and parameters ``theta`` into S, P and R (online memory)."""
        with torch.no_grad():
            torch._foreach_mul_(self.S, self.gamma)
            torch._foreach_add_(self.S, q)
            if self.reference:
                torch._foreach_mul_(self.P, self.gamma)
                torch._foreach_addcmul_(self.P, q, theta)
                self.R = self.gamma * self.R + float(sum((qi * ti * ti).sum() for qi, ti in zip(q, theta)))
        self.tasks += 1

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "S": [s.detach().cpu().clone() for s in self.S],
            "P": [p.detach().cpu().clone() for p in self.P],
            "omega": [o.detach().cpu().clone() for o in self.omega],
            "R": self.R,
            "steps": self.steps,
            "tasks": self.tasks,
            "pending": self.pending,
            "hparams": {"lam": self.lam, "alpha": self.alpha, "gamma": self.gamma, "importance": self.importance,
                        "reference": self.reference, "fisher": self.fisher},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.params:
            self._restore(state_dict)
        else:
            self._loaded_state = state_dict

    def _restore(self, state: dict[str, Any]) -> None:
        if state["names"] != self.names:
            raise ValueError(
                f"{type(self).__name__}: checkpoint protects parameters {state['names'][:3]}..., "
                f"this run's target {self.target!r} has {self.names[:3]}..."
            )
        if state["hparams"] != self.state_dict()["hparams"]:
            log.warning("%s: resuming with hyperparameters %s (checkpoint had %s)", type(self).__name__,
                        self.state_dict()["hparams"], state["hparams"])
        with torch.no_grad():
            for dst, src in zip(self.S, state["S"]):
                dst.copy_(src)
            for dst, src in zip(self.P, state["P"]):
                dst.copy_(src)
            for dst, src in zip(self.omega, state.get("omega", [])):
                dst.copy_(src)
        self.R, self.steps, self.tasks = float(state["R"]), int(state["steps"]), int(state["tasks"])
        self.pending = bool(state.get("pending", False))


class EWCPenalty(ContinualPenalty):
    """Online EWC: importance = diagonal empirical Fisher on a fresh minibatch (``fisher``: see the module docstring).

    The default ``fisher="deferred"`` costs no extra pass: the importance of the task that ended at theta* is the
    squared gradient the next step computes anyway at theta*, on its new minibatch.
    """

    def __init__(
        self,
        target: str = "discriminator",
        lam: float = 10.0,
        alpha: int = 1000,
        gamma: float = 0.99,
        importance: Importance = "fisher",
        reference: bool = True,
        log_key: str = "train/ewc_penalty",
        fisher: FisherMode = "deferred",
    ) -> None:
        super().__init__(target, lam, alpha, gamma, importance, reference, log_key, fisher)


class ISPenalty(ContinualPenalty):
    """Online intelligent synapses: importance = path integral of -grad * delta-theta over the task."""

    def __init__(
        self,
        target: str = "discriminator",
        lam: float = 10.0,
        alpha: int = 1000,
        gamma: float = 0.99,
        importance: Importance = "path",
        reference: bool = True,
        log_key: str = "train/is_penalty",
        fisher: FisherMode = "deferred",
    ) -> None:
        super().__init__(target, lam, alpha, gamma, importance, reference, log_key, fisher)
