"""`cdkd-ray model-info`: parameters and FLOPs of the student, the teacher and the train-only modules."""

from __future__ import annotations

from cdkd_ray.core.config import load_config
from cdkd_ray.core.losses import CDKDLoss
from cdkd_ray.core.models.pose_resnet import ARCHS, ModelConfig, PoseResNet, count_flops, count_parameters
from cdkd_ray.core.experiment import ExperimentConfig


def model_info(arch_or_config: str, input_size: tuple[int, int] | None = None, overrides=()) -> dict:
    """Costs of what a config trains and deploys (or of one architecture)."""
    if arch_or_config in ARCHS:
        size = input_size or (256, 192)
        model = PoseResNet(ModelConfig(arch=arch_or_config))
        return {"input_size": list(size), "models": {
            arch_or_config: {"parameters": count_parameters(model), "flops": count_flops(model, size)}}}
    cfg = load_config(ExperimentConfig, arch_or_config, overrides)
    size = input_size or cfg.data.input_size
    student = PoseResNet(cfg.model)
    teacher_arch = cfg.teacher.arch
    deconv = 256
    if cfg.teacher.checkpoint:
        from cdkd_ray.core.models.loading import load_pose_model

        loaded = load_pose_model(cfg.teacher.checkpoint)
        teacher, teacher_arch, deconv = loaded.model, loaded.model_cfg.arch, loaded.model_cfg.deconv_channels
    else:
        teacher = PoseResNet(ModelConfig(arch=teacher_arch))
    align = CDKDLoss(cfg.distill, cfg.model.arch, teacher_arch, cfg.model.deconv_channels, deconv).feature_align
    student_tap_size = (size[0] // _stride(cfg.distill.student_tap), size[1] // _stride(cfg.distill.student_tap))
    align_flops = _module_flops(align, cfg.model.arch, cfg.distill.student_tap, student_tap_size)
    models = {
        f"student ({cfg.model.arch}, deployed)": {"parameters": count_parameters(student), "flops": count_flops(student, size)},
        f"teacher ({teacher_arch}, frozen)": {"parameters": count_parameters(teacher), "flops": count_flops(teacher, size)},
        f"train-only align ({cfg.distill.student_tap} -> {cfg.distill.teacher_tap}, dropped at export)": {
            "parameters": count_parameters(align), "flops": align_flops},
    }
    return {"input_size": list(size), "models": models, "distill_enabled": cfg.distill.enabled}


def _stride(tap: str) -> int:
    from cdkd_ray.core.models.pose_resnet import TAP_STRIDES

    return TAP_STRIDES[tap]


def _module_flops(module, arch: str, tap: str, spatial: tuple[int, int]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cdkd_ray.core.models.pose_resnet import tap_channels

    x = torch.zeros(1, tap_channels(arch, tap), *spatial)
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())
