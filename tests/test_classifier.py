"""ImageClassifier reaches its target accuracies (slow: full trainings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules import ImageClassifier
from tests.helpers import CONFIGS, QUIET, out_args, run_cli


def test_network_shapes_and_named_layers() -> None:
    model = ImageClassifier(num_classes=5, channels=(8, 16), hidden=32)
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 5)
    names = dict(model.named_modules())
    assert {"net.block1", "net.block2", "net.fc", "net.out"} <= set(names)
    # block outputs are the max-pooled maps the ODIN paper takes features from
    assert names["net.block1"](x).shape == (3, 8, 14, 14)


def _fit_and_test(tmp_path: Path, config: str, *extra: str) -> float:
    common = ["--config", str(CONFIGS / config), *out_args(tmp_path), *QUIET, *extra]
    run_cli(["fit", *common])
    cli = run_cli(["test", *common, "--ckpt_path", "last"])
    return float(cli.trainer.callback_metrics["test/acc"])


@pytest.mark.slow
def test_sample_mnist_accuracy(sample_data: Path, tmp_path: Path) -> None:
    """configs/classifier_mnist.yaml on the 4,000/1,000 real-digit sample: >= 95% on its held-out split."""
    assert _fit_and_test(tmp_path, "classifier_mnist.yaml") >= 0.95


@pytest.mark.slow
@pytest.mark.realdata
def test_real_mnist_accuracy(shared_data: Path, tmp_path: Path) -> None:
    """configs/classifier_mnist.yaml on real MNIST: >= 99.0% on the official 10,000 test images."""
    acc = _fit_and_test(tmp_path, "classifier_mnist.yaml", f"--data.data_dir={shared_data / 'mnist'}")
    assert acc >= 0.99


@pytest.mark.slow
@pytest.mark.realdata
def test_real_fashion_mnist_accuracy(shared_data: Path, tmp_path: Path) -> None:
    """The same network on real Fashion-MNIST: >= 90% on the official test set."""
    acc = _fit_and_test(tmp_path, "classifier_fashion_mnist.yaml", f"--data.data_dir={shared_data / 'fashion_mnist'}")
    assert acc >= 0.90
