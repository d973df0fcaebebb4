"""`cdkd-ray sweep`: Ray Tune drives one Ray Train run per trial, ASHA stops the weak ones early."""

from __future__ import annotations

import csv
import io
import json
import os

import yaml

from cdkd_ray.core.config import apply_overrides, from_dict, load_config, read_yaml_mapping, to_dict
from cdkd_ray.core.storage import absolute_uri, resolve
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig
from cdkd_ray.ray_adapters.sweep_config import SweepConfig, tune_space

TRAIN_RUNS = "train_runs"


def load_sweep_config(path: str | None, overrides: list[str]) -> SweepConfig:
    data = read_yaml_mapping(path) if path else {}
    return from_dict(SweepConfig, apply_overrides(data, overrides), "sweep")


def _trial_fn(config: dict) -> None:
    """Tune function trainable: the driver of one Ray Train run with this trial's hyperparameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cdkd_ray.ray_adapters.train_driver import run_training

    base = config["__base"]
    params = {k: v for k, v in config.items() if not k.startswith("__")}
    overrides = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    cfg = from_dict(ExperimentConfig, apply_overrides(base["experiment"], overrides))
    trial = tune.get_context().get_trial_id()
    run_training(cfg, "distill", base["data"], base["train_storage"], f"trial_{trial}",
                 teacher_checkpoint=base.get("teacher"), s3_endpoint=base.get("s3_endpoint"),
                 callbacks=[TuneReportCallback()], write_outputs=False)


def run_sweep(sweep: SweepConfig, data_uri: str, storage_uri: str, name: str, teacher: str | None,
              resume: bool = False, s3_endpoint: str | None = None, ray_address: str | None = None) -> dict:
    """Run (or resume) a sweep; writes the table, the plot, the best config and the exported student."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    experiment = load_config(ExperimentConfig, sweep.experiment, sweep.experiment_overrides)
    experiment.train.num_workers = sweep.trial_workers
    experiment.train.cpus_per_worker = sweep.trial_cpus_per_worker
    for key in sweep.search:  # every searched key must exist in the experiment config
        apply_and_check(experiment, key)
    storage = resolve(storage_uri, s3_endpoint)
    storage.makedirs()
    sweep_dir = storage.join(name)
    exists = sweep_dir.join("tuner.pkl").exists()
    if exists and not resume:
        raise CdkdError(f"a sweep named '{name}' already exists in {storage.uri}: pass --resume to continue it, "
                        "or choose another --name (results are never mixed)")
    if resume and not exists:
        raise CdkdError(f"nothing to resume: no sweep named '{name}' in {storage.uri}")
    ensure_ray(ray_address)
    data_uri, teacher = absolute_uri(data_uri), (absolute_uri(teacher) if teacher else None)
    base = {"experiment": to_dict(experiment), "data": data_uri, "teacher": teacher, "s3_endpoint": s3_endpoint,
            "train_storage": sweep_dir.join(TRAIN_RUNS).uri}
    trainable = tune.with_resources(_trial_fn, {"CPU": 0.01})
    storage_path = storage.uri if not storage.is_remote else storage.path
    fs = None
    if storage.is_remote:
        from cdkd_ray.core.storage import pyarrow_filesystem

        fs = pyarrow_filesystem(storage)
    if resume:
        tuner = tune.Tuner.restore(sweep_dir.uri if not storage.is_remote else sweep_dir.path, trainable,
                                   resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    else:
        scheduler = None
        if sweep.asha.enabled:
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=experiment.train.epochs,
                                      grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor)
        space = {**tune_space(sweep.search), "__base": base}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric="score" if sweep.metric == "AP" else sweep.metric, mode="max",
                                        scheduler=scheduler,
                                        num_samples=1 if sweep.search_alg == "grid" else sweep.num_samples,
                                        max_concurrent_trials=sweep.max_concurrent_trials),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs, verbose=0),
        )
    results = tuner.fit()
    return write_sweep_outputs(results, sweep, sweep_dir, experiment)


def apply_and_check(experiment: ExperimentConfig, key: str) -> None:
    node = experiment
    for part in key.split("."):
        if not hasattr(node, part):
            raise CdkdError(f"sweep.search key '{key}' is not an experiment config key")
        node = getattr(node, part)


