"""A ModelCheckpoint whose ``last.ckpt`` resumes where training was told to stop, inside the epoch.

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last`` at its periodic saves (every n steps, every
``train_time_interval``, epoch or validation end) and, when it has not saved at all in the run, once more in
``on_train_end``. When training is stopped in the middle of an epoch (the ``max_time`` Timer, a callback setting
``trainer.should_stop``), Lightning ends the epoch and runs its epoch-end hooks, so

* where it saves at epoch end (or in ``on_train_end``), ``last`` holds the stopped step but as a finished epoch: a
  resume starts the next epoch, and the rest of the stopped one is never trained on;
* where it saves only after validation (``check_val_every_n_epoch > 1``), ``last`` stays at the last validated
  epoch once there has been one: a resume repeats everything since.

:class:`ResumableCheckpoint` also saves ``last`` in ``on_train_batch_end`` of the batch at which training stops
(Lightning runs checkpoint callbacks after the others, the Timer among them), where ``every_n_train_steps`` saves.
The loops' progress and the training loader's position (a stateful loader such as ``USPTODataModule``'s) are those
of that batch, and ``--ckpt_path last`` continues the epoch at the next one. The CLI's ``--checkpoint.*`` is one.
"""

from __future__ import annotations

from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (the same arguments) whose ``last.ckpt`` is always where training ended.

    With ``save_last``, ``last`` is also written

    * in ``on_train_batch_end`` of the batch at which training is told to stop (``trainer.should_stop``: the
      ``max_time`` Timer, early stopping in a callback) or reaches ``max_steps``: inside the epoch, so a resume
      continues it;
    * in ``on_train_end`` when the last save is of an earlier step (Lightning writes ``last`` there only when it
      has not saved at all in the run; e.g. a run validating every 5 epochs for 7 epochs would keep epoch 5's).

    Each step is saved at most once, as ``ModelCheckpoint`` does. Everything else (top-k, monitors, intervals,
    file names, state in the checkpoint) is ``ModelCheckpoint``'s.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        ends_here = trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step
        if ends_here:
            self._save_last_if_newer(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_newer(trainer)

    def _save_last_if_newer(self, trainer: Trainer) -> None:
        # _should_skip_saving_checkpoint: not in sanity checks or fast_dev_run, and not twice for one global step
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
