"""Loading pose models from our checkpoints, our student exports, and external checkpoint files.

External layouts (auto-detected, `state_dict` wrappers and `module.` prefixes removed):
original SimpleBaseline (`conv1.*`, `layer1..4.*`, `deconv_layers.*`, `final_layer.*`, BGR input),
mmpose 1.x (`backbone.*`, `head.deconv_layers.*`, `head.final_layer.*`, RGB) and mmpose 0.x
(`backbone.*`, `keypoint_head.*`, RGB). Files are read with weights_only=True.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import torch

from cdkd_ray.core.checkpoint import CARD_FILE, EXPORT_POINTER, MODEL_FILE, STATE_FILE, STUDENT_FILE
from cdkd_ray.core.errors import CheckpointError
from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet

LAYOUT_CHANNEL_ORDER = {"simplebaseline": "BGR", "mmpose1": "RGB", "mmpose0": "RGB", "cdkd": "RGB"}
# Blocks in layer3 tell the depth; conv3 in a block tells Bottleneck from BasicBlock.
DEPTH_BY_BLOCKS = {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50",
                   (True, 23): "resnet101", (True, 36): "resnet152"}


@dataclass
class LoadedModel:
    model: PoseResNet
    model_cfg: ModelConfig
    layout: str
    channel_order: str
    source: str
    card: dict


def _torch_load(path: str):
    from cdkd_ray.core.storage import resolve

    location = resolve(path)
    if not location.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    import io

    try:
        return torch.load(io.BytesIO(location.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None


def unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    """The tensor mapping inside common wrappers ({'state_dict': ...}, {'model': ...}), without 'module.'."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("no state_dict of tensors found in the checkpoint")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    keys = state.keys()
    if any(k.startswith("student.") for k in keys):
        return "cdkd"
    if any(k.startswith("head.final_layer.") for k in keys):
        return "mmpose1"
    if any(k.startswith("keypoint_head.final_layer.") for k in keys):
        return "mmpose0"
    if "final_layer.weight" in keys and "conv1.weight" in keys:
        return "simplebaseline"
    sample = ", ".join(list(keys)[:5])
    raise CheckpointError(f"unrecognised checkpoint layout (first keys: {sample}); expected SimpleBaseline, "
                          "mmpose 0.x/1.x or a cdkd-ray checkpoint")


def to_pose_resnet_keys(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename a detected layout's keys to PoseResNet's (= the original SimpleBaseline names)."""
    renames = {
        "cdkd": [("student.", "")],
        "simplebaseline": [],
        "mmpose1": [("backbone.", ""), ("head.", "")],
        "mmpose0": [("backbone.", ""), ("keypoint_head.", "")],
    }[layout]
    out = {}
    for key, value in state.items():
        if layout == "cdkd" and not key.startswith("student."):
            continue  # train-only modules (align, generator) are not part of the pose model
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def infer_model_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    bottleneck = any(re.match(r"layer1\.0\.conv3\.", k) for k in state)
    arch = DEPTH_BY_BLOCKS.get((bottleneck, len(blocks)))
    if arch is None or "final_layer.weight" not in state:
        raise CheckpointError(f"cannot infer the ResNet depth ({len(blocks)} blocks in layer3, "
                              f"{'Bottleneck' if bottleneck else 'BasicBlock'})")
    final = state["final_layer.weight"]
    return ModelConfig(arch=arch, num_keypoints=final.shape[0], deconv_channels=final.shape[1])


def build_from_state(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> PoseResNet:
    model = PoseResNet(cfg)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit {cfg.arch}: {len(missing)} missing key(s) {missing[:6]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:6]}")
    return model


def follow_export_pointer(location):
    """An export published to object storage keeps its files under a version folder that EXPORT_POINTER names."""
    pointer = location.join(EXPORT_POINTER)
    if not pointer.exists():
        return location
    return location.join(json.loads(pointer.read_bytes())["version"])


def load_pose_model(path: str, channel_order: str | None = None) -> LoadedModel:
    """A PoseResNet from a cdkd-ray checkpoint dir, a student export dir, or an external file."""
    card: dict = {}
    from cdkd_ray.core.storage import resolve

    location = resolve(path)
    if location.fs.isdir(location.path):
        location = follow_export_pointer(location)
        if location.join(STUDENT_FILE).exists():
            card_file = location.join(CARD_FILE)
            card = json.loads(card_file.read_bytes()) if card_file.exists() else {}
            file = location.join(STUDENT_FILE).uri
        elif location.join(MODEL_FILE).exists():
            file = location.join(MODEL_FILE).uri
            state_file = location.join(STATE_FILE)
            if state_file.exists():
                card = {"trainer_state": json.loads(state_file.read_bytes())}
        else:
            raise CheckpointError(f"{path} holds neither student.pt nor model.pt")
    else:
        file = path
    state = unwrap_state_dict(_torch_load(file))
    layout = detect_layout(state)
    state = to_pose_resnet_keys(state, layout)
    cfg = infer_model_config(state)
    order = channel_order or card.get("channel_order") or LAYOUT_CHANNEL_ORDER[layout]
    cfg.channel_order = order
    model = build_from_state(state, cfg, path)
    return LoadedModel(model, cfg, layout, order, os.path.abspath(path) if not location.is_remote else path, card)
