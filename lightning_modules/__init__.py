"""LightningModules, one file per paper; ``nets/`` holds the plain networks they share."""

from lightning_modules.base import PaperzooModule
from lightning_modules.classifier import ImageClassifier

__all__ = ["ImageClassifier", "PaperzooModule"]
