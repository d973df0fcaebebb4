"""`cdkd-ray quickstart`: the whole chain, as far as it is built, on a laptop."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class QuickstartPreset:
    train_images: int
    val_images: int
    seed: int = 0


PRESETS = {
    "tiny": QuickstartPreset(train_images=48, val_images=16),
    "small": QuickstartPreset(train_images=400, val_images=100),
}


class _Stages:
    """Prints numbered stage headers with timings."""

    def __init__(self, total: int):
        self.total, self.index, self.started = total, 0, time.perf_counter()

    def begin(self, title: str) -> None:
        self.index += 1
        print(f"\n[{self.index}/{self.total}] {title}  (t={time.perf_counter() - self.started:.0f}s)", flush=True)


def run_quickstart(workdir: str, preset_name: str = "small") -> dict:
    from cdkd_ray.coco.shard import shard_coco, shards_info
    from cdkd_ray.coco.synth import synth_split

    preset = PRESETS[preset_name]
    workdir = os.path.abspath(workdir)
    data_dir = os.path.join(workdir, "synth")
    shard_root = os.path.join(workdir, "shards")
    stages = _Stages(5)

    stages.begin(f"synthetic COCO dataset -> {data_dir}")
    with tqdm(total=preset.train_images + preset.val_images, desc="synth", unit="img", disable=None) as bar:
        for split, n in (("train", preset.train_images), ("val", preset.val_images)):
            synth_split(data_dir, split, n, preset.seed, progress=bar.update)

    stages.begin(f"Parquet shards -> {shard_root}")
    for split in ("train", "val"):
        shard_coco(os.path.join(data_dir, "annotations", f"person_keypoints_{split}.json"),
                   os.path.join(data_dir, split), shard_root, split=split)

    stages.begin("verify shards")
    info = shards_info(shard_root)
    for split, s in info["splits"].items():
        print(f"  {split}: {s['num_images']} images, {s['num_keypointed_persons']} people with keypoints, "
              f"{'verified' if s['verified'] else 'PROBLEMS: ' + '; '.join(s['problems'])}")

    from cdkd_ray.data.config import DataConfig
    from cdkd_ray.data.show import show_instances
    from cdkd_ray.train.codec_check import codec_check

    data_cfg = DataConfig()
    stages.begin("what the model is fed: augmented training crops with skeletons and target heatmaps")
    grid_png = show_instances(shard_root, "train", data_cfg, 16, os.path.join(workdir, "train_crops.png"))["out"]
    print(f"  {grid_png}")

    stages.begin("codec ceiling: ground truth through crop -> heatmap -> decode -> COCOeval")
    ceiling = codec_check(shard_root, "val", data_cfg)
    print(f"  AP ceiling at {data_cfg.input_size[0]}x{data_cfg.input_size[1]} -> "
          f"{data_cfg.heatmap_size[0]}x{data_cfg.heatmap_size[1]}: {ceiling['stats']['AP']:.3f}")

    summary = {
        "workdir": workdir,
        "preset": preset_name,
        "synthetic_data": data_dir,
        "shards": shard_root,
        "splits": {k: {"images": v["num_images"], "persons": v["num_keypointed_persons"]}
                   for k, v in info["splits"].items()},
        "train_crops_png": grid_png,
        "codec_ceiling_ap": ceiling["stats"]["AP"],
        "seconds": round(time.perf_counter() - stages.started, 1),
    }
    print(f"\nquickstart done in {summary['seconds']}s")
    print(f"  synthetic COCO data: {data_dir}")
    print(f"  shards:              {shard_root}  (inspect: cdkd-ray shards-info {shard_root})")
    print(f"  training crops:      {grid_png}")
    return summary
