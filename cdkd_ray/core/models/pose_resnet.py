"""SimpleBaseline pose ResNet: a ResNet backbone (torchvision layout) + 3 deconvolutions + 1x1 heatmap head.

Parameter names follow the original SimpleBaseline layout (conv1.*, layer1..4.*, deconv_layers.*,
final_layer.*), so its checkpoints load as they are. `forward(x, taps)` returns heatmaps, or
(heatmaps, {tap: feature}) when taps are named: one forward that DDP and export both see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
from torch import nn

from cdkd_ray.core.keypoints import NUM_KEYPOINTS
from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.models.resnet import RESNET_LAYOUTS, ResNetBackbone

Arch = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
ARCHS: tuple[str, ...] = get_args(Arch)
# resnet18/34 use BasicBlock; deeper nets use Bottleneck (4x channels)
BASIC_BLOCK_ARCHS = tuple(a for a, (_, bottleneck) in RESNET_LAYOUTS.items() if not bottleneck)
BACKBONE_TAPS = ("stem", "layer1", "layer2", "layer3", "layer4")
DECONV_TAPS = ("deconv1", "deconv2", "deconv3")
TAPS = BACKBONE_TAPS + DECONV_TAPS
# Stride of each tap relative to the input, and its channels for BasicBlock / Bottleneck nets.
TAP_STRIDES = {"stem": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32, "deconv1": 16, "deconv2": 8, "deconv3": 4}


@dataclass
class ModelConfig:
    arch: Arch = "resnet18"
    num_keypoints: int = NUM_KEYPOINTS
    deconv_channels: int = 256
    num_deconv: int = 3
    backbone_weights: Optional[str] = None  # a torchvision ImageNet state_dict file, if you have one
    channel_order: Literal["RGB", "BGR"] = "RGB"

    def validate(self, where: str = "model") -> None:
        if self.num_deconv != 3:
            raise ConfigError(f"{where}.num_deconv: SimpleBaseline uses 3 deconvolutions (heatmap = input / 4)")
        if self.deconv_channels < 1 or self.num_keypoints < 1:
            raise ConfigError(f"{where}: deconv_channels and num_keypoints must be positive")


def tap_channels(arch: str, tap: str, deconv_channels: int = 256) -> int:
    """Channels of a tap point for an architecture."""
    expansion = 1 if arch in BASIC_BLOCK_ARCHS else 4
    base = {"stem": 64, "layer1": 64 * expansion, "layer2": 128 * expansion, "layer3": 256 * expansion,
            "layer4": 512 * expansion}
    if tap in base:
        return base[tap]
    if tap in DECONV_TAPS:
        return deconv_channels
    raise ConfigError(f"unknown tap '{tap}' (choose from {', '.join(TAPS)})")


class PoseResNet(nn.Module):
    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        backbone = ResNetBackbone(cfg.arch)
        if cfg.backbone_weights:
            load_backbone_weights(backbone, cfg.backbone_weights)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(backbone, name))
        in_ch = tap_channels(cfg.arch, "layer4")
        layers: list[nn.Module] = []
        for _ in range(cfg.num_deconv):
            layers += [nn.ConvTranspose2d(in_ch, cfg.deconv_channels, 4, stride=2, padding=1, output_padding=0, bias=False),
                       nn.BatchNorm2d(cfg.deconv_channels), nn.ReLU(inplace=True)]
            in_ch = cfg.deconv_channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(in_ch, cfg.num_keypoints, 1)
        self._init_head()

    def _init_head(self) -> None:
        """SimpleBaseline initialisation of the deconv head and the final layer."""
        for m in self.deconv_layers.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.final_layer.weight, std=0.001)
        nn.init.zeros_(self.final_layer.bias)

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] = ()):
        feats: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats["stem"] = x
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats[name] = x
        for i in range(len(self.deconv_layers) // 3):
            x = self.deconv_layers[3 * i + 2](self.deconv_layers[3 * i + 1](self.deconv_layers[3 * i](x)))
            feats[f"deconv{i + 1}"] = x
        heatmaps = self.final_layer(x)
        if not taps:
            return heatmaps
        return heatmaps, {t: feats[t] for t in taps}


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a torchvision ResNet ImageNet state_dict file into the backbone (fc ignored)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(f"backbone weights {path} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, input_size: tuple[int, int], taps: tuple[str, ...] = ()) -> int:
    """FLOPs of one forward pass at batch 1 (torch's flop counter: a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    x = torch.zeros(1, 3, *input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x, taps) if taps else module(x)
    module.train(was_training)
    return int(counter.get_total_flops())


