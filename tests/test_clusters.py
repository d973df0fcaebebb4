"""Cluster configs validate against Ray's own schemas; a real Ray Jobs round trip on a local head."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, _free_port
from tests.helpers import processes_mentioning

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
        if doc["kind"] == "ServiceAccount":
            continue
        assert doc["apiVersion"] == "ray.io/v1"
        kinds[doc["kind"]] = doc
    assert set(kinds) == {"RayCluster", "RayJob", "RayService"}
    assert kinds["RayCluster"]["spec"]["enableInTreeAutoscaling"] is True
    serve_cfg = ServeDeploySchema.model_validate(yaml.safe_load(kinds["RayService"]["spec"]["serveConfigV2"]))
    assert serve_cfg.applications[0].import_path == "cdkd_ray.ray_adapters.serve.app:app_builder"
    example = yaml.safe_load((REPO / "cdkd_ray" / "ray_adapters" / "serve" / "serve_config.example.yaml").read_text())
    ServeDeploySchema.model_validate(example)
    from cdkd_ray.core.config import from_dict
    from cdkd_ray.ray_adapters.serve.app import ServeConfig

    for app in (serve_cfg.applications[0].args, example["applications"][0]["args"]):
        from_dict(ServeConfig, app, "serve")  # the app builder accepts exactly these args


def test_every_entrypoint_names_an_existing_script():
    texts = [p.read_text() for p in MANIFESTS] + [(REPO / "jobs" / "README.md").read_text()]
    scripts = {m for text in texts for m in re.findall(r"python (jobs/\S+\.py)", text)}
    assert {"jobs/train_teacher.py", "jobs/distill.py", "jobs/sweep.py", "jobs/compare.py", "jobs/serve.py"} <= scripts
    for script in scripts:
        assert (REPO / script).is_file(), script
        proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: cdkd-ray" in proc.stdout


def _docs() -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in MANIFESTS]


def _cluster_specs() -> list[tuple[str, dict]]:
    from cdkd_ray.core.preflight import kuberay_cluster_spec

    return [(d["kind"], kuberay_cluster_spec(d)) for d in _docs() if d["kind"] != "ServiceAccount"]


def _containers(spec: dict):
    """(group name, container) of the head and every worker group of a RayCluster spec."""
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        for container in group["template"]["spec"]["containers"]:
            yield name, group, container


def _project_versions() -> tuple[str, str, str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    return project["version"], re.search(r">=(\d+\.\d+)", ray_pin).group(1), project["requires-python"]


def test_head_ports_let_the_operator_reach_the_dashboard():
    # KubeRay exposes exactly the declared ports once any is declared: the dashboard must be among them,
    # or serveConfigV2 is never applied and the Jobs API is unreachable.
    for kind, spec in _cluster_specs():
        ports = {p["containerPort"] for name, _group, c in _containers(spec) if name == "head"
                 for p in c.get("ports", [])}
        if ports:
            assert {6379, 8265, 10001} <= ports, (kind, ports)
        if kind == "RayService":
            assert 8000 in ports


def test_every_service_account_used_is_shipped():
    defined = {d["metadata"]["name"] for d in _docs() if d["kind"] == "ServiceAccount"}
    used = {g["template"]["spec"].get("serviceAccountName") for _, spec in _cluster_specs()
            for _, g, _c in _containers(spec)} - {None}
    assert used and used <= defined, used - defined


def test_images_are_the_ones_the_dockerfile_builds_and_gpu_groups_get_the_gpu_image():
    version, ray_version, _ = _project_versions()
    makefile = (REPO / "Makefile").read_text()
    assert "cdkd-ray:$(VERSION)" in makefile and "VARIANT=-gpu" in makefile and "$(IMAGE)-gpu" in makefile
    tag = re.compile(rf"^[\w.\-/]+/cdkd-ray:{re.escape(version)}(-gpu)?$")
    for kind, spec in _cluster_specs():
        assert spec["rayVersion"].startswith(ray_version + ".")
        for group, _, container in _containers(spec):
            limits = container["resources"]["limits"]
            assert tag.match(container["image"]), (kind, group, container["image"])
            gpu = "nvidia.com/gpu" in limits
            assert container["image"].endswith("-gpu") == gpu, (kind, group)
            if gpu:  # Kubernetes needs requests == limits for GPUs when both are set
                assert container["resources"].get("requests", {}).get("nvidia.com/gpu", limits["nvidia.com/gpu"]) \
                    == limits["nvidia.com/gpu"]
    aws = yaml.safe_load((REPO / "clusters" / "aws.yaml").read_text())
    assert tag.match(aws["docker"]["image"]) and aws["docker"]["worker_image"].endswith("-gpu")
    assert aws["available_node_types"]["cpu_workers"]["docker"]["worker_image"] == aws["docker"]["image"]
    assert not aws["setup_commands"] and "--ulimit nofile=65536:65536" in aws["docker"]["run_options"]
    assert all("ulimit -n 65536" in c for c in aws["head_start_ray_commands"][1:] + aws["worker_start_ray_commands"][1:])


def test_dockerfile_base_matches_the_project_ray_and_python():
    version, ray_version, requires_python = _project_versions()
    text = (REPO / "docker" / "Dockerfile").read_text()
    base_ray = re.search(r"ARG RAY_VERSION=(\S+)", text).group(1)
    python_tag = re.search(r"ARG PYTHON_TAG=py3(\d+)", text).group(1)
    assert base_ray.startswith(ray_version + ".")
    assert int(python_tag) >= int(re.search(r">=3\.(\d+)", requires_python).group(1))
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${VARIANT}" in text
    assert ".git" in (REPO / ".dockerignore").read_text().split()


def test_the_rayjob_runs_from_the_image_with_a_deadline_and_a_cpu_group():
    job = next(d for d in _docs() if d["kind"] == "RayJob")["spec"]
    assert "runtimeEnvYAML" not in job or "working_dir" not in job["runtimeEnvYAML"]
    assert job["shutdownAfterJobFinishes"] is True and job["activeDeadlineSeconds"] > 0
    groups = job["rayClusterSpec"]["workerGroupSpecs"]
    assert any("nvidia.com/gpu" not in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
    assert job["entrypoint"].startswith("cdkd-ray ")


@pytest.mark.parametrize("cluster", ["aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-distill.yaml"])
def test_preflight_accepts_the_paper_preset_and_refuses_the_old_pool_shape(cluster):
    from tests.helpers import run_cli

    ok = run_cli("preflight", "--config", "coco-r18-256x192", "--cluster", REPO / "clusters" / cluster, "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    old = run_cli("preflight", "--config", "coco-r18-256x192", "--cluster", REPO / "clusters" / cluster,
                  "teacher.placement=pool", "teacher.num_gpus=0.5")
    assert old.returncode == 2
    assert "CANNOT RUN: teacher pool actor" in old.stdout and "teacher.placement=worker" in old.stdout


def test_a_persistent_teacher_pool_asks_for_pool_max_actors_and_ray_datas_pool_for_pool_min():
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind, resolve_teacher_placement
    from cdkd_ray.core.preflight import training_bundles

    def pool_bundle(*overrides):
        cfg = load_config(ExperimentConfig, "coco-r18-256x192", ["teacher.placement=pool", *overrides])
        return next(b for b in training_bundles(cfg, RunKind.CDKD) if "teacher" in b.what)

    persistent, ray_data = pool_bundle(), pool_bundle("teacher.persistent=false")
    assert (persistent.count, ray_data.count) == (4, 1)  # pool_max: 4, pool_min: 1 in the preset
    assert "pool_max" in persistent.what and "pool_min" in ray_data.what
    auto = load_config(ExperimentConfig, "coco-r18-256x192", ["teacher.placement=auto"])
    assert resolve_teacher_placement(auto, 5)[0] == "worker"  # 4 workers' GPUs + 0.5 spare: no room for 4 x 0.5
    assert resolve_teacher_placement(auto, 6)[0] == "pool"


def test_preflight_of_a_sweep_and_of_serving():
    from tests.helpers import last_json, run_cli

    sweep = last_json(run_cli("preflight", "--sweep", REPO / "examples" / "sweep-gpu.yaml", "--cluster",
                              REPO / "clusters" / "aws.yaml", "--json"))
    assert sweep["ok"] and sweep["asked"]["GPU"] == 4
    too_many = run_cli("preflight", "--sweep", REPO / "examples" / "sweep-gpu.yaml", "--cluster",
                       REPO / "clusters" / "aws.yaml", "max_concurrent_trials=5")
    assert too_many.returncode == 2 and "trial 5: train worker" in too_many.stdout
    study = last_json(run_cli("preflight", "--study", REPO / "bench" / "studies" / "underfit.yaml", "--cluster",
                              REPO / "clusters" / "aws.yaml", "max_concurrent_trials=3", "--json"))
    assert study["ok"] and study["asked"]["CPU"] == pytest.approx(3 * (0.01 + 1 + 0.5))
    serve = run_cli("preflight", "--serve", "--cluster", REPO / "clusters" / "kuberay" / "rayservice.yaml",
                    "min_replicas=40", "max_replicas=40", "num_cpus=1")
    assert serve.returncode == 2 and "Serve pose replica" in serve.stdout
    nothing = run_cli("preflight", "--cluster", REPO / "clusters" / "kuberay" / "serviceaccount.yaml")
    assert nothing.returncode == 2 and "holds no cluster description" in nothing.stderr


def test_preflight_against_the_live_local_ray(ray_session):
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind
    from cdkd_ray.core.preflight import check_fits, training_bundles
    from cdkd_ray.ray_adapters.live_cluster import connected_shape, preflight_connected

    shape = connected_shape()
    assert not shape.exact and shape.totals()["CPU"] >= 2
    tiny = load_config(ExperimentConfig, "tiny")
    assert check_fits(training_bundles(tiny, RunKind.CDKD), shape)["ok"]
    huge = load_config(ExperimentConfig, "tiny", ["train.num_workers=64"])
    report = preflight_connected(training_bundles(huge, RunKind.BASELINE))  # warns: an autoscaler may add nodes
    assert not report["ok"] and "train worker" in report["missing"][0]


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
        # one train worker: what is tested is the job's round trip (DDP and the split stream: test_training)
        entry = (f"python jobs/distill.py --config tiny --data {synth_shards} --storage {tmp_path / 'runs'} "
                 f"--name job-run --teacher {teacher} --json train.epochs=1 train.num_workers=1")
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
        # in Ray's order the head stops on SIGTERM; all at once, its raylet, GCS and monitor outlived it
        killed = stop_processes_mentioning(str(temp))
        assert not processes_mentioning(str(temp))
        shutil.rmtree(temp, ignore_errors=True)  # the head's session files, logs and job packages
    assert not killed, killed


def stop_processes_mentioning(text: str, timeout: float = 30) -> list:
    """Stop one local cluster by PID (`ray stop` would stop every Ray on the machine), in Ray's order.

    Returns those of its processes that needed SIGKILL."""
    import psutil

    from cdkd_ray.ray_adapters.local_cluster import stop_processes

    def find() -> list:
        procs = []
        for pid in processes_mentioning(text):
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        return procs

    return stop_processes(find, timeout, f"processes mentioning {text}")[1]


_HEAD_WITH_A_DETACHED_CHILD = r"""
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import os, signal, time; os.setsid(); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "open(os.environ['READY'], 'w').write(str(os.getpid())); time.sleep(600)"])
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))  # the head goes at once; its child is re-parented
time.sleep(600)
"""


def test_cluster_down_stops_a_process_that_left_the_tree_and_ignores_sigterm(tmp_path):
    """A node process re-parented after its parent died (own session, SIGTERM ignored) is still stopped."""
    import psutil

    from cdkd_ray.ray_adapters.local_cluster import ClusterState, _write_state, cluster_down

    ready = tmp_path / "child.pid"
    head = subprocess.Popen([sys.executable, "-c", _HEAD_WITH_A_DETACHED_CHILD], env={**os.environ, "READY": str(ready)},
                            start_new_session=True)
    deadline = time.time() + 30
    while not (ready.exists() and ready.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = psutil.Process(int(ready.read_text()))
    _write_state(ClusterState(pid=head.pid, address="127.0.0.1:1", dashboard_url="", config="", log="",
                              state_dir=str(tmp_path)))
    try:
        result = cluster_down(str(tmp_path), grace_s=1.0)
        head.wait(timeout=10)
        assert result["stopped"] and result["processes_stopped"] == 2 and result["killed"] == 1  # the child ignores SIGTERM
        assert len(result["killed_processes"]) == 1 and result["killed_processes"][0].endswith(f"({child.pid})")
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert not (tmp_path / "cluster.json").exists()
    finally:
        if child.is_running():
            child.kill()


def test_cluster_up_refuses_while_the_recorded_head_is_running(tmp_path):
    """A second `cluster up` names the running head instead of starting another one over its ports."""
    from cdkd_ray.core.errors import CdkdError
    from cdkd_ray.ray_adapters.local_cluster import ClusterState, _write_state, cluster_up

    head = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_state(ClusterState(pid=head.pid, address="127.0.0.1:7", dashboard_url="", config="", log="",
                                  state_dir=str(tmp_path)))
        with pytest.raises(CdkdError, match=rf"already running at 127.0.0.1:7 \(head pid {head.pid}\)"):
            cluster_up(state_dir=str(tmp_path))
    finally:
        head.kill()
        head.wait()


_STATE_API_PROBE = r"""
import json, sys, time
from cdkd_ray.ray_adapters.runtime import ensure_ray
ensure_ray(num_cpus=2)
import ray

