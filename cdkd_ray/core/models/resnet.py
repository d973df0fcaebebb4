"""ResNet backbones (v1.5: the stride sits on the 3x3 conv) with torchvision's parameter names and initialisation.

Built here rather than taken from torchvision: importing torchvision costs ~3 s per process (its ops and
detection models), paid by every training worker, teacher actor and serving replica that only needs a backbone.
The layout matches torchvision's, so its ImageNet state_dicts and SimpleBaseline checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

# blocks per stage, and whether the net uses Bottleneck (1x1-3x3-1x1, 4x channels) blocks
RESNET_LAYOUTS: dict[str, tuple[tuple[int, int, int, int], bool]] = {
    "resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True), "resnet152": ((3, 8, 36, 3), True),
}


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, planes * self.expansion, 1), nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _stage(block: type[BasicBlock] | type[Bottleneck], cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    cout = planes * block.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
    layers = [block(cin, planes, stride, downsample)] + [block(cout, planes, 1, None) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetBackbone(nn.Module):
    """conv1/bn1/relu/maxpool, then layer1..layer4 (strides 4, 4, 8, 16, 32); no pooling or classifier."""

    def __init__(self, arch: str):
        super().__init__()
        counts, bottleneck = RESNET_LAYOUTS[arch]
        block = Bottleneck if bottleneck else BasicBlock
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), counts)):
            setattr(self, f"layer{i + 1}", _stage(block, cin, planes, blocks, 1 if i == 0 else 2))
            cin = planes * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
