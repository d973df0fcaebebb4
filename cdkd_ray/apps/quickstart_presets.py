"""Quickstart presets and the checks run before any work (light: importable before torch and Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QuickstartPreset:
    train_images: int
    val_images: int
    experiment: str
    teacher_overrides: list[str] = field(default_factory=list)
    student_overrides: list[str] = field(default_factory=list)
    seed: int = 0
    disk_gib: float = 2.0  # free space the work folder needs (checkpoints, shards, Ray's spill)


PRESETS = {
    "tiny": QuickstartPreset(48, 16, "tiny", ["train.epochs=2"], ["train.epochs=2"], disk_gib=2.0),
    # the default: the paper's shape (ResNet-50 teacher, ResNet-18 students), ~13 steps an epoch, < 6 min on 2 cores;
    # the teacher trains two epochs more: a younger teacher's heatmaps (in eval mode, as the students get them)
    # were worse than all-zero ones on val, and its CDKD student's GT loss ended above the zeros' (README, Quickstart)
    "quick": QuickstartPreset(96, 24, "synth-cpu",
                              ["train.epochs=4", "train.lr_steps=[100]", "train.warmup_iters=8"],
                              ["train.epochs=2", "train.lr_steps=[100]", "train.warmup_iters=8"], disk_gib=3.0),
    "small": QuickstartPreset(300, 60, "synth-cpu",
                              ["train.epochs=3", "train.lr_steps=[100]", "train.warmup_iters=20"],
                              ["train.epochs=3", "train.lr_steps=[100]", "train.warmup_iters=20"], disk_gib=5.0),
}

DEFAULT_PRESET = "quick"
# what each preset is for, with its wall time on 2 cores (README: the measured runs)
PRESET_HELP = ("tiny: CI smoke, ResNet-18 teacher, ~2-3 min; quick: 96 images, ResNet-50 teacher 4 epochs, "
               "students 2, ~4-6 min; small: 300 images, 3 epochs each, ~6-18 min")


def preflight(workdir: str, preset_name: str, serve_port: int) -> int:
    """Everything the quickstart will need, checked before any work; returns the Serve port to use."""
    from cdkd_ray.apps.environment_check import DiskNeed, check_run_environment, claim_workdir, pick_free_port

    check_run_environment(workdir, DiskNeed(PRESETS[preset_name].disk_gib), serve_port)
    claim_workdir(workdir, ".quickstart.json", {"preset": preset_name})
    return serve_port or pick_free_port()