def write_sweep_outputs(results, sweep: SweepConfig, sweep_dir, experiment: ExperimentConfig) -> dict:
    """sweep.csv (sorted by AP), ap_vs_params.png, best_config.yaml, best_student/ (export)."""
    from cdkd_ray.core.models.export import export_student

    keys = list(sweep.search)
    rows = []
    failed = [r for r in results if r.error is not None]
    if failed and len(failed) == len(results):
        raise CdkdError(f"all {len(failed)} trials failed; the first error:\n{failed[0].error}")
    for result in results:
        if not result.metrics or sweep.metric not in result.metrics:
            continue
        m = result.metrics
        best_ap = m.get(sweep.metric, 0.0)
        df = result.metrics_dataframe
        if df is not None and sweep.metric in df:
            best_ap = float(df[sweep.metric].max())
        rows.append({"trial": m.get("trial_id", ""), **{k: result.config.get(k) for k in keys},
                     "AP": best_ap, "final_AP": m.get(sweep.metric, 0.0), "epochs": m.get("training_iteration", 0),
                     "stopped_early": m.get("training_iteration", 0) < experiment.train.epochs,
                     "node": m.get("node_id", ""), "last_checkpoint": m.get("checkpoint_path", "")})
    if not rows:
        raise CdkdError("the sweep produced no results")
    rows.sort(key=lambda r: -r["AP"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    sweep_dir.join("sweep.csv").write_bytes(buf.getvalue().encode())
    sweep_dir.join("ap_vs_params.png").write_bytes(plot_sweep(rows, keys))
    best = rows[0]
    best_cfg = from_dict(ExperimentConfig, apply_overrides(to_dict(experiment),
                                                           [f"{k}={json.dumps(best[k])}" for k in keys]))
    sweep_dir.join("best_config.yaml").write_bytes(yaml.safe_dump(to_dict(best_cfg), sort_keys=False).encode())
    best_ckpt = best_checkpoint_of(results, best["trial"], sweep.metric, sweep_dir.is_remote)
    export_dir = sweep_dir.join("best_student")
    if not export_dir.is_remote:
        export_student(best_ckpt, export_dir.path)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            export_student(best_ckpt, os.path.join(tmp, "best_student"))
            for fname in os.listdir(os.path.join(tmp, "best_student")):
                with open(os.path.join(tmp, "best_student", fname), "rb") as f:
                    export_dir.join(fname).write_bytes(f.read())
    nodes = sorted({r["node"] for r in rows if r["node"]})
    return {"sweep_dir": sweep_dir.uri, "trials": rows, "best": best, "best_checkpoint": best_ckpt,
            "best_student": export_dir.uri, "csv": sweep_dir.join("sweep.csv").uri,
            "plot": sweep_dir.join("ap_vs_params.png").uri, "best_config": sweep_dir.join("best_config.yaml").uri,
            "stopped_early": sum(r["stopped_early"] for r in rows), "nodes_used": len(nodes)}


def best_checkpoint_of(results, trial_id: str, metric: str, remote: bool) -> str:
    """The trial's Train checkpoint with the best AP (Train keeps the N best of every trial)."""
    for result in results:
        if result.metrics and result.metrics.get("trial_id") == trial_id and result.metrics.get("checkpoint_path"):
            run_dir = result.metrics["checkpoint_path"].rstrip("/").rsplit("/", 1)[0]
            location = resolve(f"s3://{run_dir}" if remote and "://" not in run_dir else run_dir)
            scored = []
            for name in location.listdir_names():
                state = location.join(name, "trainer_state.json")
                if name.startswith("checkpoint_") and state.exists():
                    scored.append((json.loads(state.read_bytes())["metrics"].get(metric, 0.0), location.join(name).uri))
            if scored:
                return max(scored)[1]
    raise CdkdError(f"no checkpoint found for the best trial {trial_id}")


def plot_sweep(rows: list[dict], keys: list[str]) -> bytes:
    from cdkd_ray.core.plots import subplots, to_png

    fig, axes = subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        xs = values if numeric else [str(v) for v in values]
        colors = ["tab:red" if r["stopped_early"] else "tab:blue" for r in rows]
        ax.scatter(xs, [r["AP"] for r in rows], c=colors)
        ax.set_xlabel(key)
        ax.set_ylabel("best val AP")
        ax.grid(alpha=0.3)
    fig.suptitle("sweep: AP per trial (red: stopped early by ASHA)")
    return to_png(fig)
