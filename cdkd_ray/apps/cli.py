"""The `cdkd-ray` command line."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable

from cdkd_ray.apps.quickstart_presets import DEFAULT_PRESET, PRESET_HELP, PRESETS
from cdkd_ray.core.errors import CdkdError, InterruptedRun


_FINAL_JSON: list[str] = []


def emit(result: dict, as_json: bool, human: Callable[[dict], None] | None = None) -> None:
    """Print a result for people now; with --json, `main` prints it as one JSON object on the very last line."""
    if human:
        human(result)
    if as_json:
        _FINAL_JSON.append(json.dumps(result, default=_json_default))


def _print_final_json() -> None:
    """The command is done: leave Ray (so nothing it streams can follow), then print the JSON line last."""
    if not _FINAL_JSON:
        return
    sys.stdout.flush()
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    print(_FINAL_JSON.pop(), flush=True)


def _json_default(value: Any):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _size(text: str) -> tuple[int, int]:
    """Parse HxW such as 256x192."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x192, got '{text}'") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return h, w


def _seconds(text: str) -> float:
    """Parse a duration in seconds, >= 0."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds such as 16, got '{text}'") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got '{text}'")
    return seconds


# ---------------------------------------------------------------- commands

def cmd_synth(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from cdkd_ray.core.coco.synth import synth_split
    from cdkd_ray.core.keypoints import is_labelled_person

    if args.train_images < 0 or args.val_images < 0:
        raise CdkdError("--train-images and --val-images must be >= 0")
    start = time.perf_counter()
    counts = {}
    total = args.train_images + args.val_images
    with tqdm(total=total, desc="synth", unit="img", disable=None) as bar:
        for split, n in (("train", args.train_images), ("val", args.val_images)):
            doc = synth_split(args.out_dir, split, n, args.seed, workers=args.workers, progress=bar.update)
            counts[split] = {"images": len(doc["images"]),
                             "persons_with_keypoints": sum(map(is_labelled_person, doc["annotations"]))}
    seconds = time.perf_counter() - start
    result = {"out_dir": os.path.abspath(args.out_dir), "splits": counts, "seconds": round(seconds, 3),
              "images_per_second": round(total / seconds, 1) if seconds > 0 else None}

    def human(r: dict) -> None:
        for split, c in r["splits"].items():
            print(f"{split}: {c['images']} images, {c['persons_with_keypoints']} people with keypoints")
        print(f"wrote {r['out_dir']} ({r['images_per_second']} images/s)")

    emit(result, args.json, human)


def cmd_shard(args: argparse.Namespace) -> None:
    from cdkd_ray.core.shards import shard_coco

    manifest = shard_coco(args.coco_json, args.image_dir, args.out_uri, split=args.split,
                          rows_per_file=args.rows_per_file, skip_bad=args.skip_bad,
                          s3_endpoint=args.s3_endpoint)
    result = {k: manifest[k] for k in ("split", "num_images", "num_persons", "num_keypointed_persons",
                                       "num_crowd", "total_bytes", "skipped_bad", "skipped_non_person")}
    result["files"] = len(manifest["files"])
    result["uri"] = args.out_uri.rstrip("/") + "/" + manifest["split"]

    def human(r: dict) -> None:
        for problem in manifest["problems"]:
            print(f"skipped: {problem}", file=sys.stderr)
        print(f"{r['uri']}: {r['num_images']} images, {r['num_persons']} person annotations "
              f"({r['num_keypointed_persons']} with keypoints), {r['files']} file(s), "
              f"{r['total_bytes'] / 1e6:.2f} MB; skipped {r['skipped_bad']} bad item(s), "
              f"{r['skipped_non_person']} non-person annotation(s)")

    emit(result, args.json, human)


def cmd_shards_info(args: argparse.Namespace) -> None:
    from cdkd_ray.core.shards import shards_info

    info = shards_info(args.uri, s3_endpoint=args.s3_endpoint, hashes=not args.quick)

    def human(r: dict) -> None:
        print(f"{r['root']}")
        print(f"  {'split':<8}{'images':>8}{'persons':>9}{'w/ kpts':>9}{'crowd':>7}{'files':>7}"
              f"{'MB':>9}  schema  source sha256   status")
        for split, s in r["splits"].items():
            status = "verified" if s["verified"] else "PROBLEMS"
            print(f"  {split:<8}{s['num_images']:>8}{s['num_persons']:>9}{s['num_keypointed_persons']:>9}"
                  f"{s['num_crowd']:>7}{s['num_files']:>7}{s['total_bytes'] / 1e6:>9.2f}  v{s['schema_version']:<6}"
                  f"{s['source_annotation_sha256'][:12]}     {status}")
            for problem in s["problems"]:
                print(f"    - {problem}")
            if s["files_without_labelled_person"]:
                print(f"    {s['files_without_labelled_person']} file(s) hold only images without a labelled person: "
                      "read only to evaluate detection boxes")
            elif s["files_without_labelled_person"] is None:
                print("    written before the files counted their labelled persons: read whole "
                      "(shard again to skip images without one)")
            if s["being_written_by"]:
                print(f"    being written by {s['being_written_by']} (a new version is published when it finishes)")
        stale = r["leftovers"] + [f"{split}/{v}" for split, s in r["splits"].items() for v in s["leftovers"]
                                  if not s["being_written_by"]]
        if stale:
            print(f"  leftovers of interrupted writes (not read by anything): {', '.join(stale)}")
            print(f"  remove them with: cdkd-ray shards-gc {r['root']}")

    emit(info, args.json, human)
    if not info["ok"]:
        raise SystemExit(1)


def cmd_shards_gc(args: argparse.Namespace) -> None:
    from cdkd_ray.core.shards import shards_gc

    result = shards_gc(args.uri, s3_endpoint=args.s3_endpoint, dry_run=args.dry_run)

    def human(r: dict) -> None:
        verb = "would remove" if r["dry_run"] else "removed"
        print(f"{r['root']}: {verb} {len(r['removed'])} leftover(s)" + "".join(f"\n  {x}" for x in r["removed"]))
        for split in r["busy"]:
            print(f"  {split}: being written, left alone")

    emit(result, args.json, human)


def _data_config(args: argparse.Namespace):
    from cdkd_ray.core.config import from_dict
    from cdkd_ray.core.data_config import DataConfig
    from cdkd_ray.core.models.strides import heatmap_size_for

    values = {}
    if getattr(args, "input_size", None):
        values["input_size"] = args.input_size
        values["heatmap_size"] = heatmap_size_for(args.input_size)
    if getattr(args, "heatmap_size", None):
        values["heatmap_size"] = args.heatmap_size
    for key in ("sigma", "decode"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "seed", None) is not None:
        values["seed"] = args.seed
    return from_dict(DataConfig, values, "data")


def cmd_codec_check(args: argparse.Namespace) -> None:
    from cdkd_ray.core.codec_check import codec_check
    from cdkd_ray.core.evaluation import format_stats_table

    cfg = _data_config(args)
    result = codec_check(args.uri, args.split, cfg, boxes_file=args.boxes, s3_endpoint=args.s3_endpoint)

    def human(r: dict) -> None:
        print(f"codec ceiling on {args.uri} [{args.split}], {r['instances']} instances, "
              f"input {cfg.input_size[0]}x{cfg.input_size[1]} -> heatmap {cfg.heatmap_size[0]}x{cfg.heatmap_size[1]}, "
              f"sigma {cfg.sigma}, decode {cfg.decode}, {r.get('protocol', '')}")
        print(format_stats_table([("ground truth via codec", r["stats"])]))

    emit(result, args.json, human)


def cmd_show(args: argparse.Namespace) -> None:
    from cdkd_ray.core.show import show_instances

    result = show_instances(args.uri, args.split, _data_config(args), args.n, args.out, args.s3_endpoint)
    print(f"wrote {result['out']} ({result['instances']} crops)")
    emit(result, args.json)


def cmd_model_info(args: argparse.Namespace) -> None:
    from cdkd_ray.core.models.info import model_info

    result = model_info(args.arch_or_config, args.input_size, args.overrides)

    def human(r: dict) -> None:
        print(f"input {r['input_size'][0]}x{r['input_size'][1]}")
        print(f"  {'model':<62}{'parameters':>14}{'GFLOPs':>10}")
        for name, m in r["models"].items():
            print(f"  {name:<62}{m['parameters']:>14,}{m['flops'] / 1e9:>10.3f}")

    emit(result, args.json, human)


def cmd_export(args: argparse.Namespace) -> None:
    from cdkd_ray.core.models.export import export_student

    result = export_student(args.checkpoint, args.out, onnx=args.onnx or args.onnx_decode, onnx_decode=args.onnx_decode,
                            opset=args.opset)

    def human(r: dict) -> None:
        print(f"student exported to {r['out']}: {r['parameters']:,} parameters, {r['flops'] / 1e9:.3f} GFLOPs"
              + (f", ONNX {r['onnx']}" if r["onnx"] else ""))

    emit(result, args.json, human)


def _preflight_if_connected(args: argparse.Namespace, bundles) -> None:
    """On a cluster (--address or $RAY_ADDRESS), refuse a job that can never be scheduled there."""
    if getattr(args, "no_preflight", False) or not (args.address or os.environ.get("RAY_ADDRESS")):
        return
    from cdkd_ray.ray_adapters.live_cluster import preflight_connected
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    ensure_ray(args.address)
    preflight_connected(bundles)


def _train_command(args: argparse.Namespace, teacher: bool) -> None:
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind, distill_kind
    from cdkd_ray.ray_adapters.train_driver import run_training, summary_line

    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    kind = RunKind.TEACHER if teacher else distill_kind(cfg)
    from cdkd_ray.core.preflight import training_bundles

    _preflight_if_connected(args, training_bundles(cfg, kind))
    summary = run_training(cfg, kind, args.data, args.storage, args.name or kind.value, getattr(args, "teacher", None),
                           s3_endpoint=args.s3_endpoint, ray_address=args.address, new_run=args.new_run)

    def human(r: dict) -> None:
        print(summary_line(r))
        print(f"  curves: {r['curves_png']}   metrics: {r['metrics_jsonl']}   tensorboard: {r['tensorboard']}")

    emit(summary, args.json, human)


def cmd_train_teacher(args: argparse.Namespace) -> None:
    _train_command(args, teacher=True)


def cmd_distill(args: argparse.Namespace) -> None:
    _train_command(args, teacher=False)


def cmd_serve(args: argparse.Namespace) -> None:
    from cdkd_ray.core.config import from_dict
    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import run_serve

    values = {"model_uri": args.model, "min_replicas": args.min_replicas,
              "max_replicas": max(args.max_replicas, args.min_replicas)}
    if args.auth_token_env:
        token = os.environ.get(args.auth_token_env)
        if not token:
            raise CdkdError(f"--auth-token-env {args.auth_token_env}: that environment variable is not set")
        values["auth_token_sha256"] = hashlib.sha256(token.encode()).hexdigest()  # the token itself stays here
    from cdkd_ray.core.config import apply_overrides

    cfg = from_dict(ServeConfig, apply_overrides(values, args.overrides), "serve")
    _preflight_if_connected(args, _serve_bundles(cfg))
    run_serve(cfg, args.host, args.port, address=args.address, block=not args.detach,
              proxy_location=args.proxy_location)


def cmd_load_test(args: argparse.Namespace) -> None:
    from cdkd_ray.ray_adapters.serve.load_test import LoadPlan, run_load_test

    try:
        with open(args.image, "rb") as f:
            body = f.read()
    except OSError as exc:
        raise CdkdError(f"cannot read --image {args.image}: {exc.strerror}") from None
    try:
        boxes = json.loads(args.boxes) if args.boxes else []
    except json.JSONDecodeError as exc:
        raise CdkdError(f"--boxes is not JSON ([[x, y, w, h], ...]): {exc}") from None
    plan = LoadPlan(args.concurrency, args.max_requests, args.max_seconds, args.until_replicas, args.hold_seconds,
                    args.cooldown_seconds, args.wait_nodes)
    result = run_load_test(args.url.rstrip("/"), body, boxes, plan, args.out, address=args.address)

    def human(r: dict) -> None:
        load = r["load"]
        print(f"load: {load['sent']} requests ({load['ok']} ok, {load['failed']} failed) in {load['seconds']:.0f}s, "
              f"{load['rps']:.1f} req/s, p50 {load['p50_ms'] or 0:.0f} ms")
        print(f"replicas: {r['start_replicas']} -> {r['peak_replicas']} (after {r['scaled_up_after_s']}s of load) -> "
              f"{r['end_replicas']} ({r['scaled_down_after_s']}s after the load stopped); "
              f"worker nodes peak {r['peak_worker_nodes']}, now {r['end_worker_nodes']}")
        print(f"timeline {r['csv']}\nplot {r['plot']}")

    emit(result, args.json, human)


def cmd_sweep(args: argparse.Namespace) -> None:
    from cdkd_ray.ray_adapters.sweep import load_sweep_config, run_sweep

    sweep = load_sweep_config(args.config, args.overrides)
    _preflight_if_connected(args, _sweep_bundles(sweep))
    result = run_sweep(sweep, args.data, args.storage, args.name, args.teacher, resume=args.resume,
                       s3_endpoint=args.s3_endpoint, ray_address=args.address)

    def human(r: dict) -> None:
        keys = list(sweep.search)
        print(f"{'trial':<12}" + "".join(f"{k.split('.')[-1][:14]:>15}" for k in keys) + f"{'AP':>9}{'epochs':>8}  early")
        for row in r["trials"]:
            values = "".join(f"{(f'{row[k]:.4g}' if isinstance(row[k], float) else str(row[k]))[:14]:>15}" for k in keys)
            print(f"{str(row['trial'])[:12]:<12}{values}{row['AP']:>9.4f}{row['epochs']:>8}  {'yes' if row['stopped_early'] else ''}")
        print(f"{len(r['trials'])} trials, {r['stopped_early']} stopped early by ASHA, ran on {r['nodes_used']} node(s)")
        print(f"table {r['csv']}\nplot {r['plot']}\nbest config {r['best_config']}\nbest student {r['best_student']}")

    emit({k: v for k, v in result.items()}, args.json, human)


def cmd_compare(args: argparse.Namespace) -> None:
    from cdkd_ray.core.study import load_study
    from cdkd_ray.core.study_report import contrasts_table, markdown_table
    from cdkd_ray.core.storage import resolve
    from cdkd_ray.ray_adapters.compare import recorded_teacher, run_compare, write_report

    if not args.report_only and not args.data:
        raise CdkdError("compare needs --data (the shard root holding train/ and val/), unless --report-only")
    study = load_study(args.config, args.overrides)
    name = args.name or os.path.splitext(os.path.basename(args.config))[0]
    if args.report_only:
        study_dir = resolve(args.storage, args.s3_endpoint).join(name)
        report = write_report(study, study_dir, args.teacher or recorded_teacher(study_dir))
    else:
        _preflight_if_connected(args, _compare_bundles(study))
        report = run_compare(study, args.data, args.storage, name, args.teacher, resume=args.resume,
                             s3_endpoint=args.s3_endpoint, ray_address=args.address)

    def human(r: dict) -> None:
        print(markdown_table(r))
        if r["contrasts"]:
            print("\n" + contrasts_table(r))
        print(f"report {r['report_md']}\nplots  {r['ap_plot']} {r['diff_plot']}")

    emit(report, args.json, human)


def _compare_bundles(study):
    from cdkd_ray.core.experiment import distill_kind
    from cdkd_ray.core.preflight import sweep_bundles
    from cdkd_ray.core.study import variant_config

    configs = [variant_config(study, v, study.seeds[0]) for v in study.variants]
    heaviest = max(configs, key=lambda c: distill_kind(c).distills)  # a distilling trial may add a teacher pool
    return sweep_bundles(heaviest, distill_kind(heaviest), study.max_concurrent_trials)


def _serve_bundles(cfg):
    from cdkd_ray.core.preflight import serve_bundles

    detector = (cfg.detector_replicas, cfg.detector_num_cpus, cfg.detector_num_gpus) \
        if cfg.detector.kind != "none" else None
    return serve_bundles(cfg.min_replicas, cfg.num_cpus, detector=detector)


def _sweep_bundles(sweep):
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig, distill_kind
    from cdkd_ray.core.preflight import sweep_bundles

    experiment = load_config(ExperimentConfig, sweep.experiment, sweep.experiment_overrides)
    experiment.train.num_workers = sweep.trial_workers
    experiment.train.cpus_per_worker = sweep.trial_cpus_per_worker
    return sweep_bundles(experiment, distill_kind(experiment), sweep.max_concurrent_trials)


def _preflight_bundles(args: argparse.Namespace):
    """The bundles of the job named by --config/--kind, --sweep, --study or --serve."""
    from cdkd_ray.core.config import apply_overrides, from_dict, load_config
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind
    from cdkd_ray.core.preflight import training_bundles

    if args.sweep:
        from cdkd_ray.ray_adapters.sweep import load_sweep_config

        return _sweep_bundles(load_sweep_config(args.sweep, args.overrides))
    if args.study:
        from cdkd_ray.core.study import load_study

        return _compare_bundles(load_study(args.study, args.overrides))
    if args.serve:
        from cdkd_ray.ray_adapters.serve.app import ServeConfig

        return _serve_bundles(from_dict(ServeConfig, apply_overrides({"model_uri": "preflight"}, args.overrides),
                                        "serve"))
    cfg = load_config(ExperimentConfig, args.config, args.overrides)
    return training_bundles(cfg, RunKind(args.kind))


def cmd_preflight(args: argparse.Namespace) -> None:
    from cdkd_ray.core.preflight import check_fits, format_report, load_cluster_shape

    bundles = _preflight_bundles(args)
    if args.cluster:
        from cdkd_ray.core.config import read_yaml_documents

        docs = [d for d in read_yaml_documents(args.cluster) if d.get("kind") != "ServiceAccount"]
        if not docs:
            raise CdkdError(f"{args.cluster} holds no cluster description (a launcher YAML or a KubeRay "
                            "RayCluster/RayJob/RayService)")
        report = check_fits(bundles, load_cluster_shape(docs[0], args.cluster))
    else:
        from cdkd_ray.ray_adapters.live_cluster import connected_shape
        from cdkd_ray.ray_adapters.runtime import ensure_ray

        ensure_ray(args.address)
        report = check_fits(bundles, connected_shape())
    emit(report, args.json, lambda r: print(format_report(r)))
    if not report["ok"] and report["exact"]:
        raise SystemExit(2)


def cmd_cluster(args: argparse.Namespace) -> None:
    from cdkd_ray.ray_adapters import local_cluster as local

    if args.action == "up":
        result = local.cluster_up(args.config, args.port, args.dashboard_port, args.state_dir)

        def human(r: dict) -> None:
            print(f"cluster up: head pid {r['pid']} at {r['address']} (dashboard {r['dashboard_url']}); "
                  f"nodes are added on demand. Use --address {r['address']}; log {r['log']}")
    elif args.action == "down":
        result = local.cluster_down(args.state_dir, args.grace_seconds)

        def human(r: dict) -> None:
            if not r["stopped"]:
                print(r["message"])
                return
            forced = f" ({r['killed']} only by SIGKILL: {', '.join(r['killed_processes'])})" if r["killed"] else ""
            print(f"cluster down: stopped {r['processes_stopped']} processes of {r['address']}{forced}")
    else:
        result = local.cluster_status(args.state_dir, args.address)

        def human(r: dict) -> None:
            print(f"{r['address']}: {len(r['nodes'])} node(s) alive, {r['worker_nodes']} autoscaled worker node(s)")
            for n in r["nodes"]:
                print(f"  {n['node_id']}  {'head' if n['head'] else 'worker'}  CPU {n['cpus']:g}")
    emit(result, args.json, human)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from cdkd_ray.apps.quickstart_presets import preflight

    port = preflight(args.workdir, args.preset, args.serve_port)  # in the first second, before torch and Ray load
    from cdkd_ray.apps.quickstart import run_quickstart

    summary = run_quickstart(args.workdir, args.preset, port)
    emit(summary, args.json)


# ---------------------------------------------------------------- parser

def _add_s3_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")


def _add_address(p: argparse.ArgumentParser, help_text: str = "Ray cluster address (default: $RAY_ADDRESS, "
                                                             "else a local Ray)") -> None:
    p.add_argument("--address", help=help_text)


def _add_no_preflight(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-preflight", action="store_true",
                   help="on a cluster, skip the check that the job's bundles can ever be scheduled")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdkd-ray",
        description="Channel-dropout knowledge distillation (CDKD) for human pose on Ray.")
    from cdkd_ray import __version__

    parser.add_argument("--version", action="version", version=f"cdkd-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
        return p

    p = add("quickstart", cmd_quickstart,
            "Run the whole chain on an embedded local Ray with a local folder as object store.")
    p.add_argument("--workdir", default="cdkd-quickstart", help="where all outputs go (default: ./cdkd-quickstart)")
    p.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help=f"size of the run (default: {DEFAULT_PRESET}; {PRESET_HELP})")
    p.add_argument("--serve-port", type=int, default=0,
                   help="port of the Serve stage on 127.0.0.1 (default 0: a free one, chosen before any work)")

    p = add("synth", cmd_synth, "Write a synthetic COCO-format person-keypoint dataset.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--train-images", type=int, default=200)
    p.add_argument("--val-images", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes to render with (default: 1)")

    p = add("shard", cmd_shard, "Write COCO keypoint data as Parquet shards to a folder or s3://.")
    p.add_argument("coco_json", metavar="COCO_JSON", help="person-keypoints annotation file")
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="folder holding the images named by file_name")
    p.add_argument("out_uri", metavar="OUT_URI", help="shard root: a folder or s3://bucket/prefix")
    p.add_argument("--split", help="split name (default: inferred from the file name: train/val)")
    p.add_argument("--rows-per-file", type=int, default=1000, help="images per Parquet file (default: 1000)")
    p.add_argument("--skip-bad", action="store_true", help="write the good items and a report of the bad ones")
    _add_s3_endpoint(p)

    p = add("codec-check", cmd_codec_check,
            "AP ceiling of a heatmap resolution: ground truth through crop, encode, decode and back.")
    p.add_argument("uri", metavar="URI", help="shard root: a folder or s3://bucket/prefix")
    p.add_argument("--split", default="val")
    p.add_argument("--input-size", type=_size, default=(256, 192), help="HxW (default 256x192)")
    p.add_argument("--heatmap-size", type=_size, help="HxW (default: input / 4)")
    p.add_argument("--sigma", type=float, help="Gaussian sigma in heatmap pixels (default 2)")
    p.add_argument("--decode", choices=["argmax", "dark"], help="decoder (default argmax + quarter offset)")
    p.add_argument("--boxes", help="COCO person detection results JSON (default: GT boxes)")
    _add_s3_endpoint(p)

    p = add("show", cmd_show, "Picture of (augmented) training crops with skeletons and target heatmaps.")
    p.add_argument("uri", metavar="URI", help="shard root: a folder or s3://bucket/prefix")
    p.add_argument("--split", default="train")
    p.add_argument("-n", type=int, default=16, help="number of crops (default 16)")
    p.add_argument("--out", default="grid.png", help="PNG to write (default grid.png)")
    p.add_argument("--input-size", type=_size, help="HxW (default 256x192)")
    p.add_argument("--seed", type=int, help="augmentation seed (default 0)")
    _add_s3_endpoint(p)

    def training_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=20")
        p.add_argument("--config", default="synth-cpu",
                       help="preset (tiny, synth-cpu, coco-r18-256x192) or YAML path/s3:// URI (default synth-cpu)")
        p.add_argument("--data", required=True, help="shard root holding train/ and val/ (folder or s3://)")
        p.add_argument("--storage", required=True, help="where runs and checkpoints go (folder or s3://)")
        p.add_argument("--name", help="run name (default: the run kind); re-running the same name resumes it if "
                                      "only the epochs or resources changed, and refuses otherwise")
        p.add_argument("--new-run", action="store_true",
                       help="start a fresh run beside an existing one of this name (NAME-2, NAME-3, ...)")
        _add_address(p)
        _add_no_preflight(p)
        _add_s3_endpoint(p)

    p = add("train-teacher", cmd_train_teacher, "Supervised pose training of the teacher (teacher.arch) on Ray Train.")
    training_args(p)
    p = add("distill", cmd_distill,
            "CDKD distillation of the student on Ray Train (distill.enabled=false: the plain baseline).")
    training_args(p)
    p.add_argument("--teacher", help="teacher checkpoint: a cdkd-ray run checkpoint, export, or external file")

    p = add("sweep", cmd_sweep, "Ray Tune sweep over channel-dropout and loss hyperparameters (ASHA).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="sweep config overrides, e.g. num_samples=8")
    p.add_argument("--config", help="sweep YAML (search space, ASHA, resources; default: a small built-in space)")
    p.add_argument("--data", required=True, help="shard root holding train/ and val/ (folder or s3://)")
    p.add_argument("--storage", required=True, help="where the sweep, its runs and outputs go (folder or s3://)")
    p.add_argument("--name", default="sweep", help="sweep name (default: sweep)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint for every trial")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep of the same name with the settings it started with; "
                   "refused if the sweep config, data or teacher changed")
    _add_address(p)
    _add_no_preflight(p)
    _add_s3_endpoint(p)

    p = add("compare", cmd_compare, "Compare distillation recipes over seeds: variants x seeds as one Ray Tune "
            "grid, then a report with paired confidence intervals against the baseline.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study overrides, e.g. seeds=[0,1]")
    p.add_argument("--config", required=True, help="study YAML: base experiment, variants (overrides each), seeds")
    p.add_argument("--data", help="shard root holding train/ and val/ (folder or s3://)")
    p.add_argument("--storage", required=True, help="where the study, its runs and its report go (folder or s3://)")
    p.add_argument("--name", help="study name (default: the study file's name without .yaml)")
    p.add_argument("--teacher", help="teacher checkpoint for the distilling variants")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study; refused if the study, data or teacher changed")
    p.add_argument("--report-only", action="store_true", help="train nothing: rebuild the report from finished runs")
    _add_address(p)
    _add_no_preflight(p)
    _add_s3_endpoint(p)

    p = add("serve", cmd_serve, "Serve a student export over HTTP with Ray Serve (batching, autoscaling).")
    p.add_argument("model", metavar="MODEL_DIR_OR_URI", help="a student export folder (cdkd-ray export) or s3:// URI")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="ServeConfig overrides, e.g. max_batch_size=32 target_ongoing_requests=2")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=2)
    _add_address(p)
    p.add_argument("--auth-token-env", metavar="VAR",
                   help="require `Authorization: Bearer <token>` on /v1, the token read from this environment "
                        "variable (only its SHA-256 reaches the cluster)")
    _add_no_preflight(p)
    p.add_argument("--detach", action="store_true",
                   help="deploy and return (the app keeps running on the cluster; for Ray Jobs)")
    p.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"], default="EveryNode",
                   help="HTTP proxies on every node (clusters) or on the head only (a local autoscaling cluster)")

    p = add("load-test", cmd_load_test,
            "Drive a deployed endpoint with bounded load until it scales up, then watch it scale down "
            "(replicas.csv, replicas.png).")
    p.add_argument("url", metavar="URL", help="the endpoint's base URL (loopback only), e.g. http://127.0.0.1:8000")
    p.add_argument("--image", required=True, help="JPEG or PNG sent with every request")
    p.add_argument("--boxes", help="person boxes as JSON [[x, y, w, h], ...] (default: the whole image)")
    _add_address(p, "the Ray cluster serving it (default: $RAY_ADDRESS)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    p.add_argument("--max-requests", type=int, default=5000, help="cap on requests sent (default 5000)")
    p.add_argument("--max-seconds", type=float, default=180, help="cap on the load phase (default 180)")
    p.add_argument("--until-replicas", type=int, default=3,
                   help="stop the load once this many replicas run (default 3)")
    p.add_argument("--hold-seconds", type=float, default=5, help="keep the load on this long after that (default 5)")
    p.add_argument("--cooldown-seconds", type=float, default=180,
                   help="wait at most this long for the replicas to scale back down (default 180)")
    p.add_argument("--wait-nodes", action="store_true",
                   help="also wait for the autoscaler to remove the worker nodes added under load")
    p.add_argument("--out", default="load-test", help="folder for replicas.csv, replicas.png, load_test.json")

    p = add("preflight", cmd_preflight,
            "Can a job ever be scheduled on a cluster? Its bundles against the cluster at its largest.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the job's config")
    job = p.add_mutually_exclusive_group()
    job.add_argument("--config", default="coco-r18-256x192", help="experiment preset or YAML (default: the paper's)")
    job.add_argument("--sweep", help="a sweep YAML (its concurrent trials)")
    job.add_argument("--study", help="a compare study YAML (its concurrent trials)")
    job.add_argument("--serve", action="store_true", help="the Serve app (KEY=VALUE: ServeConfig overrides)")
    p.add_argument("--kind", choices=["teacher", "baseline", "cdkd"], default="cdkd", help="the run (default cdkd)")
    p.add_argument("--cluster", help="a cluster-launcher YAML or a KubeRay RayCluster/RayJob/RayService manifest "
                                     "(default: the cluster at --address / $RAY_ADDRESS)")
    _add_address(p)

    p = add("cluster", cmd_cluster,
            "Start, inspect or stop a local autoscaling Ray cluster (fake multi-node provider, loopback only).")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--config", help="cluster-launcher YAML with provider type fake_multinode "
                                    "(default: clusters/local-autoscale.yaml)")
    p.add_argument("--port", type=int, default=6379, help="GCS port of the head (default 6379)")
    p.add_argument("--dashboard-port", type=int, default=8265, help="dashboard / Ray Jobs port (default 8265)")
    p.add_argument("--state-dir", help="where the head's PID, log and effective config are kept "
                                       "(default: $CDKD_RAY_HOME/local-cluster or ~/.cache/cdkd-ray/local-cluster)")
    from cdkd_ray.ray_adapters.local_cluster import STOP_GRACE_S

    p.add_argument("--grace-seconds", type=_seconds, default=STOP_GRACE_S,
                   help="down: how long the cluster's processes get to stop on SIGTERM before SIGKILL "
                        "(default %(default)s, as `ray stop`)")
    _add_address(p, "status: a cluster address instead of the recorded local cluster")

    p = add("model-info", cmd_model_info, "Parameters and FLOPs of the student, the teacher and train-only modules.")
    p.add_argument("arch_or_config", metavar="ARCH_OR_CONFIG",
                   help="resnet18..resnet152, a preset name (tiny, synth-cpu, coco-r18-256x192) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. distill.student_tap=layer3")
    p.add_argument("--input-size", type=_size, help="HxW (default: the config's, or 256x192)")

    p = add("export", cmd_export, "Export the student from a checkpoint: student.pt + model_card.json (+ ONNX).")
    p.add_argument("checkpoint", metavar="CKPT", help="a cdkd-ray checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--onnx", action="store_true", help="also write student.onnx (opset >= 17, dynamic batch)")
    p.add_argument("--onnx-decode", action="store_true", help="ONNX outputs keypoints + scores instead of heatmaps")
    p.add_argument("--opset", type=int, default=17)

    p = add("shards-gc", cmd_shards_gc,
            "Remove what interrupted shard writes left behind (never a published version or a write under way).")
    p.add_argument("uri", metavar="URI", help="shard root: a folder or s3://bucket/prefix")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    _add_s3_endpoint(p)

    p = add("shards-info", cmd_shards_info, "Print counts, schema and checksums of every split, verified.")
    p.add_argument("uri", metavar="URI", help="shard root: a folder or s3://bucket/prefix")
    p.add_argument("--quick", action="store_true", help="check Parquet metadata only, not file checksums")
    _add_s3_endpoint(p)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a command line; KEY=VALUE overrides may also follow options that come after a positional."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if hasattr(args, "overrides") and overrides:
        args.overrides = [*args.overrides, *overrides]
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if getattr(args, "json", False):
        from cdkd_ray.ray_adapters.runtime import stream_worker_logs

        stream_worker_logs(False)  # nothing streamed from cluster workers may follow the JSON line
    try:
        try:
            args.func(args)
        finally:
            _print_final_json()
    except InterruptedRun as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        raise SystemExit(130) from None
    except CdkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
