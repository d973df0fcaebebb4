"""Starting or joining Ray: an embedded local Ray on a laptop, or the cluster in RAY_ADDRESS."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


# Ray Data reads Parquet footers with 32 actors per dataset by default: one is plenty for our shards,
# and 32 per dataset exhausts memory on small nodes.
DATA_ENV = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}
_STREAM_WORKER_LOGS = {"enabled": True}
# Ray Train watches for nodes being drained (spot preemption) with an actor per run; the embedded Ray
# is one node that is never drained, so the watcher would only cost a process per run. Its controller
# sees that the workers have finished at its next poll of them, every 2 s by default: up to 2 s added to
# every run's end; polled every 0.5 s, a lone worker costs the controller 2 cheap calls a second.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# The embedded Ray's job-wide runtime env: the data env, and the hook that points Ray's state API at it
# and fits Ray Data to its object store in every worker.
LOCAL_RUNTIME_ENV = {"env_vars": {**DATA_ENV, **LOCAL_TRAIN_ENV},
                     "worker_process_setup_hook": f"{__name__}.set_up_local_worker"}
LOCAL_OBJECT_STORE_BYTES = 768 * 1024 * 1024
# How long Ray Data's scheduling loop waits for its tasks per round on the embedded Ray (Ray's: 0.1 s).
LOCAL_EXECUTOR_WAIT_S = 0.01


def local_decode_slots() -> int:
    """Decode tasks the embedded Ray runs at once, one per core (`data.max_tasks` sets a dataset's own)."""
    return os.cpu_count() or 1


def local_backpressure_ratio() -> float:
    """Ray Data's downstream-capacity ratio on the embedded Ray: a finished block of every decode slot, and
    one more, may wait beyond what the consumer holds (Ray's default, 2, held 2 tasks to ~1.4)."""
    return float(local_decode_slots() + 2)


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
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A Ray Job's driver already runs in the job's runtime_env (jobs/runtime_env.yaml sets DATA_ENV).
        runtime_env = None if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ else {"env_vars": DATA_ENV}
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env,
                 log_to_driver=_STREAM_WORKER_LOGS["enabled"])
        pin_data_helpers_here()
        return
    # Always a new embedded Ray ("local"): never join another command's Ray found in /tmp/ray.
    # Logical CPUs are declared generously: Data, Train and Tune drivers then never deadlock.
    with _auth_mode_kept_to_this_ray():
        context = ray.init(address="local", num_cpus=num_cpus or max(8, 2 * (os.cpu_count() or 2)),
                           include_dashboard=True, dashboard_host="127.0.0.1",
                           object_store_memory=LOCAL_OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1",
                           logging_level=logging.WARNING, log_to_driver=False, runtime_env=LOCAL_RUNTIME_ENV)
    if context.dashboard_url:
        print(f"embedded Ray, dashboard at http://{context.dashboard_url}", file=sys.stderr, flush=True)
    quiet_ray_data()
    fit_ray_data_to_the_local_store()


@contextlib.contextmanager
def _auth_mode_kept_to_this_ray():
    """Ray's token auth for a new local Ray, without its RAY_AUTH_MODE=token in this process's environment.

    `ray.init()` turns token auth on for the Ray it starts by setting RAY_AUTH_MODE=token in os.environ,
    where every later child process inherits it. A child that then drives another cluster (a `cdkd-ray
    sweep --address` on `cdkd-ray cluster up`'s cluster, which has no auth) came up in token mode, and
    that cluster killed the actors it created: its RPCs to the driver carry no token. The embedded Ray's
    own processes have started with the setting by then, and this process keeps it in its loaded config.
    """
    before = os.environ.get("RAY_AUTH_MODE")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


def set_up_local_worker() -> None:
    """Worker setup hook of the embedded Ray: its state API address and Ray Data's settings for its store."""
    address_this_cluster()
    fit_ray_data_to_the_local_store()


def fit_ray_data_to_the_local_store() -> None:
    """Ray Data fitted to one small box, in this process (embedded Ray only): no per-operator object-store
    reservation, room for a block of every decode task in the queue, and a scheduling loop that notices a
    finished decode task sooner.

    Ray Data reserves half of its share of the store (half the store) evenly among a dataset's operators
    and starts a task only while its operator stays within its reserve plus a slice of the rest. In the
    embedded Ray's 768 MiB store one 300-image part at 256x192 (~93 MB of crops) left no room for a
    second decode task: one ran at a time on two cores. A cluster node's store (30% of its memory) keeps
    Ray's default. Measured side by side in bench/torchrun_vs_ray.py.

    Without the reservation (Ray Data 2.60 then only reports its quarter-of-the-store limit), what holds
    Ray Data's memory is its downstream-capacity backpressure: no new task while the blocks waiting for
    the consumer exceed `ratio` times what the consumer buffers (about one block). A decode task's output
    becomes one block at its end (up to 128 MiB: ~110 MB for 256 real photos at 256x192), so the blocks
    of the tasks running at once land together; with Ray's ratio of 2 one of two task slots sat idle ~30%
    of a stream of real photos (1.38 tasks at once). With local_backpressure_ratio (cores + 2) a finished
    block of each slot and one more may wait: 1.85 tasks at once, 1.23x on real photos. In training (a
    slow consumer) the store's use measured the same with either ratio (README, Limits).

    Ray Data's scheduling loop waits up to 0.1 s per round for its tasks, so a data worker idled ~0.1 s
    after each decode task (0.2-0.3 s long on these parts); with LOCAL_EXECUTOR_WAIT_S it idles ~0.03 s,
    for ~0.03 more of a core in the consuming process (bench/data_task_gaps.py). The wait is a module
    constant of Ray Data's executor (2.60), not a setting; without it Ray's own stays.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.op_resource_reservation_enabled = False
    ctx.downstream_capacity_backpressure_ratio = local_backpressure_ratio()
    from ray.data._internal.execution import streaming_executor_state

    if hasattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"):
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = LOCAL_EXECUTOR_WAIT_S


def address_this_cluster() -> None:
    """Worker setup hook of the embedded Ray: Ray's state API, called inside its workers, queries this Ray.

    Unset, the state API looks for "the" cluster in /tmp/ray/ray_current_cluster, the last `ray start`
    head on the machine. Ray Train's placement group cleaner asks it whether the run's controller is
    alive: a dead head there (its GCS never answers) made every run's shutdown wait ~12 s for the
    cleaner, and a live other cluster answered "no such actor", so the cleaner quit before the run's
    placement group was registered and guarded nothing. The state API is served by the dashboard,
    hence include_dashboard=True.
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


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
