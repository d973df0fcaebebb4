"""Shared entry for the job scripts: run one cdkd-ray command inside a Ray Job.

The job's working directory (`ray job submit --working-dir .`) holds the cdkd_ray package, so it
imports without an install; inside a job RAY_ADDRESS points at the cluster, so nothing starts a
local Ray.
"""

from __future__ import annotations

import os
import sys


def run(command: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cdkd_ray.apps.cli import main

    main([command, *sys.argv[1:]])
