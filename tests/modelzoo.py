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
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
