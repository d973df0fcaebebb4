"""HTTP input checks, without a server: hostile boxes, JPEG headers, bearer tokens."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from cdkd_ray.core.serving.validation import BadRequest, Limits, bearer_ok, header_size, parse_boxes

LIMITS = Limits(max_boxes=8)


@pytest.mark.parametrize("raw, status", [
    ("[" * 100_000 + "]" * 100_000, 413),                  # nesting too deep to parse: refused by size first
    ("[" * 700 + "]" * 700, 400),                          # deeply nested, under the size cap
    ("[[1, 2, 3, " + "9" * 400 + "]]", 400),               # float() would overflow
    ("[[1, 2, 3, " + "9" * 1700 + "]]", 413),              # over the size cap
    ("[[1, 2, 30, 40, 1e39]]", 400),                      # score would become float32 inf
    ("[[1, 2, 30, 40, 1.5]]", 400),                       # score outside [0, 1]
    ("[[1, 2, 30, 40, -0.1]]", 400),
    ("[[1, 2, true, 40]]", 400),
    ('[[1, 2, "3", 40]]', 400),
    ("[[1, 2, NaN, 40]]", 400),
])
def test_hostile_boxes_are_client_errors(raw, status):
    with pytest.raises(BadRequest) as err:
        parse_boxes(raw, 640, 480, LIMITS)
    assert err.value.status == status


@pytest.mark.parametrize("raw", ["[[1, 2, 3, " + "9" * 5000 + "]]",   # int() refuses over 4300 digits
                                 "[" * 5000 + "]" * 5000])            # RecursionError in the parser
def test_parser_errors_under_the_size_cap_are_client_errors(raw):
    with pytest.raises(BadRequest) as err:
        parse_boxes(raw, 640, 480, Limits(max_boxes=64))
    assert err.value.status == 400


def test_good_boxes_are_clipped_and_scored():
    boxes = parse_boxes("[[-10, 5, 100, 50, 0.9], [600, 400, 100, 100]]", 640, 480, LIMITS)
    np.testing.assert_allclose(boxes, [[0, 5, 90, 50, 0.9], [600, 400, 40, 80, 1.0]], rtol=1e-6)
    assert np.isfinite(boxes).all()


def _jpeg_header(width: int, height: int, fill: int = 0, app_segments: int = 0) -> bytes:
    sof = b"\xff" * fill + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + b"\xff\xe0\x00\x02" * app_segments + sof + b"\xff\xd9"


def test_jpeg_fill_bytes_are_allowed_and_segment_floods_refused():
    assert header_size(_jpeg_header(640, 480, fill=5)) == (640, 480)
    assert header_size(_jpeg_header(640, 480, app_segments=10)) == (640, 480)
    with pytest.raises(BadRequest, match="segments"):
        header_size(_jpeg_header(640, 480, app_segments=100_000))


def test_bearer_tokens():
    digest = hashlib.sha256(b"s3cret").hexdigest()
    assert bearer_ok("Bearer s3cret", digest) and bearer_ok("bearer  s3cret", digest)
    assert not bearer_ok("Bearer wrong", digest) and not bearer_ok(None, digest) and not bearer_ok("s3cret", digest)
    assert bearer_ok(None, "")  # no token configured: open


@pytest.mark.parametrize("decode_in_graph", [False, True])
def test_onnxruntime_backend_matches_torch_within_half_a_pixel(tmp_path, coco_mini, decode_in_graph):
    import json

    import cv2

    from cdkd_ray.core.models.export import export_student
    from cdkd_ray.core.serving.runtime import StudentRuntime
    from tests.helpers import random_student_export

    random_student_export(str(tmp_path))
    export = str(tmp_path / "onnx-export")
    export_student(str(tmp_path / "ckpt"), export, onnx=True, onnx_decode=decode_in_graph)
    image = cv2.imread(str(coco_mini / "images" / "000000000785.jpg"))
    ann = json.loads((coco_mini / "person_keypoints_val_mini.json").read_text())
    boxes = np.array([a["bbox"] + [1.0] for a in ann["annotations"] if a["image_id"] == 785], np.float32)
    runtimes = {b: StudentRuntime(export, b) for b in ("torch", "onnxruntime")}
    for flip in (False, True):
        answers = {}
        for backend, runtime in runtimes.items():
            crops, center, scale = runtime.crops(image, boxes)
            persons = runtime.keypoints(runtime.heatmaps(crops, flip), center, scale, boxes, image.shape[1::-1])
            answers[backend] = np.array([p["keypoints"] for p in persons])
        assert np.abs(answers["torch"][..., :2] - answers["onnxruntime"][..., :2]).max() <= 0.5
        assert np.abs(answers["torch"][..., 2] - answers["onnxruntime"][..., 2]).max() < 1e-3
