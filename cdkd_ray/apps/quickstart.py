"""`cdkd-ray quickstart`: the whole chain on a laptop, an embedded local Ray, a local folder as object store.

synth -> shard -> verify -> look at the crops -> codec ceiling -> train teacher -> baseline and CDKD
students -> evaluation table -> export (+ONNX) -> Serve + a real HTTP request -> summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from tqdm import tqdm

from cdkd_ray.apps.environment_check import hold_workdir
from cdkd_ray.apps.quickstart_presets import DEFAULT_PRESET, PRESETS, QuickstartPreset, preflight
from cdkd_ray.apps.recipes import KdPlan, make_synthetic, run_kd_plan, shard_coco_dir
from cdkd_ray.core.codec_check import codec_check
from cdkd_ray.core.config import load_config
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.core.keypoints import is_labelled_person
from cdkd_ray.core.models.export import export_student
from cdkd_ray.core.models.info import model_info
from cdkd_ray.core.shards import shards_info
from cdkd_ray.core.show import show_instances
from cdkd_ray.ray_adapters.runtime import ensure_ray
from cdkd_ray.ray_adapters.serve.deploy import APP_NAME
from cdkd_ray.ray_adapters.train_driver import summary_line


class _Stages:
    """Prints numbered stage headers with timings."""

    def __init__(self, total: int):
        self.total, self.index, self.started = total, 0, time.perf_counter()

    def begin(self, title: str) -> None:
        self.index += 1
        print(f"\n[{self.index}/{self.total}] {title}  (t={time.perf_counter() - self.started:.0f}s)", flush=True)


@dataclass(frozen=True)
class _Paths:
    """Where each stage writes, under the work folder."""

    workdir: str
    data: str
    shards: str
    runs: str
    export: str
    crops_png: str
    autoscale: str
    summary: str

    @classmethod
    def under(cls, workdir: str) -> "_Paths":
        names = ("synth", "shards", "runs", "student", "train_crops.png", "serve_autoscale", "quickstart_summary.json")
        return cls(workdir, *(os.path.join(workdir, n) for n in names))


def run_quickstart(workdir: str, preset_name: str = DEFAULT_PRESET, serve_port: int = 0) -> dict:
    """Every stage in order; returns (and writes) the summary with the paths of everything made."""
    workdir = os.path.abspath(workdir)
    serve_port = preflight(workdir, preset_name, serve_port)
    with hold_workdir(workdir, "quickstart"):  # a second quickstart in this folder is refused while this runs
        return _run_stages(workdir, preset_name, serve_port)


def _run_stages(workdir: str, preset_name: str, serve_port: int) -> dict:
    """The stages after the checks, in order."""
    preset, paths, stages = PRESETS[preset_name], _Paths.under(workdir), _Stages(12)
    base = load_config(ExperimentConfig, preset.experiment)
    summary = {"workdir": workdir, "preset": preset_name, "synthetic_data": paths.data, "shards": paths.shards}
    summary.update(_data_stages(preset, base, paths, stages))
    ensure_ray()
    trained = _training_stages(preset, base, paths, stages)
    summary.update({label.lower(): _run_entry(run) for label, run in trained.items()})
    stages.begin("export the CDKD student (+ONNX with in-graph decode)")
    exported = export_student(trained["CDKD"]["best_checkpoint"], paths.export, onnx=True, onnx_decode=True)
    print(f"  {paths.export}: {exported['parameters']:,} parameters (= baseline), ONNX {exported['onnx']}")
    summary.update(student_export=paths.export, onnx=exported["onnx"], **_serve_stages(paths, serve_port, stages))
    summary["seconds"] = round(time.perf_counter() - stages.started, 1)
    with open(paths.summary, "w") as f:
        json.dump(summary, f, indent=1)
    _print_summary(summary, trained, paths)
    return summary


def _data_stages(preset: QuickstartPreset, base: ExperimentConfig, paths: _Paths, stages: _Stages) -> dict:
    stages.begin(f"synthetic COCO dataset -> {paths.data}")
    with tqdm(total=preset.train_images + preset.val_images, desc="synth", unit="img", disable=None) as bar:
        make_synthetic(paths.data, preset.train_images, preset.val_images, preset.seed, progress=bar.update)
    stages.begin(f"Parquet shards -> {paths.shards}")
    shard_coco_dir(paths.data, paths.shards, show_progress=True)
    stages.begin("verify shards")
    for split, s in shards_info(paths.shards)["splits"].items():
        print(f"  {split}: {s['num_images']} images, {s['num_keypointed_persons']} people with keypoints, "
              f"{'verified' if s['verified'] else 'PROBLEMS: ' + '; '.join(s['problems'])}")
    stages.begin("what the model is fed: augmented training crops with skeletons and target heatmaps")
    grid_png = show_instances(paths.shards, "train", base.data, 16, paths.crops_png)["out"]
    print(f"  {grid_png}")
    stages.begin("codec ceiling: ground truth through crop -> heatmap -> decode -> COCOeval")
    ceiling = codec_check(paths.shards, "val", base.data)["stats"]["AP"]
    (h, w), (hh, hw) = base.data.input_size, base.data.heatmap_size
    print(f"  AP ceiling at {h}x{w} -> {hh}x{hw}: {ceiling:.3f}")
    return {"train_crops_png": grid_png, "codec_ceiling_ap": ceiling}


def _training_stages(preset: QuickstartPreset, base: ExperimentConfig, paths: _Paths, stages: _Stages) -> dict:
    """Teacher, baseline and CDKD student on Ray Train, then the evaluation table; {label: run summary}."""
    titles = {RunKind.TEACHER: f"train the teacher ({base.teacher.arch}) on Ray Train",
              RunKind.BASELINE: f"plain baseline student ({base.model.arch}), same data, schedule and seed",
              RunKind.CDKD: f"CDKD student ({base.model.arch}), same data, schedule and seed"}
    plan = KdPlan(preset.experiment, preset.teacher_overrides, preset.student_overrides, (preset.seed,))
    done = run_kd_plan(plan, paths.shards, paths.runs, before_run=lambda _n, kind, _c: stages.begin(titles[kind]),
                       after_run=lambda run: print("  " + summary_line(run)))
    trained = {"teacher": done["teacher"], "baseline": done["students"]["baseline"], "CDKD": done["students"]["cdkd"]}
    stages.begin("evaluation table")
    print(format_results_table(trained, model_info(preset.experiment)["models"]))
    return trained


def _serve_stages(paths: _Paths, serve_port: int, stages: _Stages) -> dict:
    from ray import serve

    stages.begin("serve the student with Ray Serve (autoscaling 1..3 replicas) and send a real request")
    url, request = _serve(paths.export, serve_port), _sample_request(paths.data)
    try:
        render_png, persons = _request_and_render(url, request, paths.workdir)
        print(f"  {persons} person(s) answered; skeletons drawn in {render_png}")
        stages.begin("autoscaled serving: bounded load until replicas scale up, then none until they scale down")
        scaling = _autoscale_demo(url, request, paths.autoscale)
    finally:
        serve.delete(APP_NAME)
    return {"rendered_png": render_png,
            "serve_autoscaling": {k: scaling[k] for k in ("start_replicas", "peak_replicas", "end_replicas",
                                                          "scaled_up_after_s", "scaled_down_after_s", "plot")}}


def _print_summary(summary: dict, trained: dict, paths: _Paths) -> None:
    print(f"\nquickstart done in {summary['seconds']}s")
    print("  AP  " + "   ".join(f"{label} {run['best_ap']:.4f}" for label, run in trained.items())
          + f"   (codec ceiling {summary['codec_ceiling_ap']:.3f})")
    print(f"  training crops:   {summary['train_crops_png']}")
    print(f"  curves:           {trained['CDKD']['curves_png']}")
    print(f"  checkpoints:      {paths.runs}")
    print(f"  student export:   {paths.export}  (serve it: cdkd-ray serve {paths.export})")
    print(f"  skeleton PNG:     {summary['rendered_png']}")
    print(f"  replicas plot:    {summary['serve_autoscaling']['plot']}")


def _run_entry(run: dict) -> dict:
    return {"ap": run["best_ap"], "checkpoint": run["best_checkpoint"], "curves": run["curves_png"],
            "epochs": run["epochs"], "loss_gt_first": run["loss_gt_first"], "loss_gt_last": run["loss_gt_last"],
            "loss_gt_vs_zeros": run["loss_gt_vs_zeros"]}


def learning_verdict(results: dict[str, dict]) -> str:
    """Whose GT loss fell, and who did not end below the all-zeros loss."""
    fell = [label for label, run in results.items() if run["loss_gt_last"] < run["loss_gt_first"]]
    if not fell:
        return "no model's GT loss fell: too few steps to learn (a smoke test of the chain; --preset small trains longer)"
    above = [label for label, run in results.items() if not run["loss_gt_vs_zeros"] < 1]
    verdict = f"GT loss fell for {', '.join(fell)}"
    if above:
        why = ("; a CDKD student also follows its teacher's heatmaps, which are poor while the teacher is young"
               if "CDKD" in above else "")
        verdict += f"; {', '.join(above)} did not end below the all-zeros loss (too few steps{why})"
    return verdict


def format_results_table(results: dict[str, dict], costs: dict[str, dict]) -> str:
    """What was trained, whether it learned (GT loss against predicting all-zero heatmaps) and its AP and cost.

    A from-scratch pose net first learns to predict near-zero heatmaps (AP ~0) and leaves that plateau
    only after ~1,000 steps; a GT loss below the all-zeros loss shows it is past it.
    """
    student_cost = next(v for k, v in costs.items() if k.startswith("student"))
    teacher_cost = next(v for k, v in costs.items() if k.startswith("teacher"))
    lines = [f"  {'model':<10}{'arch':<10}{'epochs':>7}{'GT loss first -> last epoch':>30}{'last/zeros':>11}"
             f"{'val loss':>10}{'best AP':>9}{'params':>13}{'GFLOPs':>8}"]
    for label, run in results.items():
        cost = teacher_cost if label == "teacher" else student_cost
        losses = f"{run['loss_gt_first']:.5f} -> {run['loss_gt_last']:.5f}"
        lines.append(f"  {label:<10}{run['arch']:<10}{run['epochs']:>7}{losses:>30}{run['loss_gt_vs_zeros']:>11.3f}"
                     f"{run.get('val_loss_gt_last', float('nan')):>10.5f}{run['best_ap']:>9.4f}"
                     f"{cost['parameters']:>13,}{cost['flops'] / 1e9:>8.3f}")
    lines.append(f"  {learning_verdict(results)}. last/zeros < 1 means better than predicting empty heatmaps; from "
                 "scratch, AP stays near 0 until a model leaves that plateau (~1,000 steps; see the README's Evidence section).")
    if "baseline" in results and "CDKD" in results:
        b, c = results["baseline"], results["CDKD"]
        lines.append(f"  CDKD - baseline: {c['best_ap'] - b['best_ap']:+.4f} AP, GT loss {c['loss_gt_last'] - b['loss_gt_last']:+.5f}"
                     " (one seed; `cdkd-ray compare` runs variants over seeds with confidence intervals).")
    return "\n".join(lines)


# Autoscaling in the quickstart: replicas are added after 1 s above 2 ongoing requests each and removed
# 5 s after the load stops, averaging the load over the last 5 s (the defaults wait and average longer;
# a real deployment keeps them: with a 30 s window the replicas stay up ~30 s after the load).
QUICKSTART_SERVE = {"min_replicas": 1, "max_replicas": 3, "num_cpus": 0.5, "target_ongoing_requests": 2.0,
                    "upscale_delay_s": 1.0, "downscale_delay_s": 5.0, "look_back_period_s": 5.0}


@dataclass(frozen=True)
class _Request:
    image: bytes
    boxes: list


def _serve(export_dir: str, port: int) -> str:
    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import run_serve

    return run_serve(ServeConfig(model_uri=export_dir, **QUICKSTART_SERVE), "127.0.0.1", port)


def _sample_request(data_dir: str) -> _Request:
    """The first val image and its people's boxes."""
    with open(os.path.join(data_dir, "annotations", "person_keypoints_val.json")) as f:
        ann = json.load(f)
    image = ann["images"][0]
    boxes = [a["bbox"] + [1.0] for a in ann["annotations"] if a["image_id"] == image["id"] and is_labelled_person(a)]
    with open(os.path.join(data_dir, "val", image["file_name"]), "rb") as f:
        return _Request(f.read(), boxes)


