import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from cdkd_ray.core.config import apply_overrides, from_dict, to_dict
from cdkd_ray.core.errors import ConfigError


@dataclass
class Inner:
    p: float = 0.5
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    size: tuple[int, int] = (256, 192)
    steps: int = 3
    name: Optional[str] = None
    inner: Inner = field(default_factory=Inner)


def test_overrides_are_typed_and_nested():
    data = apply_overrides({}, ["inner.p=0.25", "size=128x96", "steps=7", "inner.mode=b"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.p == 0.25 and cfg.size == (128, 96) and cfg.steps == 7 and cfg.inner.mode == "b"
    assert to_dict(cfg)["size"] == [128, 96]


@pytest.mark.parametrize("overrides, message", [
    (["inner.pp=1"], "unknown config key 'inner.pp' (did you mean 'p'?)"),
    (["steps=abc"], "steps: expected an integer, got 'abc'"),
    (["inner.mode=c"], "inner.mode: 'c' is not one of 'a', 'b'"),
    (["size=1x2x3"], "size: expected 2 values"),
    (["steps"], "not of the form key.sub=value"),
    (["inner.p=.nan"], "inner.p: expected a finite number"),
])
def test_bad_configs_are_named(overrides, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Outer, apply_overrides({}, overrides))
    assert message in str(info.value)


def test_cli_overrides_may_follow_options_after_a_positional(capsys):
    from cdkd_ray.apps.cli import parse_args

    args = parse_args(["serve", "model_dir", "max_batch_size=8", "--port", "9000", "--detach",
                       "target_ongoing_requests=2", "downscale_delay_s=5"])
    assert args.model == "model_dir" and args.port == 9000 and args.detach
    assert args.overrides == ["max_batch_size=8", "target_ongoing_requests=2", "downscale_delay_s=5"]
    with pytest.raises(SystemExit):
        parse_args(["serve", "model_dir", "--port", "9000", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_serve_autoscaling_window_is_configurable_and_checked():
    from ray.serve.config import AutoscalingConfig

    from cdkd_ray.ray_adapters.serve.app import ServeConfig, autoscaling_config

    cfg = from_dict(ServeConfig, apply_overrides({"model_uri": "export"}, ["look_back_period_s=5"]), "serve")
    with warnings.catch_warnings():  # Ray warns (and will refuse) a window not longer than the metrics' interval
        warnings.simplefilter("error", FutureWarning)
        autoscaling = AutoscalingConfig(**autoscaling_config(cfg))  # what Serve itself accepts
    assert autoscaling.look_back_period_s == 5.0 and autoscaling.downscale_delay_s == cfg.downscale_delay_s
    assert autoscaling.metrics_interval_s == 2.5  # the load is pushed twice in each window, not every 10 s
    default = autoscaling_config(from_dict(ServeConfig, {"model_uri": "export"}, "serve"))
    assert "metrics_interval_s" not in default and AutoscalingConfig(**default).metrics_interval_s == 10.0
    with pytest.raises(ConfigError, match="look_back_period_s must be > 0"):
        from_dict(ServeConfig, apply_overrides({"model_uri": "export"}, ["look_back_period_s=0"]), "serve")
