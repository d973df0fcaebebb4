"""Real HTTP against a locally running Serve app (one per session)."""

import asyncio
import json
import struct

import cv2
import httpx
import numpy as np
import pytest
import torch

from cdkd_ray.core.models.loading import load_pose_model
from cdkd_ray.core.models.inference import predict_keypoints
from tests.conftest import _free_port
from tests.helpers import random_student_export

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def serve_stops_after_this_module():
    """Serve's controller and proxy would keep polling in the session's Ray for the tests after these."""
    yield
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()


@pytest.fixture(scope="module")
def student_export(tmp_path_factory) -> str:
    return random_student_export(str(tmp_path_factory.mktemp("student")))


@pytest.fixture(scope="module")
def server(ray_session, student_export):
    from ray import serve

    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import APP_NAME, run_serve

    port = _free_port()
    cfg = ServeConfig(model_uri=student_export, min_replicas=2, max_replicas=2, max_batch_size=16,
                      batch_wait_timeout_s=0.05, num_cpus=0.5, max_boxes=8, max_body_bytes=2 * 1024 * 1024)
    url = run_serve(cfg, "127.0.0.1", port)
    yield url, serve.get_deployment_handle("PoseModel", app_name=APP_NAME)
    serve.delete(APP_NAME)


def jpeg(path) -> bytes:
    return path.read_bytes()


def direct(export: str, image_path, boxes: np.ndarray) -> np.ndarray:
    """The same prediction by calling the model directly (no HTTP, no Serve)."""
    from cdkd_ray.core.geometry import box_to_center_scale, crop_affine, warp_crops

    loaded = load_pose_model(export)
    image = cv2.imread(str(image_path))
    center, scale = box_to_center_scale(boxes[:, :4], 96 / 128)
    mat = crop_affine(center, scale, np.zeros(len(boxes)), (128, 96))
    crops = warp_crops([np.ascontiguousarray(image[:, :, ::-1])], np.zeros(len(boxes), int), mat, (128, 96))
    kpts, scores = predict_keypoints(loaded.model.eval(), torch.from_numpy(crops),
                                     center, scale, (128, 96))
    return np.concatenate([kpts, scores[..., None]], -1)


def in_image(keypoints: np.ndarray, image: dict) -> np.ndarray:
    """The service's policy: keypoints outside the image are clipped to its edge, with score 0."""
    w, h = image["width"], image["height"]
    x, y, score = keypoints[:, 0], keypoints[:, 1], keypoints[:, 2]
    outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
    return np.stack([np.clip(x, 0, w - 1), np.clip(y, 0, h - 1), np.where(outside, 0, score)], 1)


def test_endpoint_equals_direct_model_call(server, student_export, coco_mini):
    url, _ = server
    ann = json.loads((coco_mini / "person_keypoints_val_mini.json").read_text())
    for image in ann["images"]:
        path = coco_mini / "images" / image["file_name"]
        boxes = [a["bbox"] + [1.0] for a in ann["annotations"] if a["image_id"] == image["id"]][:8]
        r = httpx.post(f"{url}/v1/keypoints", content=jpeg(path), params={"boxes": json.dumps(boxes)},
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([p["keypoints"] for p in r.json()["persons"]])
        assert got.shape == (len(boxes), 17, 3)
        expected = direct(student_export, path, np.array(boxes, np.float32))
        assert np.abs(got - np.stack([in_image(k, image) for k in expected])).max() < 0.02
        whole = httpx.post(f"{url}/v1/keypoints", files={"image": (image["file_name"], jpeg(path), "image/jpeg")},
                           data={"flip_test": "false"}, timeout=60).json()
        assert whole["persons"][0]["box"] == [0, 0, image["width"], image["height"]]
        expected = direct(student_export, path, np.array([[0, 0, image["width"], image["height"], 1]], np.float32))
        assert np.abs(np.array(whole["persons"][0]["keypoints"]) - in_image(expected[0], image)).max() < 0.02
    card = httpx.get(f"{url}/v1/model").json()
    assert card["input_size"] == [128, 96] and card["arch"] == "resnet18"
    render = httpx.post(f"{url}/v1/keypoints/render", content=jpeg(path), headers={"content-type": "image/jpeg"})
    assert render.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(render.content, np.uint8), 1).shape[:2] == (image["height"], image["width"])


