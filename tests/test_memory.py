"""A decode process keeps freed memory for its next block instead of faulting in fresh pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

ALLOCATE = """
import resource, sys
import numpy as np
from cdkd_ray.core.memory import keep_freed_heap
kept = keep_freed_heap() if sys.argv[1] == "kept" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(40 * 2**20, np.uint8)  # a block of crops (40 MB: above glibc's own largest threshold), made and freed
before = faults()
for _ in range(10):
    np.ones(40 * 2**20, np.uint8)
print(kept, (faults() - before) / 10)
"""


def faults_per_block(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", ALLOCATE, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept, float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_kept_heap_reuses_a_freed_block_instead_of_faulting_in_fresh_pages():
    kept, with_kept = faults_per_block("kept")
    _, with_default = faults_per_block("default")

    assert kept == "True"
    assert with_default >= 10  # glibc maps each 40 MB block anew: every page faults again (2 MiB ones at least)
    assert with_kept <= with_default / 10


def test_the_setting_is_on_by_default_and_can_be_turned_off():
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig

    assert load_config(ExperimentConfig, "synth-cpu", []).data.keep_freed_heap
    assert not load_config(ExperimentConfig, "synth-cpu", ["data.keep_freed_heap=false"]).data.keep_freed_heap
