"""Small real PyTorch models the tests export to ONNX.

Factories take no arguments so `modelservice export tests.modelzoo:mlp` works too.
Seeds are fixed so exported weights, and therefore outputs, are the same each run.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp() -> nn.Module:
    """Overhead-bound: 64 -> 256 -> 256 -> 10."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).eval()


def cnn() -> nn.Module:
    """Compute-bound: 3x64x64 image -> 10 classes."""
    return _cnn(16, 32, 64)


def cnn_wide() -> nn.Module:
    """cnn() with 1.5x the channels, about 3x the compute per image: in-process it runs
    about as fast here as the CNN behind issue 5's reference figures did there."""
    return _cnn(24, 48, 96)


def _cnn(c1: int, c2: int, c3: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c3, 10),
    ).eval()


def encoder() -> nn.Module:
    """A small transformer encoder: 32 tokens of 64 features -> 10 classes (2 layers, 4
    heads, mean-pooled). Attention mixes the tokens of a sample, never the samples of a
    batch, so batched and single runs must agree; in-process it gains about 2x from
    batching on a CPU, unlike the CNNs."""
    return _Encoder().eval()


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(
            d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))
