"""`cdkd-ray sweep`: Ray Tune drives one Ray Train run per trial, ASHA stops the weak ones early."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile

import yaml

from cdkd_ray.core.config import apply_overrides, from_dict, load_config, read_yaml_mapping, to_dict
from cdkd_ray.core.checkpoint import (
    CHECKPOINT_PREFIX, EXPORT_POINTER, STATE_FILE, epoch_of_checkpoint, unrecorded_checkpoints,
)
from cdkd_ray.core.names import check_name
from cdkd_ray.core.selection import EPOCHS_KEY, SCORE_KEY, best_by_score, selection_score
from cdkd_ray.core.storage import Location, absolute_uri, pyarrow_filesystem, resolve
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig, distill_kind
from cdkd_ray.core.run_identity import identity_diff, shown_diff
from cdkd_ray.ray_adapters.sweep_config import SweepConfig, tune_space
from cdkd_ray.ray_adapters.tune_outcome import fit_or_refuse, restore_tuner, say_kept_concurrency

TRAIN_RUNS = "train_runs"
SWEEP_FILE = "sweep.json"  # what the sweep is: its config, base experiment, data and teacher; a resume must match


def load_sweep_config(path: str | None, overrides: list[str]) -> SweepConfig:
    data = read_yaml_mapping(path) if path else {}
    return from_dict(SweepConfig, apply_overrides(data, overrides), "sweep")


def _trial_fn(config: dict) -> None:
    """Tune function trainable: the driver of one Ray Train run with this trial's hyperparameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from cdkd_ray.ray_adapters.train_driver import RUN_LEASE_S, run_training

    base = config["__base"]
    params = {k: v for k, v in config.items() if not k.startswith("__")}
    overrides = [f"{k}={json.dumps(v)}" for k, v in params.items()]
    cfg = from_dict(ExperimentConfig, apply_overrides(base["experiment"], overrides))
    trial = tune.get_context().get_trial_id()
    run_training(cfg, distill_kind(cfg), base["data"], base["train_storage"], f"trial_{trial}",
                 teacher_checkpoint=base.get("teacher"), s3_endpoint=base.get("s3_endpoint"),
                 callbacks=[TuneReportCallback()], write_outputs=False,
                 lease_wait_s=RUN_LEASE_S + 15)  # a resumed trial's old driver may have run on a node now gone


def _prepare(sweep: SweepConfig, storage_uri: str, name: str, resume: bool, s3_endpoint: str | None):
    """(base experiment, storage, sweep dir), refusing to mix a new sweep into an old one of the same name."""
    check_name(name, "sweep name")
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
    return experiment, storage, sweep_dir


def _new_tuner(trainable, sweep: SweepConfig, experiment: ExperimentConfig, base: dict, name: str, storage_path: str,
               fs):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if sweep.asha.enabled:
        scheduler = ASHAScheduler(time_attr=EPOCHS_KEY, max_t=experiment.train.epochs,
                                  grace_period=sweep.asha.grace_period, reduction_factor=sweep.asha.reduction_factor)
    return tune.Tuner(
        trainable, param_space={**tune_space(sweep.search), "__base": base},
        tune_config=tune.TuneConfig(metric=SCORE_KEY, mode="max", scheduler=scheduler,
                                    num_samples=1 if sweep.search_alg == "grid" else sweep.num_samples,
                                    max_concurrent_trials=sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs, verbose=0),
    )


