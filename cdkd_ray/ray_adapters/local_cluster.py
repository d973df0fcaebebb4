"""`cdkd-ray cluster up|down|status`: an autoscaling Ray cluster of local processes (fake multi-node).

The head runs `ray start --head --block` with the cluster-launcher YAML as its autoscaling config; the
real autoscaler then starts and stops "nodes" (raylets) as local processes. Everything the cluster
starts descends from the head process, so `down` stops it all by PID and checks nothing is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources

import yaml

from cdkd_ray.core.errors import CdkdError

HOST = "127.0.0.1"
STATE_FILE = "cluster.json"
# `ray stop`'s default. Stopping a head with Serve on it took 3.6 s here on SIGTERM with two busy
# processes beside it; a 5 s grace sent SIGKILL to two processes in a loaded CI run.
STOP_GRACE_S = 16.0


@dataclass
class ClusterState:
    pid: int
    address: str
    dashboard_url: str
    config: str
    log: str
    state_dir: str


def default_config_path() -> str:
    """The local autoscaling config shipped in the package (clusters/local-autoscale.yaml links to it)."""
    return str(resources.files("cdkd_ray.ray_adapters") / "local-autoscale.yaml")


def default_state_dir() -> str:
    home = os.environ.get("CDKD_RAY_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "cdkd-ray")
    return os.path.join(home, "local-cluster")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    """A free loopback port (the dashboard agent's default, 52365, is taken by any other Ray here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _ray_executable() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    found = beside if os.path.exists(beside) else shutil.which("ray")
    if not found:
        raise CdkdError("the `ray` command was not found next to this Python or on PATH")
    return found


def read_state(state_dir: str | None = None) -> ClusterState | None:
    path = os.path.join(state_dir or default_state_dir(), STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return ClusterState(**json.load(f))


def _write_state(state: ClusterState) -> None:
    path = os.path.join(state.state_dir, STATE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(state), f, indent=1)
    os.replace(tmp, path)


def load_local_config(config: str, port: int) -> dict:
    """The launcher YAML, checked to be a fake multi-node config, with the GCS address set to `port`."""
    try:
        with open(config) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise CdkdError(f"cluster config not found: {config} (pass --config with the path of "
                        "clusters/local-autoscale.yaml from the cdkd-ray repository, or your own copy)") from None
    except yaml.YAMLError as exc:
        raise CdkdError(f"{config} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("provider"), dict):
        raise CdkdError(f"{config}: a cluster-launcher config needs a 'provider' mapping")
    if data["provider"].get("type") != "fake_multinode":
        raise CdkdError(f"{config}: `cdkd-ray cluster up` starts local fake_multinode clusters; provider type "
                        f"'{data['provider'].get('type')}' is started with `ray up {config}`")
    if data.get("head_node_type") != "ray.head.default":
        raise CdkdError(f"{config}: the fake multi-node provider needs head_node_type: ray.head.default")
    data["provider"]["gcs_address"] = f"{HOST}:{port}"
    return data


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cluster_up(config: str | None = None, port: int = 6379, dashboard_port: int = 8265,
               state_dir: str | None = None, timeout_s: float = 90.0) -> dict:
    """Start the head and its autoscaler; returns once the autoscaler reports status."""
    config = os.path.abspath(config or default_config_path())
    state_dir = os.path.abspath(state_dir or default_state_dir())
    os.makedirs(state_dir, exist_ok=True)
    running = read_state(state_dir)
    if running and _alive(running.pid):
        raise CdkdError(f"a local cluster is already running at {running.address} (head pid {running.pid}); "
                        "`cdkd-ray cluster down` stops it")
    local_config = load_local_config(config, port)  # a wrong config is refused whatever the machine's ports
    for what, p in (("GCS", port), ("dashboard", dashboard_port)):
        if not _port_free(p):
            raise CdkdError(f"{HOST}:{p} ({what} port) is in use: another Ray head? pick one with "
                            f"--{'port' if what == 'GCS' else 'dashboard-port'}")
    effective = os.path.join(state_dir, "autoscale.yaml")
    with open(effective, "w") as f:
        yaml.safe_dump(local_config, f, sort_keys=False)
    log = os.path.join(state_dir, "head.log")
    cmd = [_ray_executable(), "start", "--head", "--block", f"--node-ip-address={HOST}", f"--port={port}",
           "--num-cpus=0", f"--autoscaling-config={effective}", f"--dashboard-host={HOST}",
           f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={_any_free_port()}",
           "--object-store-memory=268435456", "--disable-usage-stats"]
    # A throwaway single-user cluster: token auth off (unless RAY_AUTH_MODE says otherwise), so drivers
    # from the same shell connect with a plain --address.
    env = {**_driver_env(), "RAY_FAKE_CLUSTER": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    state = ClusterState(proc.pid, f"{HOST}:{port}", f"http://{HOST}:{dashboard_port}", config, log, state_dir)
    _write_state(state)  # before waiting: `down` can always clean up
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            cluster_down(state_dir)
            raise CdkdError(f"the Ray head exited with code {proc.returncode}; see {log}:\n{_tail(log)}")
        if _autoscaler_ready(state.address):
            return {**asdict(state), "status": "up"}
        time.sleep(1.0)
    cluster_down(state_dir)
    raise CdkdError(f"the cluster did not come up within {timeout_s:.0f}s; see {log}:\n{_tail(log)}")


def _driver_env() -> dict:
    """The environment of the cluster's processes: token auth off unless RAY_AUTH_MODE asks for it.

    A driver follows RAY_AUTH_MODE too; one in token mode on a cluster without auth has its actors
    killed (the cluster's RPCs to it carry no token), so the cluster keeps an explicit choice.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def _autoscaler_ready(address: str) -> bool:
    result = subprocess.run([_ray_executable(), "status", f"--address={address}"], capture_output=True, text=True,
                            env=_driver_env())
    return result.returncode == 0 and "Node status" in result.stdout


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def cluster_processes(pid: int) -> list:
    """The head process, its descendants (autoscaled nodes included) and its process group."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    try:
        head = psutil.Process(pid)
        procs[pid] = head
        procs.update({p.pid: p for p in head.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pid:
                procs.setdefault(p.pid, p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return [p for p in procs.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _still_running(procs) -> list:
    """Distinct processes still running (not zombies); a reused pid is a different process to psutil."""
    import psutil

    unique = {}
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                unique[p.pid] = p
        except psutil.Error:
            continue
    return list(unique.values())


def _children_of(procs) -> list:
    import psutil

    found = []
    for p in list(procs):
        try:
            found.extend(p.children(recursive=True))
        except psutil.Error:
            continue
    return found


def _ray_stop_rank(proc) -> int:
    """Where a process comes in Ray's own stop order (as `ray stop`): raylets, then the rest, the GCS last."""
    import psutil

    try:
        command = proc.cmdline()
    except psutil.Error:
        return 1
    program = os.path.basename(command[0]) if command else ""
    return 0 if program == "raylet" else 2 if program == "gcs_server" else 1


def _describe(proc) -> str:
    """A process as "program (pid)": a Ray worker's title, a Python script's or module's name, else the program."""
    import psutil

    try:
        command = proc.cmdline() or [proc.name()]
    except psutil.Error:
        return f"? ({proc.pid})"
    program = os.path.basename(command[0].split(" ")[0]) if not command[0].startswith("ray::") else command[0].strip()
    if program.startswith("python"):
        flag = next((a for a in command[1:] if a in ("-c", "-m")), None)
        args = [a for a in command[1:] if not a.startswith("-")]
        program = f"{program} -c" if flag == "-c" else os.path.basename(args[0]) if args else program
    return f"{program[:60]} ({proc.pid})"


def stop_processes(find, grace_s: float, what: str) -> tuple[list, list]:
    """SIGTERM the processes `find()` lists (and their children) in Ray's order, SIGKILL what is left after grace_s.

    Signalled all at once, a head's raylet, GCS and autoscaler monitor each wait on another and outlive a
    SIGTERM (seen here: all three still up 10 s later); in Ray's order the head is gone in ~1 s.
    Returns every process seen and those that needed SIGKILL ("name (pid)"); raises if some would not stop even then.
    """
    import psutil

    seen: dict[int, psutil.Process] = {}
    killed: dict[int, str] = {}
    deadline = time.monotonic() + grace_s
    while True:
        # processes seen before stay tracked: one whose parent died is re-parented and leaves the tree
        procs = _still_running([*find(), *seen.values(), *_children_of(seen.values())])
        if not procs:
            return list(seen.values()), list(killed.values())
        seen.update({p.pid: p for p in procs})
        late = time.monotonic() - deadline
        if late > 10:
            raise CdkdError(f"{what} would not stop: {[p.pid for p in procs]}")
        if late > 0:
            targets, sig = procs, signal.SIGKILL
            killed.update({p.pid: _describe(p) for p in targets})
        else:
            ranks = {p.pid: _ray_stop_rank(p) for p in procs}
            targets, sig = [p for p in procs if ranks[p.pid] == min(ranks.values())], signal.SIGTERM
        for p in targets:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(targets, timeout=1)


def cluster_down(state_dir: str | None = None, grace_s: float = STOP_GRACE_S) -> dict:
    """Stop the head, the autoscaler and every node it started; verify no process is left."""
    state_dir = os.path.abspath(state_dir or default_state_dir())
    state = read_state(state_dir)
    if state is None:
        return {"stopped": False, "message": f"no local cluster recorded in {state_dir}"}
    stopped, killed = stop_processes(lambda: cluster_processes(state.pid), grace_s, "processes of the cluster")
    _forget_current_cluster(state.address)
    os.remove(os.path.join(state_dir, STATE_FILE))
    return {"stopped": True, "address": state.address, "processes_stopped": len(stopped), "killed": len(killed),
            "killed_processes": killed}


def _forget_current_cluster(address: str) -> None:
    """`ray start` records the head in /tmp/ray/ray_current_cluster; drop it if it is ours."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(path) as f:
            if f.read().strip() == address:
                os.remove(path)
    except OSError:
        pass


def cluster_status(state_dir: str | None = None, address: str | None = None) -> dict:
    """Alive nodes of the cluster (connects a short-lived driver)."""
    import ray

    state = read_state(state_dir)
    address = address or (state.address if state else None)
    if not address:
        raise CdkdError("no local cluster is recorded: `cdkd-ray cluster up` starts one (or pass --address)")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise CdkdError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        nodes = [{"node_id": n["NodeID"], "head": "node:__internal_head__" in n["Resources"],
                  "cpus": n["Resources"].get("CPU", 0.0)} for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()
    return {"address": address, "nodes": nodes, "worker_nodes": sum(not n["head"] for n in nodes),
            "head_pid": state.pid if state else None}
