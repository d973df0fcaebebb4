"""A comparison study: variants (overrides on one base experiment) x seeds, and what makes two studies the same."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cdkd_ray.core.config import apply_overrides, from_dict, read_yaml_mapping, to_dict
from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.experiment import ExperimentConfig, distill_kind
from cdkd_ray.core.names import check_name
from cdkd_ray.core.run_identity import RESUMABLE_KEYS, identity_diff
from cdkd_ray.core.stats import CI_METHODS

SEED_KEYS = ("train.seed", "data.seed")  # set per seed: same data order, augmentation and initial weights
# What may change when a study resumes: resources only. Epochs and evaluation change results, so they may not.
STUDY_RESUMABLE_KEYS = tuple(k for k in RESUMABLE_KEYS if k not in ("train.epochs", "train.val_every"))


@dataclass
class StudyConfig:
    """What `cdkd-ray compare` runs: every variant with every seed, compared with the baseline variant."""

    experiment: str = "synth-cpu"  # preset or YAML of the base experiment (a path relative to the study file)
    experiment_overrides: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=lambda: {
        "baseline": {"distill.enabled": False},
        "cdkd": {},
    })
    baseline: str = "baseline"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ci_method: str = "paired_t"
    ci_level: float = 0.95
    # more paired comparisons for the report, [variant, reference] each, e.g. [cdkd-p0.2, inter-p0]:
    # "does channel dropout help?" is CDKD against the same distillation without it, not against the baseline
    contrasts: list[list[str]] = field(default_factory=list)
    max_concurrent_trials: int = 2
    trial_workers: int = 1
    trial_cpus_per_worker: float = 1.0

    def validate(self, where: str = "study") -> None:
        if not isinstance(self.variants, dict) or len(self.variants) < 2:
            raise ConfigError(f"{where}.variants must name at least two variants (the baseline and one more)")
        for name, overrides in self.variants.items():
            check_name(str(name), f"{where}.variants name")
            variant_overrides(overrides, f"{where}.variants.{name}")
        if self.baseline not in self.variants:
            raise ConfigError(f"{where}.baseline '{self.baseline}' is not one of the variants "
                              f"({', '.join(self.variants)})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}.seeds must be a non-empty list of distinct integers, got {self.seeds}")
        for pair in self.contrasts:
            if len(pair) != 2 or any(v not in self.variants for v in pair) or pair[0] == pair[1]:
                raise ConfigError(f"{where}.contrasts: each entry is [variant, reference], two different variants "
                                  f"of {', '.join(self.variants)}; got {pair}")
        if self.ci_method not in CI_METHODS:
            raise ConfigError(f"{where}.ci_method must be one of {', '.join(CI_METHODS)}, got '{self.ci_method}'")
        if not 0.5 < self.ci_level < 1:
            raise ConfigError(f"{where}.ci_level must be within (0.5, 1), got {self.ci_level}")
        if self.max_concurrent_trials < 1 or self.trial_workers < 1 or self.trial_cpus_per_worker <= 0:
            raise ConfigError(f"{where}: max_concurrent_trials and trial_workers must be >= 1, "
                              "trial_cpus_per_worker > 0")


def variant_overrides(spec: Any, where: str) -> list[str]:
    """A variant as `key=value` overrides: given as a mapping {key: value} or as a list of 'key=value'."""
    if spec is None:
        return []
    if isinstance(spec, dict):
        return [f"{key}={_yaml_value(value)}" for key, value in spec.items()]
    if isinstance(spec, list) and all(isinstance(item, str) and "=" in item for item in spec):
        return list(spec)
    raise ConfigError(f"{where}: expected a mapping of config keys to values (e.g. {{distill.dropout_p: 0.2}}) "
                      f"or a list of 'key=value' overrides, got {spec!r}")


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def load_study(path: str, overrides: list[str] = ()) -> StudyConfig:
    """The study file plus `key=value` overrides; a relative experiment path is taken from the study's folder."""
    data = apply_overrides(read_yaml_mapping(path), list(overrides))
    study = from_dict(StudyConfig, data, "study")
    local = os.path.join(os.path.dirname(os.path.abspath(path)), study.experiment)
    if study.experiment.endswith((".yaml", ".yml")) and not os.path.isabs(study.experiment) and os.path.exists(local):
        study.experiment = local
    return study


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def variant_config(study: StudyConfig, variant: str, seed: int) -> ExperimentConfig:
    """The experiment one trial trains: base, study overrides, the variant's, then the seed."""
    data = read_yaml_mapping(study.experiment) if study.experiment else {}
    overrides = [*study.experiment_overrides, *variant_overrides(study.variants[variant], variant),
                 *(f"{key}={seed}" for key in SEED_KEYS),
                 f"train.num_workers={study.trial_workers}", f"train.cpus_per_worker={study.trial_cpus_per_worker}"]
    return from_dict(ExperimentConfig, apply_overrides(data, overrides), f"variant {variant}")


def study_identity(study: StudyConfig, data_digest: str, teacher_digest: str | None) -> dict:
    """What makes results comparable: every variant's resolved config, the seeds, the data and the teacher."""
    variants = {}
    for name in study.variants:
        resolved = variant_config(study, name, study.seeds[0])
        cfg = to_dict(resolved)
        for key in SEED_KEYS:
            section, leaf = key.split(".")
            cfg[section].pop(leaf)
        variants[name] = {"kind": distill_kind(resolved).value, "config": cfg}
    return {"baseline": study.baseline, "seeds": list(study.seeds), "variants": variants,
            "data_digest": data_digest, "teacher_digest": teacher_digest}


def study_changes(old: dict, new: dict) -> list[str]:
    """Readable differences between two study identities that forbid mixing their results."""
    names = {*old.get("variants", {}), *new.get("variants", {})}
    return identity_diff(old, new, ignore={f"variants.{v}.config.{k}" for v in names for k in STUDY_RESUMABLE_KEYS})
