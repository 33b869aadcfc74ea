"""ResumableCheckpoint: ``last.ckpt`` is where training ended, inside the epoch, and a resume continues that epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.checkpoint import ResumableCheckpoint

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)


class StopAt(Callback):
    """What the ``max_time`` Timer does when time runs out: ``should_stop`` at the end of a training batch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


class Record(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches.append((trainer.current_epoch, batch_idx))


def _stop_and_resume(cls: type[ModelCheckpoint], folder: Path, stop: int) -> tuple[dict, list[tuple[int, int]]]:
    """16-batch epochs stopped after step ``stop``, then resumed from ``last.ckpt`` to the end of epoch 2."""
    Trainer(max_epochs=5, limit_train_batches=16, limit_val_batches=0, callbacks=[StopAt(stop), cls(dirpath=folder,
            save_last=True)], **QUIET).fit(BoringModel())
    state = torch.load(folder / "last.ckpt", weights_only=False)
    record = Record()
    Trainer(max_epochs=3, limit_train_batches=16, limit_val_batches=0,
            callbacks=[record, cls(dirpath=folder, save_last=True)], **QUIET).fit(BoringModel(),
                                                                                   ckpt_path=folder / "last.ckpt")
    return state, record.batches


@pytest.mark.parametrize("stop", [7, 27])  # inside the first epoch; inside the second, after an epoch-end save
def test_resume_continues_the_epoch_where_training_was_stopped(tmp_path: Path, stop: int) -> None:
    epoch, done = divmod(stop, 16)
    state, batches = _stop_and_resume(ResumableCheckpoint, tmp_path / "ours", stop)
    assert state["global_step"] == stop
    assert batches[0] == (epoch, done)  # the next batch of the stopped epoch
    assert len(batches) == 3 * 16 - stop  # every batch of epochs 0-2 trained exactly once over the two runs

    # Lightning's own ModelCheckpoint saves the same step but as a finished epoch: the resume skips its rest
    state, batches = _stop_and_resume(ModelCheckpoint, tmp_path / "lightning", stop)
    assert state["global_step"] == stop and batches[0] == (epoch + 1, 0)
    assert len(batches) == (2 - epoch) * 16


def test_last_is_the_final_step_when_checkpoints_follow_a_sparse_validation(tmp_path: Path) -> None:
    """Validation every 5 epochs, 7 epochs: ModelCheckpoint's ``last`` stays at epoch 5's step, ours is the end."""
    final = {}
    for cls in (ModelCheckpoint, ResumableCheckpoint):
        folder = tmp_path / cls.__name__
        Trainer(max_epochs=7, limit_train_batches=4, limit_val_batches=1, check_val_every_n_epoch=5,
                num_sanity_val_steps=0, callbacks=[cls(dirpath=folder, save_last=True)], **QUIET).fit(BoringModel())
        final[cls] = torch.load(folder / "last.ckpt", weights_only=False)["global_step"]
        assert (folder / "last.ckpt").is_file() and not list(folder.glob("last-v*.ckpt"))
    assert final == {ModelCheckpoint: 5 * 4, ResumableCheckpoint: 7 * 4}


def test_max_steps_inside_an_epoch_saves_a_resumable_last(tmp_path: Path) -> None:
    Trainer(max_steps=10, limit_train_batches=16, limit_val_batches=0,
            callbacks=[ResumableCheckpoint(dirpath=tmp_path, save_last=True)], **QUIET).fit(BoringModel())
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    progress = state["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert state["global_step"] == 10 and progress["completed"] == 0  # epoch 0 not counted finished
    record = Record()
    Trainer(max_steps=16, limit_train_batches=16, limit_val_batches=0,
            callbacks=[record, ResumableCheckpoint(dirpath=tmp_path, save_last=True)], **QUIET).fit(
        BoringModel(), ckpt_path=tmp_path / "last.ckpt")
    assert record.batches == [(0, i) for i in range(10, 16)]
