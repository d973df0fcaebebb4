"""Cluster configs validate against Ray's own schemas; a real Ray Jobs round trip on a local head."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, _free_port

MANIFESTS = sorted((REPO / "clusters" / "kuberay").glob("*.yaml"))


@pytest.mark.parametrize("name", ["aws.yaml", "local-autoscale.yaml"])
def test_launcher_configs_validate_against_the_wheel_schema(name):
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "clusters" / name).read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    if name == "aws.yaml":
        assert any(t.get("resources", {}).get("GPU") for t in types.values())
    assert all(t["min_workers"] == 0 and t["max_workers"] > 0 for n, t in types.items() if n != config["head_node_type"])


def test_kuberay_manifests_and_serve_configs_parse():
    from ray.serve.schema import ServeDeploySchema

    kinds = {}
    for path in MANIFESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["apiVersion"] == "ray.io/v1"
        kinds[doc["kind"]] = doc
    assert set(kinds) == {"RayCluster", "RayJob", "RayService"}
    assert kinds["RayCluster"]["spec"]["enableInTreeAutoscaling"] is True
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(kinds["RayService"]["spec"]["serveConfigV2"]))
    assert serve_cfg.applications[0].import_path == "cdkd_ray.ray_adapters.serve.app:app_builder"
    example = yaml.safe_load((REPO / "cdkd_ray" / "serve" / "serve_config.example.yaml").read_text())
    ServeDeploySchema.model_validate(example)
    from cdkd_ray.core.config import from_dict
    from cdkd_ray.ray_adapters.serve.app import ServeConfig

    for app in (serve_cfg.applications[0].args, example["applications"][0]["args"]):
        from_dict(ServeConfig, app, "serve")  # the app builder accepts exactly these args


def test_every_entrypoint_names_an_existing_script():
    texts = [p.read_text() for p in MANIFESTS] + [(REPO / "jobs" / "README.md").read_text()]
    scripts = {m for text in texts for m in re.findall(r"python (jobs/\S+\.py)", text)}
    assert {"jobs/train_teacher.py", "jobs/distill.py", "jobs/sweep.py", "jobs/serve.py"} <= scripts
    for script in scripts:
        assert (REPO / script).is_file(), script
        proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: cdkd-ray" in proc.stdout


@pytest.mark.timeout(480)
def test_ray_jobs_round_trip_on_a_local_head(synth_shards, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    port, dash = _free_port(), _free_port()
    temp = Path("/tmp") / f"cdkd-job-{os.getpid()}"
    # A throwaway loopback head: token auth off (it is on by default once ~/.ray/auth_token exists).
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "disabled"}
    start = subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=6",
                            # the agent's default port (52365) is taken by any other Ray on the machine
                            f"--dashboard-agent-listen-port={_free_port()}",
                            f"--temp-dir={temp}", "--include-dashboard=true", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert start.returncode == 0, start.stderr
    try:
        teacher = tmp_path / "teacher.pth"
        from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet

        torch.save(PoseResNet(ModelConfig()).state_dict(), teacher)
        client = JobSubmissionClient(f"http://127.0.0.1:{dash}")
        entry = (f"python jobs/distill.py --config tiny --data {synth_shards} --storage {tmp_path / 'runs'} "
                 f"--name job-run --teacher {teacher} --json train.epochs=1")
        runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
        runtime_env["working_dir"] = str(REPO)
        job, wait_until = None, time.time() + 240  # slow on a busy 2-core machine
        while job is None:  # the head's job agent comes up a little after `ray start` returns
            try:
                job = client.submit_job(entrypoint=entry, runtime_env=runtime_env)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.time() > wait_until:
                    raise
                time.sleep(2)
        deadline = time.time() + 400
        status = client.get_job_status(job)
        while time.time() < deadline and status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            time.sleep(2)
            status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        summary = json.loads([line for line in logs.splitlines() if line.startswith("{")][-1])
        assert os.path.exists(os.path.join(summary["best_checkpoint"], "model.pt"))
    finally:
        stop_processes_mentioning(str(temp))
        assert not processes_mentioning(str(temp))


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (the head's temp dir): this cluster's processes only."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def stop_processes_mentioning(text: str, timeout: float = 30) -> None:
    """Stop one local cluster by PID (`ray stop` would stop every Ray on the machine)."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_mentioning(text):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and processes_mentioning(text):
            time.sleep(0.5)
