"""Student export: student-only weights + model card, optional ONNX (with an optional decode)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from torch import nn

from cdkd_ray.core.keypoints import FLIP_PAIRS, KEYPOINT_NAMES, SKELETON_1BASED
from cdkd_ray.core.models.inference import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from cdkd_ray.core.checkpoint import CARD_FILE, EXPORT_FILES, ONNX_FILE, STUDENT_FILE, load_checkpoint
from cdkd_ray.core.errors import CheckpointError
from cdkd_ray.core.models.loading import build_from_state, infer_model_config, to_pose_resnet_keys
from cdkd_ray.core.models.pose_resnet import PoseResNet, count_flops, count_parameters
from cdkd_ray.core.models.strides import heatmap_size_for


class HeatmapDecoder(nn.Module):
    """In-graph decode for edge users: argmax + quarter-pixel shift -> input-crop pixels and scores."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int], heatmap_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.stride_x = input_size[1] / heatmap_size[1]
        self.stride_y = input_size[0] / heatmap_size[0]

    def forward(self, x: torch.Tensor):
        hm = self.model(x)
        n, k, h, w = hm.shape
        flat = hm.reshape(n, k, h * w)
        scores, idx = flat.max(-1)
        px = (idx % w).to(hm.dtype)
        py = torch.div(idx, w, rounding_mode="floor").to(hm.dtype)
        padded = torch.nn.functional.pad(hm, (1, 1, 1, 1), mode="replicate").reshape(n, k, (h + 2) * (w + 2))
        base = (py.long() + 1) * (w + 2) + (px.long() + 1)
        right, left = padded.gather(-1, (base + 1)[..., None])[..., 0], padded.gather(-1, (base - 1)[..., None])[..., 0]
        down, up = padded.gather(-1, (base + w + 2)[..., None])[..., 0], padded.gather(-1, (base - w - 2)[..., None])[..., 0]
        inner_x = ((px > 0) & (px < w - 1)).to(hm.dtype)
        inner_y = ((py > 0) & (py < h - 1)).to(hm.dtype)
        px = px + 0.25 * torch.sign(right - left) * inner_x
        py = py + 0.25 * torch.sign(down - up) * inner_y
        keypoints = torch.stack([px * self.stride_x, py * self.stride_y], -1)
        return keypoints, scores


def student_state_from_checkpoint(model_state: dict) -> dict:
    """The student's own weights: train-only modules (align, generator) stripped."""
    return to_pose_resnet_keys(model_state, "cdkd") if any(k.startswith("student.") for k in model_state) else model_state


def _model_card(model: PoseResNet, model_cfg, trainer_state: dict, checkpoint_dir: str) -> dict:
    config = trainer_state.get("config", {})
    data = config.get("data", {})
    input_size = tuple(data.get("input_size", (256, 192)))
    return {
        "format": "cdkd-ray student v1", "architecture": f"SimpleBaseline {model_cfg.arch}", "arch": model_cfg.arch,
        "num_keypoints": model_cfg.num_keypoints, "deconv_channels": model_cfg.deconv_channels,
        "input_size": list(input_size), "heatmap_size": list(data.get("heatmap_size", heatmap_size_for(input_size))),
        "channel_order": model_cfg.channel_order,
        "normalisation": {"mean": IMAGENET_MEAN_RGB.tolist(), "std": IMAGENET_STD_RGB.tolist(),
                          "scale": "pixel / 255, mean/std given in RGB order"},
        "input_layout": "float32 [N,3,H,W] in channel_order",
        "keypoint_names": list(KEYPOINT_NAMES), "flip_pairs": [list(p) for p in FLIP_PAIRS],
        "skeleton": [list(e) for e in SKELETON_1BASED],
        "decode": data.get("decode", "argmax"), "sigma": data.get("sigma"),
        "parameters": count_parameters(model), "flops": count_flops(model, input_size),
        "metrics": trainer_state.get("metrics", {}), "epoch": trainer_state.get("epoch"),
        "source_checkpoint": os.path.abspath(checkpoint_dir), "training_config": config,
        "version": trainer_state.get("version", 1),
    }


def check_export_target(out_dir: str) -> None:
    """Refuse to replace a folder that is not empty and not an earlier export (runs, checkpoints, your files)."""
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise CheckpointError(f"--out {out_dir} is a file, not a folder")
        return
    foreign = sorted(set(os.listdir(out_dir)) - set(EXPORT_FILES))
    if foreign or not os.path.exists(os.path.join(out_dir, STUDENT_FILE)):
        raise CheckpointError(f"--out {out_dir} holds {', '.join(foreign[:5]) or 'other files'}: it is not an earlier "
                              "student export, so it is not replaced; choose a new or empty folder")


def export_student(checkpoint_dir: str, out_dir: str, onnx: bool = False, onnx_decode: bool = False,
                   opset: int = 17) -> dict:
    """Write student.pt + model_card.json (+ student.onnx) into out_dir, atomically.

    `out_dir` must be new, empty, or an earlier export (which is then replaced in one rename).
    """
    out_dir = os.path.abspath(out_dir)
    check_export_target(out_dir)
    model_state, _, trainer_state = load_checkpoint(checkpoint_dir)
    state = student_state_from_checkpoint(model_state)
    model_cfg = infer_model_config(state)
    model_cfg.channel_order = trainer_state.get("config", {}).get("model", {}).get("channel_order", "RGB")
    model = build_from_state(state, model_cfg, checkpoint_dir).eval()
    card = _model_card(model, model_cfg, trainer_state, checkpoint_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=os.path.dirname(out_dir))
    try:
        torch.save(model.state_dict(), os.path.join(tmp, STUDENT_FILE))
        if onnx:
            card["onnx"] = export_onnx(model, os.path.join(tmp, ONNX_FILE), tuple(card["input_size"]),
                                       tuple(card["heatmap_size"]), with_decode=onnx_decode, opset=opset)
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            json.dump(card, f, indent=1)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": out_dir, "parameters": card["parameters"], "flops": card["flops"],
            "onnx": os.path.join(out_dir, ONNX_FILE) if onnx else None, "metrics": card["metrics"]}


def _replace_dir(new: str, target: str) -> None:
    """Put `new` at `target`; an earlier export there is moved aside first and removed only afterwards."""
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=".export-old-", dir=os.path.dirname(target))
        os.rmdir(old)
        os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        if old:
            os.replace(old, target)  # put the earlier export back
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def export_onnx(model: PoseResNet, path: str, input_size: tuple[int, int], heatmap_size: tuple[int, int],
                with_decode: bool = False, opset: int = 17) -> dict:
    """ONNX with a dynamic batch; outputs heatmaps, or keypoints (input-crop pixels) + scores."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CheckpointError("ONNX export needs the onnx package, a base dependency: run `pip install -e .` "
                              "(or `pip install onnx onnxruntime`)") from None
    module: nn.Module = HeatmapDecoder(model, input_size, heatmap_size) if with_decode else model
    module.eval()
    outputs = ["keypoints", "scores"] if with_decode else ["heatmaps"]
    dummy = torch.zeros(2, 3, *input_size)
    torch.onnx.export(module, (dummy,), path, input_names=["image"], output_names=outputs, opset_version=opset,
                      dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}, dynamo=False)
    return {"file": ONNX_FILE, "opset": opset, "inputs": {"image": ["batch", 3, *input_size]},
            "outputs": outputs, "decode_in_graph": with_decode,
            "keypoints_space": "input-crop pixels (map back with the crop's affine)" if with_decode else None}
