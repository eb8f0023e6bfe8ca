"""The digits CNN in PyTorch: the bundled PyTorch source model (NCHW input ``image``: N x 1 x 8 x 8).

Load it the way edgeopt does: ``edgeopt compress examples/digits/digits_net.py:build
--weights examples/digits/digits_torch.pt``.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, 256), nn.ReLU(), nn.Dropout(0.3),
                                  nn.Linear(256, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.pw(self.dw(self.stem(image))), 2)  # 8x8 -> 4x4
        x = nn.functional.avg_pool2d(self.block(x), 2)  # 4x4 -> 2x2
        return torch.softmax(self.head(x), dim=1)


def build() -> DigitsNet:
    return DigitsNet().eval()
