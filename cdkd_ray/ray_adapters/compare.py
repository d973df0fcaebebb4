"""`cdkd-ray compare`: every variant x seed of a study as one Ray Tune grid, then the report.

Layout under STORAGE/NAME: study.json (what the study is; a resume must match it), trials.json (what
each trial reads when it starts: resolved configs, data, teacher), Tune's state,
runs/VARIANT-seedN (one Ray Train run each: checkpoints, metrics.jsonl, summary.json) and the report
(report.md, report.json, ap_per_epoch.png, paired_diff.png).
"""

from __future__ import annotations

import json

from cdkd_ray.core.config import apply_overrides, from_dict, to_dict
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig, distill_kind
from cdkd_ray.core.names import check_name
from cdkd_ray.core.run_identity import data_digest, file_digest, shown_diff
from cdkd_ray.core.selection import SCORE_KEY
from cdkd_ray.core.shards import verified_manifests
from cdkd_ray.core.storage import Location, absolute_uri, pyarrow_filesystem, resolve
from cdkd_ray.core.study import (
    SEED_KEYS, StudyConfig, run_name, study_changes, study_identity, variant_config, variant_overrides,
)
from cdkd_ray.ray_adapters.tune_outcome import fit_or_refuse, restore_tuner, say_kept_concurrency
from cdkd_ray.core.study_report import (
    build_report, markdown_report, plot_ap_per_epoch, plot_paired_differences, runs_in_study_order, variant_costs,
)

STUDY_FILE = "study.json"
TRIALS_FILE = "trials.json"  # what trials read when they start: rewritten at every start and resume
RUNS = "runs"


def _trial_fn(config: dict) -> None:
    """One grid point: the Ray Train run of this variant with this seed (resumed by name if it ran before)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from cdkd_ray.ray_adapters.train_driver import RUN_LEASE_S, run_training

    study_dir = resolve(config["__study_dir"], config.get("__s3_endpoint"))
    base, variant, seed = json.loads(study_dir.join(TRIALS_FILE).read_bytes()), config["variant"], config["seed"]
    cfg = from_dict(ExperimentConfig, apply_overrides(base["configs"][variant], [f"{k}={seed}" for k in SEED_KEYS]))
    kind = distill_kind(cfg)
    run_training(cfg, kind, base["data"], base["runs"], run_name(variant, seed),
                 teacher_checkpoint=base["teacher"] if kind.distills else None, s3_endpoint=base.get("s3_endpoint"),
                 callbacks=[TuneReportCallback()], lease_wait_s=RUN_LEASE_S + 15)  # as a sweep's trial


def _claim_study(study: StudyConfig, study_dir: Location, identity: dict, resume: bool, where: dict) -> bool:
    """Record a new study (and `where` its data and teacher are), or check that `resume` continues the same one."""
    path = study_dir.join(STUDY_FILE)
    if not path.exists():
        if resume:
            raise CdkdError(f"nothing to resume: no study in {study_dir.uri}")
        study_dir.makedirs()
        path.write_atomic(json.dumps({"identity": identity, "study": to_dict(study), **where}, indent=1).encode())
        return False
    if not resume:
        raise CdkdError(f"a study already exists in {study_dir.uri}: pass --resume to continue it, or choose "
                        "another --name (results of two studies are never mixed)")
    old = json.loads(path.read_bytes())
    changes = study_changes(old["identity"], identity)
    if changes:
        raise CdkdError(f"the study in {study_dir.uri} was started with other settings; resuming would mix two "
                        f"studies:\n{shown_diff(changes)}\n  use another --name (only resources may change on "
                        "resume)")
    say_kept_concurrency(f"study in {study_dir.uri}", old["study"]["max_concurrent_trials"], study.max_concurrent_trials)
    return True


def prepare_study(study: StudyConfig, data_uri: str, storage_uri: str, name: str, teacher: str | None,
                  resume: bool, s3_endpoint: str | None) -> tuple[Location, dict]:
    """(study dir, the trials' shared base), after checking the data, the teacher and resume."""
    check_name(name, "study name")
    data_uri = absolute_uri(data_uri)
    teacher = absolute_uri(teacher) if teacher else None
    configs = {v: to_dict(variant_config(study, v, study.seeds[0])) for v in study.variants}
    if not teacher and any(distill_kind(from_dict(ExperimentConfig, c)).distills for c in configs.values()):
        raise CdkdError("the study distils (a variant has distill.enabled) but no teacher was given: pass --teacher")
    manifests = verified_manifests(data_uri, ("train", "val"), s3_endpoint, hashes=False)
    identity = study_identity(study, data_digest(manifests), file_digest(teacher))
    storage = resolve(storage_uri, s3_endpoint)
    study_dir = storage.join(name)
    _claim_study(study, study_dir, identity, resume, {"data": data_uri, "teacher": teacher})
    base = {"configs": configs, "data": data_uri, "teacher": teacher, "s3_endpoint": s3_endpoint,
            "runs": study_dir.join(RUNS).uri}
    # Trials read this when they start, not a copy frozen in Tune's state: on resume, changed resources
    # (or a moved data folder with the same content) apply to the trials still to run.
    study_dir.join(TRIALS_FILE).write_atomic(json.dumps(base, indent=1).encode())
    return study_dir, base


def _tuner(study: StudyConfig, study_dir: Location, s3_endpoint: str | None):
    """A new Tune grid over variant x seed, or the interrupted one restored (finished trials are kept)."""
    from ray import tune

    trainable = tune.with_resources(_trial_fn, {"CPU": 0.01})  # the Train run inside requests the workers
    fs = pyarrow_filesystem(study_dir) if study_dir.is_remote else None
    parent, name = study_dir.uri.rstrip("/").rsplit("/", 1)
    storage_path = parent.removeprefix("s3://") if study_dir.is_remote else parent
    if study_dir.join("tuner.pkl").exists():
        return restore_tuner(study_dir, trainable, fs, f"study '{name}'")
    return tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search(list(study.variants)), "seed": tune.grid_search(list(study.seeds)),
                     "__study_dir": study_dir.uri, "__s3_endpoint": s3_endpoint},
        tune_config=tune.TuneConfig(metric=SCORE_KEY, mode="max", max_concurrent_trials=study.max_concurrent_trials),
        run_config=tune.RunConfig(name=name, storage_path=storage_path,
                                  storage_filesystem=fs, verbose=0),
    )