def test_concurrent_requests_are_batched(server, coco_mini):
    url, handle = server
    data = jpeg(coco_mini / "images" / "000000000785.jpg")

    async def burst():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{url}/v1/keypoints", content=data, headers={"content-type": "image/jpeg"},
                            params={"flip_test": str(i % 2 == 0).lower()}) for i in range(64)])

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    stats = [handle.stats.remote().result() for _ in range(6)]
    assert max(s["max_requests"] for s in stats) > 1


def _jpeg_header_with_size(width: int, height: int) -> bytes:
    """A JPEG whose frame header declares a huge size (a decompression bomb's header)."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def test_bad_requests_get_4xx_and_the_service_stays_up(server, coco_mini):
    url, _ = server
    good = jpeg(coco_mini / "images" / "000000000785.jpg")
    corpus = {
        "truncated jpeg": dict(content=good[:4000], headers={"content-type": "image/jpeg"}),
        "not an image": dict(content=b"hello world" * 10, headers={"content-type": "image/jpeg"}),
        "empty body": dict(content=b"", headers={"content-type": "image/jpeg"}),
        "huge declared size": dict(content=_jpeg_header_with_size(60000, 60000), headers={"content-type": "image/jpeg"}),
        "negative box": dict(content=good, headers={"content-type": "image/jpeg"}, params={"boxes": "[[10, 10, -5, 20]]"}),
        "nan box": dict(content=good, headers={"content-type": "image/jpeg"}, params={"boxes": "[[10, 10, NaN, 20]]"}),
        "box outside": dict(content=good, headers={"content-type": "image/jpeg"}, params={"boxes": "[[5000, 5000, 10, 10]]"}),
        "too many boxes": dict(content=good, headers={"content-type": "image/jpeg"},
                               params={"boxes": json.dumps([[0, 0, 10, 10]] * 9)}),
        "boxes not json": dict(content=good, headers={"content-type": "image/jpeg"}, params={"boxes": "[[1,2"}),
        "wrong content type": dict(content=good, headers={"content-type": "text/plain"}),
        "multipart without image": dict(data={"boxes": "[[0,0,10,10]]"}, files={"other": ("x", b"1")}),
        "bad flip flag": dict(content=good, headers={"content-type": "image/jpeg"}, params={"flip_test": "maybe"}),
        "nested boxes": dict(content=good, headers={"content-type": "image/jpeg"}, params={"boxes": "[" * 700 + "]" * 700}),
        "400-digit box value": dict(content=good, headers={"content-type": "image/jpeg"},
                                    params={"boxes": "[[1, 2, 3, " + "9" * 400 + "]]"}),
        "score 1e39": dict(content=good, headers={"content-type": "image/jpeg"}, params={"boxes": "[[1, 2, 30, 40, 1e39]]"}),
        "chunked body over the limit": dict(content=(b"\xff" * 65536 for _ in range(48)),
                                            headers={"content-type": "image/jpeg"}),
        "multipart over the limit": dict(files={"image": ("big.jpg", b"\xff\xd8" + b"\0" * (3 * 1024 * 1024))}),
    }
    for name, kwargs in corpus.items():
        r = httpx.post(f"{url}/v1/keypoints", timeout=30, **kwargs)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json()["error"], name
        if "over the limit" in name:
            assert r.status_code == 413, name
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    assert httpx.post(f"{url}/v1/keypoints", content=good, headers={"content-type": "image/jpeg"}).status_code == 200


def test_killing_a_replica_does_not_fail_later_requests(server, coco_mini):
    import ray

    url, _ = server
    good = jpeg(coco_mini / "images" / "000000000785.jpg")
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if "PoseModel" in a["name"] and a["namespace"] == "serve"]
    assert names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    codes = [httpx.post(f"{url}/v1/keypoints", content=good, headers={"content-type": "image/jpeg"}, timeout=60).status_code
             for _ in range(10)]
    assert codes == [200] * 10


@pytest.mark.parametrize("url, allowed", [
    ("http://127.0.0.1:8000", True), ("http://127.8.9.1", True), ("http://localhost:1", True), ("http://[::1]:80", True),
    ("http://10.0.0.1:8000", False), ("http://192.168.1.2", False), ("http://172.16.0.1", False),
    ("https://example.com", False)])
def test_load_generator_only_targets_loopback(url, allowed):
    from cdkd_ray.core.errors import CdkdError
    from cdkd_ray.ray_adapters.serve.loadgen import check_loopback

    if allowed:
        check_loopback(url)
    else:
        with pytest.raises(CdkdError, match="only loopback"):
            check_loopback(url)


def test_valid_jpeg_variants_are_accepted_and_keypoints_stay_in_the_image(server, coco_mini):
    url, _ = server
    good = jpeg(coco_mini / "images" / "000000000785.jpg")
    width, height = cv2.imdecode(np.frombuffer(good, np.uint8), cv2.IMREAD_COLOR).shape[1::-1]
    variants = {"plain": good, "trailing data": good + b"junk after the end" * 10,
                "fill bytes": good[:2] + b"\xff\xff\xff" + good[2:]}
    for name, body in variants.items():
        r = httpx.post(f"{url}/v1/keypoints", content=body, headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, (name, r.text)
        answer = r.json()
        assert answer["image"] == {"width": width, "height": height}
        for person in answer["persons"]:  # the whole-image crop reaches past the borders: clipped, not confident
            for x, y, score in person["keypoints"]:
                assert 0 <= x <= width - 1 and 0 <= y <= height - 1 and 0 <= score


def test_exif_orientation_is_applied_when_serving(server):
    import io

    from PIL import Image

    url, _ = server
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 160x96, shown rotated by 90 degrees: 96 wide, 160 high
    Image.fromarray(np.full((96, 160, 3), 128, np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    r = httpx.post(f"{url}/v1/keypoints", content=buf.getvalue(), headers={"content-type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 96, "height": 160}
    assert all(0 <= x <= 95 and 0 <= y <= 159 for p in r.json()["persons"] for x, y, _ in p["keypoints"])


def test_readiness_and_a_token_protected_app(server, student_export, coco_mini, monkeypatch):
    import hashlib

    from ray import serve

    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import run_serve

    url, _ = server
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["input_size"] == [128, 96]
    port = int(url.rsplit(":", 1)[1])
    cfg = ServeConfig(model_uri=student_export, min_replicas=1, max_replicas=1, num_cpus=0.25,
                      auth_token_sha256=hashlib.sha256(b"s3cret").hexdigest())
    secure = run_serve(cfg, "127.0.0.1", port, app_name="secure", route_prefix="/secure")
    try:
        good = jpeg(coco_mini / "images" / "000000000785.jpg")
        headers = {"content-type": "image/jpeg"}
        assert httpx.post(f"{secure}/v1/keypoints", content=good, headers=headers, timeout=60).status_code == 401
        wrong = {**headers, "authorization": "Bearer nope"}
        assert httpx.post(f"{secure}/v1/keypoints", content=good, headers=wrong, timeout=60).status_code == 401
        right = {**headers, "authorization": "Bearer s3cret"}
        assert httpx.post(f"{secure}/v1/keypoints", content=good, headers=right, timeout=60).status_code == 200
        assert httpx.get(f"{secure}/healthz", timeout=30).status_code == 200  # liveness stays open
    finally:
        serve.delete("secure")


def test_a_broken_export_is_refused_when_a_replica_loads_it(student_export, tmp_path):
    import json
    import shutil

    from cdkd_ray.core.errors import CheckpointError
    from cdkd_ray.core.serving.runtime import StudentRuntime

    for change, message in (({"input_size": [100, 96]}, "multiple of 32"), ({"decode": "magic"}, "decode method"),
                            ({"num_keypoints": 21}, "keypoints")):
        broken = tmp_path / f"broken-{next(iter(change))}"
        shutil.copytree(student_export, broken)
        card = json.loads((broken / "model_card.json").read_text())
        card.update(change)
        (broken / "model_card.json").write_text(json.dumps(card))
        with pytest.raises(CheckpointError, match=message):
            StudentRuntime(str(broken))


def test_a_detector_in_front_returns_one_skeleton_per_detected_person(server, student_export, coco_mini, tmp_path):
    from ray import serve

    from cdkd_ray.core.serving.detectors import DetectorConfig
    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import run_serve
    from tests.helpers import constant_onnx_detector

    path = coco_mini / "images" / "000000000785.jpg"
    height, width = cv2.imread(str(path)).shape[:2]
    scale = min(640 / height, 640 / width)
    people = [[40, 20, 180, 400], [250, 60, 330, 380], [100, 100, 160, 200]]  # x1 y1 x2 y2 in the image
    dets = [[v * scale for v in box] + [0.9 - 0.1 * i] for i, box in enumerate(people)]
    onnx_file = constant_onnx_detector(str(tmp_path / "det.onnx"), dets + [[0, 0, 10, 10, 0.99]], [0, 0, 0, 5])
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    cfg = ServeConfig(model_uri=student_export, min_replicas=1, max_replicas=1, num_cpus=0.25,
                      detector_num_cpus=0.25, detector=DetectorConfig(kind="onnx", checkpoint=onnx_file))
    det_url = run_serve(cfg, "127.0.0.1", port, app_name="detected", route_prefix="/detected")
    try:
        r = httpx.post(f"{det_url}/v1/keypoints", content=jpeg(path), headers={"content-type": "image/jpeg"},
                       timeout=120)
        assert r.status_code == 200, r.text
        persons = r.json()["persons"]
        assert len(persons) == 3  # the fourth detection is not a person
        for person, (x1, y1, x2, y2) in zip(persons, people):
            assert person["box"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.05)
            assert len(person["keypoints"]) == 17
        # client boxes still win over the detector
        one = httpx.post(f"{det_url}/v1/keypoints", content=jpeg(path), params={"boxes": "[[10, 10, 50, 90]]"},
                         headers={"content-type": "image/jpeg"}, timeout=60)
        assert len(one.json()["persons"]) == 1
    finally:
        serve.delete("detected")


def test_healthz_answers_during_a_flood_of_decompression_heavy_requests(server):
    """Decodes run off the ingress's event loop, so liveness answers while big images are decoded."""
    import time

    url, _ = server
    heavy = cv2.imencode(".png", np.zeros((4000, 4000, 3), np.uint8))[1].tobytes()  # 16 Mpx in ~50 KB
    started = time.perf_counter()
    cv2.imdecode(np.frombuffer(heavy, np.uint8), cv2.IMREAD_COLOR)
    one_decode = time.perf_counter() - started  # what a probe would wait at least if decodes blocked the loop

    async def flood_and_probe():
        async with httpx.AsyncClient(timeout=120) as client:
            flood = [asyncio.create_task(client.post(f"{url}/v1/keypoints", content=heavy,
                                                     headers={"content-type": "image/png"})) for _ in range(12)]
            await asyncio.sleep(0.3)
            latencies = []
            for _ in range(10):
                start = time.perf_counter()
                r = await client.get(f"{url}/healthz")
                latencies.append(time.perf_counter() - start)
                assert r.status_code == 200
                await asyncio.sleep(0.05)
            answers = await asyncio.gather(*flood)
            return latencies, [a.status_code for a in answers]

    latencies, statuses = asyncio.run(flood_and_probe())
    assert all(s in (200, 503) for s in statuses), statuses  # answered or told to retry, never an error
    # Decodes on the event loop would hold the first probe (sent 0.3 s into the flood) behind the ~11 queued
    # decodes. Off the loop, the median answer takes under 100 ms (on a slow machine, under two decodes)
    # and the slowest under four decodes.
    assert sorted(latencies)[len(latencies) // 2] < max(0.1, 2 * one_decode), (latencies, one_decode)
    assert max(latencies) < max(0.5, 4 * one_decode), (latencies, one_decode)


def test_a_request_that_takes_too_long_gets_503_with_retry_after(server, student_export, coco_mini):
    from ray import serve

    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import run_serve

    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    cfg = ServeConfig(model_uri=student_export, min_replicas=1, max_replicas=1, num_cpus=0.25, request_timeout_s=0.001)
    slow = run_serve(cfg, "127.0.0.1", port, app_name="impatient", route_prefix="/impatient")
    try:
        r = httpx.post(f"{slow}/v1/keypoints", content=jpeg(coco_mini / "images" / "000000000785.jpg"),
                       headers={"content-type": "image/jpeg"}, timeout=60)
        assert r.status_code == 503 and r.headers["retry-after"] and "no answer within" in r.json()["error"]
    finally:
        serve.delete("impatient")
