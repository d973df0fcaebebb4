"""The shape of the cluster this driver is connected to, for preflight checks."""

from __future__ import annotations

import logging

import yaml

from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.preflight import Bundle, ClusterShape, check_fits, format_report, load_cluster_shape, shape_from_nodes

log = logging.getLogger("cdkd_ray.preflight")


def connected_shape() -> ClusterShape:
    """The local autoscaling cluster's launcher config when that is what we joined, else the nodes alive now."""
    import ray

    from cdkd_ray.ray_adapters.local_cluster import read_state

    state = read_state()
    address = ray.get_runtime_context().gcs_address
    if state is not None and state.address == address:
        with open(state.config) as f:
            return load_cluster_shape(yaml.safe_load(f), state.config)
    return shape_from_nodes(ray.nodes())


def preflight_connected(bundles: list[Bundle]) -> dict:
    """Refuse a job the connected cluster can never place (with the fix); only warn when an autoscaler may grow it."""
    report = check_fits(bundles, connected_shape())
    if report["ok"]:
        return report
    if report["exact"]:
        raise CdkdError("preflight: this job can never be scheduled on this cluster (--no-preflight skips the "
                        "check)\n" + format_report(report))
    log.warning("preflight: the nodes alive now cannot hold this job; it waits until the autoscaler adds nodes "
                "(check the largest shape with `cdkd-ray preflight --cluster CONFIG`)\n%s", format_report(report))
    return report