def run_sweep(sweep: SweepConfig, data_uri: str, storage_uri: str, name: str, teacher: str | None,
              resume: bool = False, s3_endpoint: str | None = None, ray_address: str | None = None) -> dict:
    """Run (or resume) a sweep; writes the table, the plot, the best config and the exported student."""
    from ray import tune

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    experiment, storage, sweep_dir = _prepare(sweep, storage_uri, name, resume, s3_endpoint)
    data_uri, teacher = absolute_uri(data_uri), (absolute_uri(teacher) if teacher else None)
    base = {"experiment": to_dict(experiment), "data": data_uri, "teacher": teacher, "s3_endpoint": s3_endpoint,
            "train_storage": sweep_dir.join(TRAIN_RUNS).uri}
    claim_sweep(sweep_dir, {"sweep": to_dict(sweep), **base}, resume)
    ensure_ray(ray_address)
    trainable = tune.with_resources(_trial_fn, {"CPU": 0.01})
    fs = pyarrow_filesystem(storage) if storage.is_remote else None
    if resume:
        tuner = restore_tuner(sweep_dir, trainable, fs, f"sweep '{name}'")
    else:
        tuner = _new_tuner(trainable, sweep, experiment, base, name, storage.path if storage.is_remote else storage.uri,
                           fs)
    results = fit_or_refuse(tuner, f"sweep '{name}'")
    return write_sweep_outputs(results, sweep, sweep_dir, experiment)


def claim_sweep(sweep_dir: Location, record: dict, resume: bool) -> None:
    """Record a new sweep (sweep.json), or check that a resume asks for the sweep it continues.

    A resumed sweep runs what Tune saved: its search space, base experiment, data and teacher. A resume
    that asks for anything else is refused with the differences; another max_concurrent_trials is
    said to stay as it was. A sweep started before sweep.json existed resumes unchecked.
    """
    path = sweep_dir.join(SWEEP_FILE)
    if not resume:
        path.write_atomic(json.dumps(record, indent=1).encode())
        return
    if not path.exists():
        return
    try:
        old = json.loads(path.read_bytes())
    except ValueError as e:
        raise CdkdError(f"{path.uri} is not valid JSON ({e}): it records what the sweep started with; restore "
                        "it, or start a new sweep under another --name") from None
    changes = identity_diff(old, record, ignore={"sweep.max_concurrent_trials", "s3_endpoint"})
    if changes:
        raise CdkdError(f"the sweep in {sweep_dir.uri} was started with other settings, and a resume runs the "
                        f"ones it started with:\n{shown_diff(changes)}\n  resume with the same config and "
                        "arguments, or start a new sweep under another --name")
    say_kept_concurrency(f"sweep in {sweep_dir.uri}", old["sweep"]["max_concurrent_trials"],
                         record["sweep"]["max_concurrent_trials"])


def apply_and_check(experiment: ExperimentConfig, key: str) -> None:
    node = experiment
    for part in key.split("."):
        if not hasattr(node, part):
            raise CdkdError(f"sweep.search key '{key}' is not an experiment config key")
        node = getattr(node, part)


def trial_rows(results, keys: list[str], epochs: int) -> list[dict]:
    """One row per finished trial at its best epoch (by the selection score), best trial first."""
    rows = []
    for result in results:
        if not result.metrics or "AP" not in result.metrics:
            continue
        m, df = result.metrics, result.metrics_dataframe
        epochs_seen = df.to_dict("records") if df is not None and SCORE_KEY in df else [m]
        best = best_by_score(epochs_seen)
        trained = int(max(r.get(EPOCHS_KEY, 0) for r in epochs_seen + [m]))
        rows.append({"trial": m.get("trial_id", ""), **{k: result.config.get(k) for k in keys},
                     "AP": float(best.get("AP", 0.0)), SCORE_KEY: selection_score(best),
                     "best_epoch": int(best.get("epoch", 0)), "final_AP": m.get("AP", 0.0),
                     "epochs": trained, "stopped_early": trained < epochs,
                     "node": m.get("node_id", ""), "last_checkpoint": m.get("checkpoint_path", "")})
    rows.sort(key=lambda r: -r[SCORE_KEY])
    return rows


