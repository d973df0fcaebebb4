"""Starting or joining Ray: an embedded local Ray on a laptop, or the cluster in RAY_ADDRESS."""

from __future__ import annotations

import logging
import os


# Ray Data reads Parquet footers with 32 actors per dataset by default: one is plenty for our shards,
# and 32 per dataset exhausts memory on small nodes.
DATA_ENV = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}
_STREAM_WORKER_LOGS = {"enabled": True}


def stream_worker_logs(enabled: bool) -> None:
    """Whether a driver that joins a cluster prints its workers' logs (off for --json output)."""
    _STREAM_WORKER_LOGS["enabled"] = enabled


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / $RAY_ADDRESS, else start a local Ray bound to loopback."""
    import ray

    if ray.is_initialized():
        return
    for key, value in DATA_ENV.items():
        os.environ.setdefault(key, value)
    # A Ray Job's driver already runs in the job's runtime_env (jobs/runtime_env.yaml sets DATA_ENV).
    runtime_env = None if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else {"env_vars": DATA_ENV}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env,
                 log_to_driver=_STREAM_WORKER_LOGS["enabled"])
        pin_data_helpers_here()
        return
    # Always a new embedded Ray ("local"): never join another command's Ray found in /tmp/ray.
    # Logical CPUs are declared generously: Data, Train and Tune drivers then never deadlock.
    ray.init(address="local", num_cpus=num_cpus or max(8, 2 * (os.cpu_count() or 2)), include_dashboard=False,
             object_store_memory=768 * 1024 * 1024, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=False, runtime_env=runtime_env)
    quiet_ray_data()


def pin_data_helpers_here() -> None:
    """Create Ray Data's detached helper actors on this driver's node (the head) before any job needs them.

    Ray Data creates them (stats, autoscaling coordinator) on the node of the first process that runs a
    dataset and never removes them; on an autoscaling cluster that is a train worker's node, which then
    never counts as idle and is never scaled down. Created here first, they live on the head instead.
    """
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
        from ray.data._internal.stats import get_or_create_stats_actor

        get_or_create_stats_actor()
        get_or_create_autoscaling_coordinator()
    except (ImportError, AttributeError) as exc:  # private API: a Ray upgrade must not break the driver
        logging.getLogger(__name__).warning("could not pin Ray Data helper actors to the head: %s", exc)


def quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
