"""bench/gpu_check.py runs through the Ray-free core; here as a CPU smoke test at tiny sizes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.conftest import REPO


# What the GPU machines lack: the check must not import any of it.
ABSENT = ("ray", "pycocotools", "s3fs", "tensorboardX", "moto")
RUN_WITHOUT = (f"import runpy, sys; sys.modules.update(dict.fromkeys({ABSENT!r})); "
               "sys.argv = ['gpu_check.py', '--device', 'cpu', '--tiny']; "
               "runpy.run_path('bench/gpu_check.py', run_name='__main__')")


def test_gpu_check_runs_on_cpu_without_ray(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # its scratch teacher (136 MB at full size) went with the check; torch keeps its own compile cache there
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ray_imported"] is False and result["device"] == "cpu"
    run = result["precisions"]["float32"]
    for kind in ("baseline", "cdkd"):
        assert run[kind]["seconds"] > 0 and run[kind]["images_per_s"] > 0 and run[kind]["tflops"] > 0
    assert math.isfinite(run["cdkd_over_baseline"]) and run["flop_expected_ratio"] > 1
    assert result["student_latency_b1_ms"] > 0 and result["student_throughput_images_per_s"] > 0
    assert "CDKD step cost" in proc.stdout