def run_compare(study: StudyConfig, data_uri: str, storage_uri: str, name: str, teacher: str | None,
                resume: bool = False, s3_endpoint: str | None = None, ray_address: str | None = None) -> dict:
    """Run (or resume) the study's grid, then write and return the report."""
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    study_dir, base = prepare_study(study, data_uri, storage_uri, name, teacher, resume, s3_endpoint)
    ensure_ray(ray_address)
    results = fit_or_refuse(_tuner(study, study_dir, s3_endpoint), f"study '{name}'")
    failed = [r for r in results if r.error is not None]
    if failed:
        which = ", ".join(run_name(r.config["variant"], r.config["seed"]) for r in failed)
        raise CdkdError(f"{len(failed)} of {len(results)} runs failed ({which}); finished runs are kept, "
                        f"`--resume` retries the rest. The first error:\n{failed[0].error}")
    return write_report(study, study_dir, base["teacher"])


def read_run(runs: Location, name: str) -> dict:
    """A finished run's summary.json with its per-epoch history (metrics.jsonl)."""
    summary_path = runs.join(name, "summary.json")
    if not summary_path.exists():
        raise CdkdError(f"run '{name}' has not finished (no {summary_path.uri}): resume the study first")
    summary = json.loads(summary_path.read_bytes())
    lines = runs.join(name, "metrics.jsonl").read_bytes().decode().splitlines()
    summary["history"] = [json.loads(line) for line in lines if line.strip()]
    return summary


def recorded_teacher(study_dir: Location) -> str | None:
    """The teacher the study was started with (study.json), for rebuilding its report."""
    path = study_dir.join(STUDY_FILE)
    if not path.exists():
        raise CdkdError(f"no study in {study_dir.uri} (no {STUDY_FILE})")
    return json.loads(path.read_bytes()).get("teacher")


def write_report(study: StudyConfig, study_dir: Location, teacher: str | None) -> dict:
    """report.json, report.md and the two PNGs from the finished runs; returns the report."""
    runs = runs_in_study_order(study, lambda run: read_run(study_dir.join(RUNS), run))
    report = build_report(study, study_dir.uri.rstrip("/").rsplit("/", 1)[1], runs, variant_costs(study, teacher))
    header = {"base experiment": f"`{study.experiment}` with `{' '.join(study.experiment_overrides) or 'no overrides'}`",
              "variants": "; ".join(f"**{v}**: `{' '.join(variant_overrides(o, v)) or 'the base as it is'}`"
                                    for v, o in study.variants.items()),
              "teacher": teacher or "none"}
    files = {"report_md": "report.md", "report_json": "report.json", "ap_plot": "ap_per_epoch.png",
             "diff_plot": "paired_diff.png"}
    report.update({key: study_dir.join(fname).uri for key, fname in files.items()})
    study_dir.join("ap_per_epoch.png").write_bytes(plot_ap_per_epoch(report, runs))
    study_dir.join("paired_diff.png").write_bytes(plot_paired_differences(report))
    study_dir.join("report.md").write_atomic(markdown_report(report, header).encode())
    study_dir.join("report.json").write_atomic(json.dumps(report, indent=1).encode())
    return report
