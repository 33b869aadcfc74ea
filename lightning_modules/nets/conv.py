"""Convolutional networks for small images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv blocks (conv-ReLU-conv-ReLU-maxpool) then a dense head: the ODIN paper's Fashion-MNIST CNN.

    Named parts (``block1``, ``block2``, ..., ``fc``, ``out``) are the layers the outlier-scoring
    callback hooks. ``block{i}`` ends with its max-pooling layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        blocks = []
        c_in, side = in_channels, image_size
        for c_out in channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(c_out, c_out, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            c_in, side = c_out, side // 2
        for i, block in enumerate(blocks, start=1):
            self.add_module(f"block{i}", block)
        self.num_blocks = len(blocks)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, hidden), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        return self.out(self.dropout(self.fc(x)))
