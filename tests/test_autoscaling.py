"""Autoscaling on one machine: a fake multi-node cluster under the real autoscaler (clusters/local-autoscale.yaml).

The sweep and serving tests share one cluster, started with `cdkd-ray cluster up` (~10 s) and stopped
with `cluster down` after both, which checks that no process of it is left. The sweep ends with its
autoscaled nodes gone, so serving starts from a head alone as it would on its own cluster. Drivers run
as subprocesses (this process may hold the session's Ray).
"""

from __future__ import annotations

import time

import psutil
import pytest
import yaml

from tests.conftest import _free_port
from tests.helpers import last_json, random_student_export, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A local autoscaling cluster on free ports for this module's tests; yields (address, state_dir)."""
    state = tmp_path_factory.mktemp("autoscaling") / "cluster"
    up = run_cli("cluster", "up", "--state-dir", state, "--port", _free_port(), "--dashboard-port", _free_port(),
                 "--json", timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    head = last_json(up)
    try:
        yield head["address"], state
    finally:
        tree = [head["pid"]] + [p.pid for p in _descendants(head["pid"])]
        down = run_cli("cluster", "down", "--state-dir", state, "--json", timeout=120)
        assert down.returncode == 0 and last_json(down)["stopped"], down.stdout + down.stderr
        # every node stopped on SIGTERM, in Ray's order
        assert last_json(down)["killed"] == 0, last_json(down)["killed_processes"]
        left = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not left, f"cluster processes left behind: {left}"
        assert not (state / "cluster.json").exists()


def _descendants(pid: int) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def worker_nodes(state) -> int:
    status = run_cli("cluster", "status", "--state-dir", state, "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    return last_json(status)["worker_nodes"]


def wait_for_no_worker_nodes(state, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if worker_nodes(state) == 0:
            return
        time.sleep(3)
    raise AssertionError(f"autoscaled worker nodes were not removed within {timeout:.0f}s")


def test_cluster_up_rejects_a_cloud_config_and_a_busy_port_and_down_a_negative_grace(tmp_path):
    cloud = tmp_path / "aws.yaml"
    cloud.write_text(yaml.safe_dump({"cluster_name": "x", "provider": {"type": "aws", "region": "us-west-2"}}))
    proc = run_cli("cluster", "up", "--config", cloud, "--state-dir", tmp_path / "s", timeout=60)
    assert proc.returncode == 2 and "ray up" in proc.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = run_cli("cluster", "up", "--state-dir", tmp_path / "s", "--port", busy.getsockname()[1], timeout=60)
    assert proc.returncode == 2 and "in use" in proc.stderr
    down = run_cli("cluster", "down", "--state-dir", tmp_path / "s", "--json", timeout=60)
    assert down.returncode == 0 and not last_json(down)["stopped"]
    # a negative grace would SIGKILL every process at once: refused before anything is stopped
    bad = run_cli("cluster", "down", "--state-dir", tmp_path / "s", "--grace-seconds", "-1", timeout=60)
    assert bad.returncode == 2 and "seconds must be >= 0, got '-1'" in bad.stderr


@pytest.mark.timeout(600)
def test_sweep_trials_run_on_autoscaled_nodes_that_go_away(local_cluster, synth_shards, tmp_path):
    address, state = local_cluster
    assert worker_nodes(state) == 0  # the head has no CPUs: every trial needs an autoscaled node
    teacher = tmp_path / "teacher.pth"
    import torch

    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet

    torch.save(PoseResNet(ModelConfig()).state_dict(), teacher)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "tiny",
        "experiment_overrides": ["train.epochs=1", "train.max_steps_per_epoch=2", "teacher.placement=worker"],
        "search": {"distill.dropout_p": {"grid": [0.1, 0.5]}}, "search_alg": "grid",
        "max_concurrent_trials": 2, "asha": {"enabled": False},
        # one trial's train worker fills a 2-CPU node: two concurrent trials need two nodes
        "trial_workers": 1, "trial_cpus_per_worker": 2}))
    proc = run_cli("sweep", "--config", config, "--data", synth_shards, "--storage", tmp_path / "out",
                   "--name", "auto", "--teacher", teacher, "--address", address, "--json", timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = last_json(proc)
    assert len(result["trials"]) == 2 and all(r["epochs"] == 1 for r in result["trials"])
    nodes = {r["node"] for r in result["trials"]}
    assert result["nodes_used"] == len(nodes) >= 2, result["trials"]
    wait_for_no_worker_nodes(state)


@pytest.mark.timeout(600)
def test_serve_replicas_scale_up_under_load_and_back_down(local_cluster, synth_dir, tmp_path):
    address, state = local_cluster
    wait_for_no_worker_nodes(state)  # after the sweep's test, if it ran: serving starts from the head alone
    student = random_student_export(str(tmp_path))
    port = _free_port()
    deploy = run_cli("serve", student, "--address", address, "--detach", "--port", port, "--min-replicas", 1,
                     "--max-replicas", 3, "--proxy-location", "HeadOnly", "target_ongoing_requests=2",
                     "downscale_delay_s=5", "look_back_period_s=5", timeout=240)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    image = sorted((synth_dir / "val").glob("*.jpg"))[0]
    proc = run_cli("load-test", f"http://127.0.0.1:{port}", "--image", image, "--address", address,
                   "--concurrency", 12, "--until-replicas", 2, "--hold-seconds", 2, "--max-seconds", 200,
                   "--cooldown-seconds", 200, "--out", tmp_path / "load", "--json", timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = last_json(proc)
    assert result["start_replicas"] == 1 and result["peak_replicas"] >= 2, result
    assert result["load"]["sent"] > 0 and result["load"]["failed"] == 0, result["load"]
    assert result["end_replicas"] == 1 and result["scaled_down_after_s"] is not None, result
    rows = (tmp_path / "load" / "replicas.csv").read_text().splitlines()
    assert rows[0] == "t,phase,replicas,worker_nodes,requests" and len(rows) > 10
    assert (tmp_path / "load" / "replicas.png").stat().st_size > 5000
