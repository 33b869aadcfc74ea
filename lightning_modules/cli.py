"""The ``lightning`` console script: LightningCLI in subclass mode over paperzoo's modules and data.

``lightning fit|validate|test|predict --config configs/X.yaml`` or, equivalently,
``python -m lightning_modules ...``. Importing the packages below registers every module,
DataModule and callback so that configs can name classes briefly (``class_path: ImageClassifier``).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import callbacks
import datamodules
import lightning_modules
from callbacks.checkpoint import ResumableCheckpoint


def _import_all(*packages) -> None:
    """Import every module of our packages so each class can be named briefly in a config."""
    for package in packages:
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if ".samples" in info.name or info.name.endswith(("__main__", ".cli")):
                continue
            importlib.import_module(info.name)


_import_all(lightning_modules, datamodules, callbacks)

# runs/<experiment>/checkpoints is shared by every version of an experiment on purpose (--ckpt_path last)
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

RUNS_DIR = "runs"

TRAINER_DEFAULTS: dict[str, Any] = {
    "default_root_dir": RUNS_DIR,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": RUNS_DIR, "name": None, "default_hp_metric": False},
    },
}


def _experiment_name(cfg: Namespace) -> str:
    """The config file's stem (``classifier_mnist``), else the model class name in lower case."""
    configs = cfg.get("config") or []
    if configs:
        return Path(str(configs[-1])).stem  # the last --config given wins, as its values do
    class_path = cfg.get("model.class_path") or "model"
    return class_path.rsplit(".", 1)[-1].lower()


class PaperzooCLI(LightningCLI):
    """LightningCLI with paperzoo's defaults.

    * seed 0 unless ``--seed_everything`` says otherwise; the resolved config saved (overwritten) per run;
    * TensorBoard under ``runs/<experiment>/version_N`` where ``<experiment>`` is the config's file name;
    * ``--checkpoint.*``: a ModelCheckpoint (:class:`~callbacks.checkpoint.ResumableCheckpoint`) that always keeps
      ``last.ckpt`` in ``runs/<experiment>/checkpoints``, shared by every version of the experiment, so
      ``--ckpt_path last`` resumes the latest run; ``last`` is where training ended, inside the epoch when
      ``--trainer.max_time`` stops it, and the resume continues that epoch.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_kwargs", {"prog": "lightning"})
        super().__init__(
            LightningModule, LightningDataModule, *args, subclass_mode_model=True, subclass_mode_data=True, **kwargs
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ResumableCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        name = _experiment_name(cfg)
        logger = cfg.trainer.logger
        save_dir = RUNS_DIR
        if isinstance(logger, Namespace) and logger.get("class_path", "").endswith("TensorBoardLogger"):
            if logger.init_args.get("name") is None:
                logger.init_args.name = name
            name = logger.init_args.name
            save_dir = logger.init_args.get("save_dir") or save_dir
        if cfg.checkpoint.get("dirpath") is None:
            cfg.checkpoint.dirpath = os.path.join(save_dir, name, "checkpoints")

    def instantiate_trainer(self, **kwargs: Any):
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if config.get("enable_checkpointing") is False:
            # Lightning refuses a ModelCheckpoint beside enable_checkpointing=False: drop ours
            extra = [cb for cb in extra if not isinstance(cb, ModelCheckpoint)]
        return self._instantiate_trainer(config, extra)


def cli(args: list[str] | None = None, run: bool = True) -> PaperzooCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``. Tests call this."""
    return PaperzooCLI(args=args, run=run)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``lightning`` console script."""
    cli(args)


if __name__ == "__main__":
    main()
