"""The front door: the base install has what the main command needs, and the quickstart refuses early."""

from __future__ import annotations

import re
import socket
import tomllib

import pytest

from cdkd_ray.apps.environment_check import BASE_MODULES, DiskNeed, check_run_environment, claim_workdir
from cdkd_ray.core.errors import CdkdError
from tests.conftest import REPO
from tests.helpers import run_cli


def _base_requirements() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def test_every_base_dependency_is_checked_and_export_needs_no_extra():
    checked = {re.split(r"[\[]", req)[0].lower() for req in BASE_MODULES.values()}
    assert _base_requirements() <= checked
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # the quickstart exports ONNX and serving may run onnxruntime: both are base dependencies
    assert {"onnx", "onnxruntime"} <= _base_requirements()
    assert "export" not in project.get("optional-dependencies", {})


def test_missing_package_disk_and_port_are_all_named_with_their_fix(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CdkdError) as err:
            check_run_environment(str(tmp_path / "work"), DiskNeed(workdir_gib=1e9), port,
                                  modules={"cdkd_no_such_module": "cdkd-no-such-package", "numpy": "numpy"})
    message = str(err.value)
    assert "cdkd-no-such-package" in message and "pip install -e ." in message
    assert "needs about 1e+09 GiB" in message
    assert f"port {port}" in message and "--serve-port" in message
    assert "numpy" not in message.split("missing package(s)")[1].split(":")[0]


def test_a_workdir_of_another_preset_is_refused(tmp_path):
    claim_workdir(str(tmp_path), ".quickstart.json", {"preset": "tiny"})
    claim_workdir(str(tmp_path), ".quickstart.json", {"preset": "tiny"})  # the same preset may run again
    with pytest.raises(CdkdError, match="already holds a run of"):
        claim_workdir(str(tmp_path), ".quickstart.json", {"preset": "small"})


def test_quickstart_with_a_busy_port_fails_before_any_work(tmp_path):
    workdir = tmp_path / "qs"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = run_cli("quickstart", "--preset", "tiny", "--workdir", workdir,
                       "--serve-port", busy.getsockname()[1], timeout=120)
    assert proc.returncode == 2
    assert "is in use" in proc.stderr and "--serve-port" in proc.stderr
    assert not (workdir / "synth").exists() and not (workdir / "runs").exists()