@ray.remote(num_cpus=0)
class Idle:
    def ping(self):
        return True

@ray.remote(num_cpus=0)
def ask_state_api(actor_id: str) -> dict:
    import os
    from ray.util.state import get_actor
    started = time.monotonic()
    try:
        state = get_actor(actor_id, timeout=10).state
    except Exception as exc:  # what Ray Train's placement group cleaner would have hit
        state = f"{type(exc).__name__}: {exc}"[:300]
    return {"state": state, "seconds": time.monotonic() - started,
            "address": os.environ.get("RAY_ADDRESS"), "own": ray.get_runtime_context().gcs_address}

idle = Idle.remote()
ray.get(idle.ping.remote())
print(json.dumps(ray.get(ask_state_api.remote(idle._actor_id.hex()))))
"""


def test_the_embedded_rays_workers_run_train_controllers_with_its_settings(ray_session):
    """Every worker of the embedded Ray (a Train controller is one) gets its data and Train settings, under the
    names Ray reads them by: a controller that sees its workers done only every 2 s adds up to 2 s to each run."""
    import ray
    from ray.train.v2._internal import constants

    from cdkd_ray.ray_adapters.runtime import DATA_ENV, LOCAL_TRAIN_ENV

    @ray.remote(num_cpus=0)
    def settings() -> dict:
        return {"interval": float(os.getenv(constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR,
                                            constants.DEFAULT_HEALTH_CHECK_INTERVAL_S)),
                "watcher": os.getenv(constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR),
                **{key: os.getenv(key) for key in DATA_ENV}}

    seen = ray.get(settings.remote())
    assert seen["interval"] == 0.5 < constants.DEFAULT_HEALTH_CHECK_INTERVAL_S
    assert seen["watcher"] == LOCAL_TRAIN_ENV[constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR] == "0"
    assert all(seen[key] == value for key, value in DATA_ENV.items())


@pytest.mark.timeout(240)
def test_the_embedded_rays_state_api_answers_for_itself_not_a_stale_cluster_record():
    """Ray Train's placement group cleaner asks Ray's state API, in a worker, whether the run's controller
    is alive. Without an address the API used the last `ray start` head recorded on the machine: a dead
    one made every run's shutdown wait ~12 s; a live other one answered "no such actor". The embedded
    Ray now points its workers at itself."""
    import tempfile

    temp = tempfile.mkdtemp(prefix="cdkd-rt-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as f:
            f.write(f"127.0.0.1:{_free_port()}")  # a head that has gone: nothing listens there
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": temp}
        proc = subprocess.run([sys.executable, "-c", _STATE_API_PROBE], env=env, capture_output=True,
                              text=True, timeout=200, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        assert answer["state"] == "ALIVE" and answer["seconds"] < 10, answer
        assert answer["address"] == answer["own"]
    finally:
        stop_processes_mentioning(temp)
        shutil.rmtree(temp, ignore_errors=True)


_DRIVER_WITH_ACTORS = r"""
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
@ray.remote(num_cpus=0)
class Echo:
    def ping(self, i):
        return i
