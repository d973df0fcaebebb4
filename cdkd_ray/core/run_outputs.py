"""Run outputs next to the checkpoints: metrics JSONL, TensorBoard events, training-curve PNG."""

from __future__ import annotations

import json
import os
import tempfile

from cdkd_ray.core.selection import EPOCHS_KEY
from cdkd_ray.core.storage import Location

CURVE_KEYS = (("loss", "total"), ("loss_gt", "GT heatmaps"), ("loss_gt_zeros", "GT, all-zero heatmaps"),
              ("loss_inter", "intermediate (x1)"),
              ("loss_final", "final (x1)"))


def write_metrics_jsonl(history: list[dict], run_dir: Location) -> str:
    lines = "".join(json.dumps(h, default=float) + "\n" for h in history)
    run_dir.join("metrics.jsonl").write_bytes(lines.encode())
    return run_dir.join("metrics.jsonl").uri


def write_tensorboard(history: list[dict], run_dir: Location) -> str:
    """TensorBoard event files under RUN/tensorboard (written locally, then copied)."""
    from tensorboardX import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(tmp)
        for h in history:
            for key, value in h.items():
                if isinstance(value, (int, float)) and key not in ("epoch", EPOCHS_KEY):
                    writer.add_scalar(key, value, h["epoch"])
        writer.close()
        target = run_dir.join("tensorboard")
        target.remove()
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                target.join(name).write_bytes(f.read())
    return target.uri


def plot_curves(history: list[dict], title: str) -> bytes:
    """PNG bytes: loss terms and AP against epochs."""
    from cdkd_ray.core.plots import subplots, to_png

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_ap) = subplots(1, 2, figsize=(10, 3.8))
    for key, label in CURVE_KEYS:
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax_loss.plot(epochs, [v if v is not None else float("nan") for v in values], marker="o", ms=3, label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    for key in ("AP", "AP50", "AR"):
        ax_ap.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", ms=3, label=key)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("COCO keypoints (val)")
    ax_ap.set_ylim(0, 1)
    ax_ap.legend(fontsize=8)
    ax_ap.grid(alpha=0.3)
    fig.suptitle(title)
    return to_png(fig)


def write_run_outputs(history: list[dict], run_dir: Location, title: str) -> dict:
    outputs = {"metrics_jsonl": write_metrics_jsonl(history, run_dir)}
    outputs["tensorboard"] = write_tensorboard(history, run_dir)
    run_dir.join("curves.png").write_bytes(plot_curves(history, title))
    outputs["curves_png"] = run_dir.join("curves.png").uri
    return outputs
