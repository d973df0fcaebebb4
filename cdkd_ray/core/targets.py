"""Gaussian heatmap targets, rendered where the model trains from the batch's crop joints (torch).

The data path ships each person's joints ([K,3]: x, y in input-crop pixels and the labelled flag), not
its dense targets: at 256x192 the targets are 209 KB a person against 147 KB for the crop, so leaving
them out takes ~60% of the bytes off every Arrow conversion, object-store trip and shuffle-buffer copy,
and the step renders them on its own device in a few array operations.
"""

from __future__ import annotations

import torch

from cdkd_ray.core.data_config import DataConfig


def _gaussian_1d(mu: torch.Tensor, size: int, sigma: float, radius: float) -> torch.Tensor:
    """exp(-d^2 / 2 sigma^2) at every heatmap pixel 0..size-1 along one axis, 0 beyond `radius`: [..., size]."""
    d = torch.arange(size, device=mu.device, dtype=mu.dtype) - mu[..., None]
    return torch.exp(-d ** 2 / (2 * sigma ** 2)) * (d.abs() <= radius)


def encode_heatmaps(joints: torch.Tensor, input_size: tuple[int, int], heatmap_size: tuple[int, int],
                    sigma: float, subpixel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian targets [N,K,h,w] (peak 1) and target weights [N,K] from joints [N,K,3] (x, y, labelled).

    x, y are input-crop pixels; heatmap pixel j sits at input pixel j * stride (SimpleBaseline). The
    Gaussian is cut at 3 sigma; its centre is the nearest heatmap pixel (SimpleBaseline) or, with
    `subpixel`, the exact position (unbiased, best with DARK decoding). The weight is 0 for unlabelled
    joints and for Gaussians entirely outside the heatmap, whose target is then all zeros.
    """
    (in_h, in_w), (h, w) = input_size, heatmap_size
    stride = torch.tensor([in_w / w, in_h / h], dtype=torch.float32, device=joints.device)
    mu = joints[..., :2].float() / stride
    if not subpixel:
        mu = torch.floor(mu + 0.5)
    radius = 3 * sigma
    ul, br = torch.floor(mu - radius), torch.floor(mu + radius + 1)
    inside = (ul[..., 0] < w) & (ul[..., 1] < h) & (br[..., 0] >= 0) & (br[..., 1] >= 0)
    weight = ((joints[..., 2] > 0) & inside).float()
    gx, gy = _gaussian_1d(mu[..., 0], w, sigma, radius), _gaussian_1d(mu[..., 1], h, sigma, radius)
    return (gy * weight[..., None])[..., :, None] * gx[..., None, :], weight


def batch_targets(joints: torch.Tensor, data: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The training targets and weights of a batch's joints, as the data config asks for them."""
    return encode_heatmaps(joints, data.input_size, data.heatmap_size, data.sigma, data.subpixel_targets)