def write_sweep_outputs(results, sweep: SweepConfig, sweep_dir: Location, experiment: ExperimentConfig) -> dict:
    """sweep.csv (best first), ap_vs_params.png, best_config.yaml, best_student/ (export)."""
    keys = list(sweep.search)
    failed = [r for r in results if r.error is not None]
    if failed and len(failed) == len(results):
        raise CdkdError(f"all {len(failed)} trials failed; the first error:\n{failed[0].error}")
    rows = trial_rows(results, keys, experiment.train.epochs)
    if not rows:
        raise CdkdError("the sweep produced no results")
    remove_partial_checkpoints(rows, sweep_dir.is_remote)
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
    best_ckpt = best_checkpoint_of(best["last_checkpoint"], sweep_dir.is_remote)
    export_dir = _export_best(best_ckpt, sweep_dir.join("best_student"))
    nodes = sorted({r["node"] for r in rows if r["node"]})
    return {"sweep_dir": sweep_dir.uri, "trials": rows, "best": best, "best_checkpoint": best_ckpt,
            "best_student": export_dir.uri, "csv": sweep_dir.join("sweep.csv").uri,
            "plot": sweep_dir.join("ap_vs_params.png").uri, "best_config": sweep_dir.join("best_config.yaml").uri,
            "stopped_early": sum(r["stopped_early"] for r in rows), "nodes_used": len(nodes)}


def _export_best(checkpoint: str, export_dir: Location) -> Location:
    """The best student, exported; on object storage published pointer-last (export.json names the version)."""
    from cdkd_ray.core.models.export import export_student
    from cdkd_ray.core.shard_publish import new_version, read_pointer

    if not export_dir.is_remote:
        export_student(checkpoint, export_dir.path)
        return export_dir
    version = f"v-{new_version()}"
    previous = read_pointer(export_dir, EXPORT_POINTER)
    with tempfile.TemporaryDirectory() as tmp:
        export_student(checkpoint, os.path.join(tmp, "best_student"))
        for fname in os.listdir(os.path.join(tmp, "best_student")):
            with open(os.path.join(tmp, "best_student", fname), "rb") as f:
                export_dir.join(version, fname).write_bytes(f.read())
    export_dir.join(EXPORT_POINTER).write_atomic(json.dumps({"version": version}).encode())
    if previous:
        export_dir.join(previous["version"]).remove()
    return export_dir


def trial_run_dir(checkpoint_path: str, remote: bool) -> Location:
    """The Train run folder of a checkpoint path as Tune reports it (without the scheme on object storage)."""
    run_dir = checkpoint_path.rstrip("/").rsplit("/", 1)[0]
    return resolve(f"s3://{run_dir}" if remote and "://" not in run_dir else run_dir)


def remove_partial_checkpoints(rows: list[dict], remote: bool) -> None:
    """Remove the partly written checkpoints above each trial's last reported one.

    A trial goes on to its next epoch while Tune weighs its report, so ASHA can stop it in the middle of
    writing the next checkpoint (Ray copies the small trainer state first): nothing can load that one, and
    the search for the best checkpoint would take its trainer state for a checkpoint.
    """
    for row in rows:
        if not row["last_checkpoint"]:
            continue
        run_dir = trial_run_dir(row["last_checkpoint"], remote)
        reported = epoch_of_checkpoint(row["last_checkpoint"].rstrip("/").rsplit("/", 1)[1])
        for name in unrecorded_checkpoints(run_dir, -1 if reported is None else reported).incomplete:
            run_dir.join(name).remove()
            print(f"removed {run_dir.join(name).uri}: its trial was stopped while writing it", file=sys.stderr,
                  flush=True)


def best_checkpoint_of(any_checkpoint: str, remote: bool) -> str:
    """The best checkpoint (by the selection score) of the Train run that wrote `any_checkpoint`."""
    if not any_checkpoint:
        raise CdkdError("the best trial reported no checkpoint")
    location = trial_run_dir(any_checkpoint, remote)
    scored = []
    for name in location.listdir_names():
        state = location.join(name, STATE_FILE)
        if name.startswith(CHECKPOINT_PREFIX) and state.exists():
            scored.append((json.loads(state.read_bytes())["metrics"], location.join(name).uri))
    if not scored:
        raise CdkdError(f"no checkpoint found in {location.uri}")
    return best_by_score(scored, metrics_of=lambda item: item[0])[1]


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
