"""Helpers shared by tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, check: bool = False, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cdkd_ray", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"cdkd-ray {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def random_student_export(folder: str, seed: int = 7) -> str:
    """An exported ResNet-18 student (128x96 input) with random weights: for serving tests."""
    import os

    import torch

    from cdkd_ray.core.losses import DistillStudent
    from cdkd_ray.core.models.export import export_student
    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
    from cdkd_ray.core.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    module = DistillStudent(PoseResNet(ModelConfig()), None)
    save_checkpoint(os.path.join(folder, "ckpt"), module.state_dict(), None, {
        "epoch": 0, "metrics": {"AP": 0.1}, "config": {"data": {"input_size": [128, 96], "heatmap_size": [32, 24]}}})
    export_student(os.path.join(folder, "ckpt"), os.path.join(folder, "export"))
    return os.path.join(folder, "export")


def split_file(root, split: str, which: str = "annotations"):
    """The path of a published split's annotation copy ("annotations") or its first part file ("part")."""
    from pathlib import Path

    folder = Path(root) / split
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder / (manifest["annotation_file"] if which == "annotations" else manifest["files"][0]["name"])


def truncate_first_image(root, split: str):
    """Cut the first image of a split's first part (local or s3://) to its header: undecodable, as a shard
    written by another tool might hold. Returns the changed table and that image's id."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cdkd_ray.core.storage import resolve

    folder = resolve(f"{root}/{split}")
    part = folder.join(json.loads(folder.join("manifest.json").read_bytes())["files"][0]["name"])
    table = pq.read_table(io.BytesIO(part.read_bytes()))
    images = table.column("image").to_pylist()
    images[0] = images[0][:200]
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    part.write_bytes(sink.getvalue())
    return table, table.column("image_id")[0].as_py()


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line (or process title) mentions `text`, this process excluded."""
    import os
    from pathlib import Path

    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def constant_onnx_detector(path: str, dets: list[list[float]], labels: list[int], size=(640, 640)) -> str:
    """An ONNX detector in the mmdeploy layout (dets [1,N,5], labels [1,N]) that reports the given boxes
    (in its letterboxed input's pixels) for any image."""
    import torch

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("dets", torch.tensor([dets], dtype=torch.float32))
            self.register_buffer("labels", torch.tensor([labels], dtype=torch.int64))

        def forward(self, x):
            zero = x.mean() * 0  # depend on the input, as a real detector does
            return self.dets + zero, self.labels

    torch.onnx.export(Constant(), (torch.zeros(1, 3, *size),), path, input_names=["input"],
                      output_names=["dets", "labels"], opset_version=17, dynamo=False)
    return path


def reports_to_file(path: str):
    """A Ray Train callback that appends each report's metrics (as Tune would get them) to a JSON-lines file."""
    from ray.train.v2.api.callback import UserCallback

    class ReportsToFile(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps({**metrics[0], **({"checkpoint_path": checkpoint.path} if checkpoint else {})},
                                   default=str) + "\n")

    return ReportsToFile()


def with_unlabelled_images(coco_mini, folder) -> Path:
    """The COCO mini annotations plus two images no instance comes from, listed first and third: one
    without annotations (id 900001), one with only a crowd region and a person without keypoints (900002)."""
    source = json.loads((Path(coco_mini) / "person_keypoints_val_mini.json").read_text())
    first, second = source["images"][:2]
    base = next(a for a in source["annotations"] if a["image_id"] == second["id"])
    source["images"] = [{**first, "id": 900001}, *source["images"][:2], {**second, "id": 900002},
                        *source["images"][2:]]
    source["annotations"] += [{**base, "id": 990001, "image_id": 900002, "iscrowd": 1},
                              {**base, "id": 990002, "image_id": 900002, "num_keypoints": 0, "keypoints": [0] * 51}]
    path = Path(folder) / "person_keypoints_train_mixed.json"
    path.write_text(json.dumps(source))
    return path
