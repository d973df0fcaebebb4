"""Shared fixtures: real COCO mini set, a synthetic set, a moto S3 server, one local Ray."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-val-mini"


def pytest_collection_modifyitems(items: list) -> None:
    """Run the tests that do not use the session's Ray first (in their usual order), then those that do.

    Tests that start Ray of their own (a CLI command's embedded Ray, a cluster) then have the machine to
    themselves, as a user's command would: an idle session Ray (GCS, raylet, dashboard, a Serve
    controller) took ~10% of the 2 cores, and such tests ran 20-30% slower after it had started.
    """
    items.sort(key=lambda item: "ray_session" in item.fixturenames)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not COCO_MINI.exists():
        pytest.skip(f"real COCO mini set not found at {COCO_MINI}")
    return COCO_MINI


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic COCO dataset shared by the session."""
    from cdkd_ray.apps.recipes import make_synthetic

    out = tmp_path_factory.mktemp("synth")
    make_synthetic(str(out), 24, 12, seed=3)
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto's server on loopback) with credentials in the environment."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the moto server; returns its s3:// URI."""
    import boto3

    name = f"cdkd-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole session (started after the S3 env so workers inherit it)."""
    import ray

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=8)  # the embedded Ray users get, with the same runtime env and dashboard
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_shards(synth_dir, tmp_path_factory) -> str:
    """The session's synthetic set, sharded to a local folder (train and val)."""
    from cdkd_ray.apps.recipes import shard_coco_dir

    return shard_coco_dir(str(synth_dir), str(tmp_path_factory.mktemp("shards")), rows_per_file=10)


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory) -> str:
    """A ResNet-18 teacher with random weights as a bare state_dict file (the mechanics are under test)."""
    import torch

    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet

    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.manual_seed(2)
    torch.save(PoseResNet(ModelConfig(arch="resnet18")).state_dict(), path)
    return str(path)