actors = [Echo.remote() for _ in range(3)]
print(json.dumps(ray.get([a.ping.remote(i) for i, a in enumerate(actors)], timeout=60)))
"""


@pytest.mark.timeout(240)
def test_a_driver_started_beside_the_embedded_ray_keeps_its_actors_on_a_local_cluster(ray_session, tmp_path):
    """`ray.init()` put RAY_AUTH_MODE=token into the environment of the process that started the embedded
    Ray, so a `cdkd-ray sweep --address` started from it came up in token mode. On `cluster up`'s
    cluster (no auth) the driver's actors were then killed as they were created ("The actor never ran -
    it was cancelled before it started running"): the autoscaled sweep failed so whenever the tests'
    own Ray had started first. The head here has no auth, as `cluster up` starts it from a user's shell."""
    assert os.environ.get("RAY_AUTH_MODE") is None  # the embedded Ray kept its choice to itself
    port = _free_port()
    temp = Path("/tmp") / f"cdkd-auth-{os.getpid()}"
    start = subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=1", f"--temp-dir={temp}", "--include-dashboard=false",
                            f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert start.returncode == 0, start.stderr
    try:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # what run_cli's drivers inherit
        driver = subprocess.run([sys.executable, "-c", _DRIVER_WITH_ACTORS, f"127.0.0.1:{port}"], env=env,
                                capture_output=True, text=True, timeout=150)
        assert driver.returncode == 0, driver.stderr[-3000:]
        assert json.loads(driver.stdout.strip().splitlines()[-1]) == [0, 1, 2]
    finally:
        stop_processes_mentioning(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def test_a_local_cluster_takes_an_explicit_auth_mode_and_is_unauthenticated_otherwise(monkeypatch):
    from cdkd_ray.ray_adapters.local_cluster import _driver_env

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert _driver_env()["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # a user who turned token auth on: drivers will use it too
    assert _driver_env()["RAY_AUTH_MODE"] == "token"
