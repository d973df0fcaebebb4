"""Shard publishing under faults and concurrency, on a folder and on S3 (moto): never neither version."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cdkd_ray.core import shards
from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.shard_publish import SplitBusy, lease_holder
from cdkd_ray.core.shards import shard_coco, shards_gc, shards_info
from cdkd_ray.core.storage import resolve
from tests.conftest import REPO

WRITER = r"""
import os, sys, time
from cdkd_ray.core import shards, storage
step, ann, images, uri, lease = sys.argv[1:6]
die = lambda *a, **k: os._exit(137)
if step in ("between_parts", "slow"):
    real_flush, calls = shards._PartWriter.flush, []
    def flush(self):
        calls.append(1)
        if step == "between_parts" and len(calls) == 2:
            die()
        if step == "slow":
            time.sleep(1.5)
        real_flush(self)
    shards._PartWriter.flush = flush
elif step == "before_pointer":
    shards.switch_pointer = die
elif step == "during_switch":
    storage.os.replace = die  # the local pointer's rename (an S3 PUT has no middle)
elif step == "during_cleanup":
    shards.remove_version = die
shards.shard_coco(ann, images, uri, split="val", rows_per_file=5, show_progress=False, lease_seconds=float(lease))
print("finished")
"""


@pytest.fixture(params=["folder", "s3"])
def root(request, tmp_path):
    if request.param == "folder":
        return str(tmp_path / "shards")
    return request.getfixturevalue("s3_bucket") + "/shards"


def sources(synth_dir):
    """Two different datasets written in turn to the same split: (annotation file, image folder, images)."""
    return {"old": (str(synth_dir / "annotations" / "person_keypoints_val.json"), str(synth_dir / "val"), 12),
            "new": (str(synth_dir / "annotations" / "person_keypoints_train.json"), str(synth_dir / "train"), 24)}


def write(root, source, **kw):
    ann, images, _ = source
    return shard_coco(ann, images, root, split="val", rows_per_file=5, show_progress=False, **kw)


def assert_one_complete_version(root, allowed: set[int]) -> int:
    info = shards_info(root)
    val = info["splits"]["val"]
    assert info["ok"] and not val["problems"], val["problems"]
    assert val["num_images"] in allowed
    location = resolve(root).join("val")
    manifest = json.loads(location.join("manifest.json").read_bytes())
    assert sum(f["rows"] for f in manifest["files"]) == val["num_images"]
    return val["num_images"]


def run_writer(step, source, root, lease=1.0) -> subprocess.CompletedProcess:
    ann, images, _ = source
    return subprocess.run([sys.executable, "-c", WRITER, step, ann, images, root, str(lease)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("step", ["between_parts", "before_pointer", "during_switch", "during_cleanup"])
def test_a_writer_killed_at_any_step_leaves_one_complete_version(synth_dir, root, step):
    src = sources(synth_dir)
    write(root, src["old"])
    proc = run_writer(step, src["new"], root)
    killed = proc.returncode == 137
    assert killed or (step == "during_switch" and proc.returncode == 0), proc.stderr[-2000:]
    expected = {24} if step == "during_cleanup" else {12, 24}
    got = assert_one_complete_version(root, expected)
    if step in ("between_parts", "before_pointer"):
        assert got == 12  # the new version was never published: the old one is intact
    write(root, src["new"])  # the next writer proceeds: the dead writer ran on this host
    assert assert_one_complete_version(root, {24}) == 24
    shards_gc(root)
    assert not shards_info(root)["splits"]["val"]["leftovers"] and not shards_info(root)["leftovers"]


@pytest.mark.parametrize("step", ["between_parts", "before_pointer", "switch_then_error", "during_cleanup"])
def test_a_writer_that_fails_at_any_step_leaves_one_complete_version(synth_dir, root, step, monkeypatch):
    src = sources(synth_dir)
    write(root, src["old"])
    real_flush, real_switch, calls = shards._PartWriter.flush, shards.switch_pointer, []

    def boom(*args, **kwargs):
        raise OSError(f"injected failure: {step}")

    if step == "between_parts":
        def flush(self):
            calls.append(1)
            if len(calls) == 2:
                boom()
            real_flush(self)
        monkeypatch.setattr(shards._PartWriter, "flush", flush)
    elif step == "before_pointer":
        monkeypatch.setattr(shards, "switch_pointer", boom)
    elif step == "switch_then_error":  # the pointer switched, then the connection broke
        monkeypatch.setattr(shards, "switch_pointer", lambda *a: (real_switch(*a), boom()))
    else:
        monkeypatch.setattr(shards, "remove_version", boom)
    if step == "during_cleanup":
        write(root, src["new"])  # published; the old version is left for gc, with a warning
    else:
        with pytest.raises(OSError, match="injected"):
            write(root, src["new"])
    got = assert_one_complete_version(root, {12, 24})
    assert got == (12 if step in ("between_parts", "before_pointer") else 24)
    monkeypatch.undo()
    info = shards_info(root)
    assert bool(info["splits"]["val"]["leftovers"]) == (step in ("during_cleanup", "switch_then_error"))
    write(root, src["new"])  # no lease was left behind
    shards_gc(root)
    assert not shards_info(root)["splits"]["val"]["leftovers"]


def test_two_concurrent_writers_one_publishes_one_is_refused(synth_dir, root):
    src = sources(synth_dir)
    ann, images, _ = src["new"]
    slow = subprocess.Popen([sys.executable, "-c", WRITER, "slow", ann, images, root, "60"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease = resolve(root).join("val", ".writer-lease.json")
    deadline = time.time() + 60
    while not lease.exists() and time.time() < deadline:
        time.sleep(0.1)
    with pytest.raises(SplitBusy) as refused:
        write(root, src["old"])
    assert f":{slow.pid}" in str(refused.value) and "being written" in str(refused.value)
    out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0 and "finished" in out, err[-2000:]
    assert assert_one_complete_version(root, {24}) == 24
    assert not shards_info(root)["splits"]["val"]["leftovers"] and not lease.exists()


def test_a_killed_writer_blocks_others_only_until_its_lease_expires_or_not_at_all_from_its_host(synth_dir, tmp_path):
    """A writer killed on this host is known to be gone: the next writer takes its lease at once. One of another
    host cannot be checked from here and blocks until its lease expires."""
    root = str(tmp_path / "shards")
    src = sources(synth_dir)
    proc = run_writer("before_pointer", src["new"], root, lease=600)
    assert proc.returncode == 137
    lease_file = tmp_path / "shards" / "val" / ".writer-lease.json"
    lease = json.loads(lease_file.read_text())
    assert lease["holder"].startswith(f"{socket.gethostname()}:") and lease["expires"] > time.time() + 500
    assert lease_holder(resolve(root).join("val")) is None  # shards-info does not say a write is under way
    write(root, src["old"])
    assert assert_one_complete_version(root, {12}) == 12 and not lease_file.exists()
    lease_file.write_text(json.dumps({**lease, "holder": "another-host:1"}))
    with pytest.raises(SplitBusy, match="held by another-host"):
        write(root, src["new"])
    lease_file.write_text(json.dumps({**lease, "holder": "another-host:1", "expires": time.time() - 1}))
    write(root, src["new"])  # as if the lease ran out
    assert assert_one_complete_version(root, {24}) == 24


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "../x", "val;rm"])
def test_split_names_are_names_not_paths(synth_dir, tmp_path, bad):
    ann, images, _ = sources(synth_dir)["old"]
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a valid name"):
        shard_coco(ann, images, str(tmp_path / "out"), split=bad, show_progress=False)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_best_student_export_to_s3_is_published_pointer_last(s3_bucket, tmp_path):
    from cdkd_ray.core.models.loading import load_pose_model
    from cdkd_ray.ray_adapters.sweep import _export_best
    from tests.helpers import random_student_export

    random_student_export(str(tmp_path))
    target = resolve(f"{s3_bucket}/sweep/best_student")
    _export_best(str(tmp_path / "ckpt"), target)
    first = json.loads(target.join("export.json").read_bytes())["version"]
    _export_best(str(tmp_path / "ckpt"), target)  # a re-export replaces it
    second = json.loads(target.join("export.json").read_bytes())["version"]
    assert first != second and sorted(target.listdir_names()) == ["export.json", second]
    loaded = load_pose_model(target.uri)
    assert loaded.card["input_size"] == [128, 96] and loaded.model_cfg.arch == "resnet18"

