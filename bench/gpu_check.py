"""GPU check through the Ray-free core: CDKD and baseline training steps, the teacher alone, student inference.

Needs PyTorch 2.x and numpy, nothing else (no Ray, no network, no data files: batches are synthetic).

    python bench/gpu_check.py                      # 256x192, batch 32, bf16 and fp16 AMP, channels_last
    python bench/gpu_check.py --device cpu --tiny  # the CPU smoke test the test suite runs

Prints a table and, last, one JSON line: per precision the CDKD and baseline step times, their ratio,
images/s, model FLOP utilisation against the GPU's peak (where the GPU is known), CUDA memory peaks,
the ResNet-50 teacher's forward alone, and the student's latency at batch 1 and throughput at batch 64.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd_ray.core.config import load_config  # noqa: E402
from cdkd_ray.core.experiment import ExperimentConfig, RunKind, experiment_for  # noqa: E402
from cdkd_ray.core.models.inference import normalize_images  # noqa: E402
from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet, count_flops  # noqa: E402
from cdkd_ray.core.training import new_session, train_step  # noqa: E402

# Dense bf16/fp16 tensor-core peaks (TFLOP/s, no sparsity) of GPUs people train on.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def synthetic_batch(batch: int, input_size: tuple[int, int], device: torch.device) -> dict:
    """Random crops and joints (inside the crop, all labelled), as the data path delivers them."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, 17, 2, generator=g) * torch.tensor([input_size[1], input_size[0]])
    return {"image": torch.randint(0, 256, (batch, 3, *input_size), dtype=torch.uint8, generator=g).to(device),
            "joints": torch.cat([xy, torch.full((batch, 17, 1), 2.0)], -1).to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, warmup: int) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def step_time(cfg: ExperimentConfig, kind: RunKind, teacher_file: str, batch: dict, device: torch.device,
              channels_last: bool, steps: int, warmup: int) -> dict:
    cfg = experiment_for(kind, cfg)
    session = new_session(cfg, kind, device, teacher_file if kind.distills else None, "resnet50")
    if channels_last:
        session.module.to(memory_format=torch.channels_last)
        if session.teacher is not None:
            session.teacher.model.to(memory_format=torch.channels_last)
    session.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: train_step(session, batch, epoch=0), device, steps, warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"seconds": seconds, "images_per_s": len(batch["image"]) / seconds, "peak_gib": peak}


def inference(model: torch.nn.Module, input_size, device, dtype, steps: int, warmup: int, batch: int) -> float:
    x = normalize_images(torch.randint(0, 256, (batch, 3, *input_size), dtype=torch.uint8).to(device))
    autocast = torch.autocast("cuda", dtype=dtype) if device.type == "cuda" and dtype else contextlib.nullcontext()

    @torch.no_grad()
    def run():
        with autocast:
            model(x)

    return timed(run, device, steps, warmup)


def precision_row(args, teacher_file: str, device: torch.device, amp_dtype: str | None) -> dict:
    overrides = [f"train.amp={amp_dtype is not None}", "teacher.placement=worker"]  # the teacher in the step
    overrides += [f"train.amp_dtype={amp_dtype}"] if amp_dtype else []
    cfg = load_config(ExperimentConfig, args.config, [*args.overrides, *overrides])
    batch = synthetic_batch(args.batch, cfg.data.input_size, device)
    run = {k.value: step_time(cfg, k, teacher_file, batch, device, args.channels_last, args.steps, args.warmup)
           for k in (RunKind.BASELINE, RunKind.CDKD)}
    student = PoseResNet(ModelConfig(arch=cfg.model.arch))
    teacher = PoseResNet(ModelConfig(arch="resnet50"))
    s_flops, t_flops = count_flops(student, cfg.data.input_size), count_flops(teacher, cfg.data.input_size)
    flops = {"baseline": 3 * s_flops * args.batch, "cdkd": (3 * s_flops + t_flops) * args.batch}
    peak = peak_tflops(device)
    for kind, r in run.items():
        r["tflops"] = flops[kind] / r["seconds"] / 1e12
        r["mfu"] = r["tflops"] / peak if peak else None
    run["cdkd_over_baseline"] = run["cdkd"]["seconds"] / run["baseline"]["seconds"]
    run["flop_expected_ratio"] = flops["cdkd"] / flops["baseline"]
    return run


def check(args) -> dict:
    device = torch.device(args.device)
    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    dtypes = ["bfloat16", "float16"] if device.type == "cuda" else [None]
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "input_size": list(cfg.data.input_size), "batch": args.batch,
              "channels_last": args.channels_last, "peak_tflops": peak_tflops(device), "precisions": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:  # the 136 MB teacher goes with it
        teacher_file = os.path.join(scratch, "teacher_r50.pth")
        torch.save(PoseResNet(ModelConfig(arch="resnet50")).state_dict(), teacher_file)
        for dtype in dtypes:
            result["precisions"][dtype or "float32"] = precision_row(args, teacher_file, device, dtype)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    teacher = PoseResNet(ModelConfig(arch="resnet50")).to(device).eval()
    student = PoseResNet(ModelConfig(arch=cfg.model.arch)).to(device).eval()
    if args.channels_last:
        teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    size = cfg.data.input_size
    result["teacher_forward_s"] = inference(teacher, size, device, dtype, args.steps, args.warmup, args.batch)
    result["student_latency_b1_ms"] = 1000 * inference(student, size, device, dtype, args.steps, args.warmup, 1)
    b64 = inference(student, size, device, dtype, args.steps, args.warmup, args.infer_batch)
    result["student_throughput_images_per_s"] = args.infer_batch / b64
    if device.type == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def print_table(r: dict) -> None:
    print(f"{r['device']}  torch {r['torch']}  input {r['input_size'][0]}x{r['input_size'][1]}  batch {r['batch']}"
          f"  channels_last {r['channels_last']}")
    print(f"  {'precision':<10}{'run':<10}{'step ms':>9}{'img/s':>9}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}")
    for precision, run in r["precisions"].items():
        for kind in ("baseline", "cdkd"):
            x = run[kind]
            mfu = f"{x['mfu']:.1%}" if x["mfu"] is not None else "-"
            mem = f"{x['peak_gib']:.2f}" if x["peak_gib"] is not None else "-"
            print(f"  {precision:<10}{kind:<10}{x['seconds'] * 1000:>9.1f}{x['images_per_s']:>9.0f}"
                  f"{x['tflops']:>9.2f}{mfu:>7}{mem:>10}")
        print(f"  {precision:<10}CDKD step cost {run['cdkd_over_baseline']:.2f}x baseline "
              f"(FLOPs predict {run['flop_expected_ratio']:.2f}x)")
    print(f"  teacher (ResNet-50) forward alone, batch {r['batch']}: {r['teacher_forward_s'] * 1000:.1f} ms")
    print(f"  student latency at batch 1: {r['student_latency_b1_ms']:.2f} ms; throughput at batch "
          f"{r.get('infer_batch', 64)}: {r['student_throughput_images_per_s']:.0f} images/s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default="coco-r18-256x192")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--tiny", action="store_true", help="128x96, batch 2, 2 steps: a CPU smoke test")
    parser.add_argument("overrides", nargs="*", help="experiment overrides, e.g. data.input_size=[384,288]")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.infer_batch, args.steps, args.warmup = 2, 2, 2, 1
        args.overrides = ["data.input_size=[128,96]", "data.heatmap_size=[32,24]", *args.overrides]
    result = check(args)
    result["infer_batch"] = args.infer_batch
    result["ray_imported"] = sys.modules.get("ray") is not None  # the check runs on machines without Ray
    print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
