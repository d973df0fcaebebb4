"""Starting or joining Ray: an embedded local Ray on a laptop, or the cluster in RAY_ADDRESS."""

from __future__ import annotations

import logging
import os


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` / $RAY_ADDRESS, else start a local Ray bound to loopback."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    # Logical CPUs are declared generously: Data, Train and Tune drivers then never deadlock.
    ray.init(num_cpus=num_cpus or max(8, 2 * (os.cpu_count() or 2)), include_dashboard=False,
             object_store_memory=768 * 1024 * 1024, _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}})
    quiet_ray_data()


def quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
