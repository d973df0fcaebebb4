"""Helpers shared by tests."""

from __future__ import annotations

import json
import subprocess
import sys


def run_cli(*args: str, check: bool = False, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cdkd_ray", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"cdkd-ray {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])