def _request_and_render(url: str, request: _Request, workdir: str) -> tuple[str, int]:
    import httpx

    params = {"boxes": json.dumps(request.boxes)} if request.boxes else {}
    headers = {"content-type": "image/jpeg"}
    answer = httpx.post(f"{url}/v1/keypoints", content=request.image, params=params, headers=headers, timeout=120)
    answer.raise_for_status()
    render = httpx.post(f"{url}/v1/keypoints/render", content=request.image, params=params, headers=headers,
                        timeout=120)
    render.raise_for_status()
    path = os.path.join(workdir, "served_skeletons.png")
    with open(path, "wb") as f:
        f.write(render.content)
    return path, len(answer.json()["persons"])


def _autoscale_demo(url: str, request: _Request, out_dir: str) -> dict:
    from cdkd_ray.ray_adapters.serve.load_test import LoadPlan, run_load_test

    plan = LoadPlan(concurrency=12, max_requests=2000, max_seconds=90, until_replicas=QUICKSTART_SERVE["max_replicas"],
                    hold_seconds=2, cooldown_seconds=90)
    r = run_load_test(url, request.image, [b[:4] for b in request.boxes], plan, out_dir)
    load = r["load"]
    print(f"  {load['sent']} requests ({load['failed']} failed) at {load['rps']:.1f} req/s; replicas "
          f"{r['start_replicas']} -> {r['peak_replicas']} (after {r['scaled_up_after_s']}s) -> {r['end_replicas']} "
          f"({r['scaled_down_after_s']}s after the load stopped)")
    print(f"  {r['plot']}")
    return r
