"""Recurrent networks for sequences of feature frames (e.g. MFCCs)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer over batch-first sequences.

    Returns the output sequence ``(N, T, 2H)``, or with ``last=True`` the summary ``(N, 2H)``: the forward
    direction's last step beside the backward direction's first (each direction's final state, like
    Keras' ``Bidirectional(LSTM(return_sequences=False))``).
    """

    def __init__(self, in_features: int, hidden: int, last: bool = False) -> None:
        super().__init__()
        self.hidden = hidden
        self.last = last
        self.lstm = nn.LSTM(in_features, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        if not self.last:
            return out
        h = self.hidden
        return torch.cat([out[:, -1, :h], out[:, 0, h:]], dim=-1)


class BiLSTMClassifier(nn.Module):
    """The ODIN paper's speech model: three bidirectional LSTM layers, 30% dropout after each, softmax output.

    Input ``(N, T, features)`` (e.g. 64 MFCCs per frame). Named parts ``lstm1``, ``drop1``, ``lstm2``,
    ``drop2``, ``lstm3`` (returns the final states ``(N, 2H)``: the layer ODIN models), ``drop3``, ``out``.
    """

    def __init__(self, in_features: int = 64, num_classes: int = 25, hidden: int = 128, dropout: float = 0.3) -> None:
        super().__init__()
        self.lstm1 = BiLSTMLayer(in_features, hidden)
        self.drop1 = nn.Dropout(dropout)
        self.lstm2 = BiLSTMLayer(2 * hidden, hidden)
        self.drop2 = nn.Dropout(dropout)
        self.lstm3 = BiLSTMLayer(2 * hidden, hidden, last=True)
        self.drop3 = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.lstm1(x))
        x = self.drop2(self.lstm2(x))
        return self.out(self.drop3(self.lstm3(x)))
