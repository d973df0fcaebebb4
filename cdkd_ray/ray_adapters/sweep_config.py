"""Sweep configuration: the base experiment, a YAML search space, ASHA and resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cdkd_ray.core.errors import ConfigError

SAMPLERS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")


@dataclass
class AshaConfig:
    enabled: bool = True
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class SweepConfig:
    experiment: str = "tiny"  # preset or YAML of the base experiment
    experiment_overrides: list[str] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=lambda: {
        "distill.dropout_p": {"uniform": [0.0, 0.5]},
        "distill.alpha": {"loguniform": [1e-4, 1e-2]},  # around the tuned default 1e-3
    })
    search_alg: Literal["random", "grid"] = "random"
    num_samples: int = 4
    max_concurrent_trials: int = 2
    asha: AshaConfig = field(default_factory=AshaConfig)
    trial_workers: int = 1  # Ray Train workers per trial
    trial_cpus_per_worker: float = 1.0
    seed: int = 0

    def validate(self, where: str = "sweep") -> None:
        if self.num_samples < 1 or self.max_concurrent_trials < 1:
            raise ConfigError(f"{where}: num_samples and max_concurrent_trials must be >= 1")
        if not isinstance(self.search, dict) or not self.search:
            raise ConfigError(f"{where}.search must map config keys to samplers, e.g. distill.dropout_p: {{uniform: [0, 0.5]}}")
        for key, spec in self.search.items():
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
                raise ConfigError(f"{where}.search.{key}: expected one of {', '.join(SAMPLERS)} "
                                  f"(e.g. {{uniform: [0, 0.5]}}), got {spec!r}")
            kind, args = next(iter(spec.items()))
            if not isinstance(args, list) or not args:
                raise ConfigError(f"{where}.search.{key}.{kind}: expected a list of arguments")
            if kind in ("uniform", "loguniform", "randint") and len(args) != 2:
                raise ConfigError(f"{where}.search.{key}.{kind}: expected [low, high]")
        if self.search_alg == "grid" and any(next(iter(s)) != "grid" for s in self.search.values()):
            raise ConfigError(f"{where}: search_alg=grid needs every search entry to be a grid: [...] list")


def tune_space(search: dict[str, Any]) -> dict[str, Any]:
    """YAML sampler specs -> ray.tune sampling objects, keyed by dotted config key."""
    from ray import tune

    build = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
             "quniform": lambda a: tune.quniform(*a), "randint": lambda a: tune.randint(*a),
             "choice": tune.choice, "grid": tune.grid_search}
    return {key: build[next(iter(spec))](next(iter(spec.values()))) for key, spec in search.items()}
