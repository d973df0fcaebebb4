"""The per-sample decode path on real photos: crops in the model's layout, the JPEG completeness check, and
no decode of an image no instance comes from."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cdkd_ray.core import instances
from cdkd_ray.core.coco.images import JPEG_EOI, JPEG_SOS, jpeg_is_complete
from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.errors import DataValidationError
from cdkd_ray.core.geometry import box_to_center_scale, crop_affine, warp_crops


def photos(coco_mini) -> list[bytes]:
    return [p.read_bytes() for p in sorted((coco_mini / "images").glob("*.jpg"))]


def reference_crops(image_rgb: np.ndarray, mat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One warp per crop of the RGB image, then [N,H,W,3] -> [N,3,H,W]: the plain way."""
    crops = [cv2.warpAffine(image_rgb, m, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)) for m in mat]
    return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("size", [(256, 192), (63, 47)])
def test_crops_come_channels_first_and_rgb_from_bgr_photos_exactly_as_the_plain_way(coco_mini, size):
    bgr = cv2.imdecode(np.frombuffer(photos(coco_mini)[0], np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    boxes = np.array([[10, 20, 150, 300], [w - 60, h - 90, 120, 200], [0, 0, w, h]], np.float32)  # one off the edge
    center, scale = box_to_center_scale(boxes, size[1] / size[0])
    mat = crop_affine(center, scale, np.array([0.0, 30.0, -45.0]), size, np.array([False, True, False]))
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    expected = reference_crops(rgb, mat, size)

    from_bgr = warp_crops([bgr], np.zeros(3, int), mat, size, swap_red_blue=True)
    as_given = warp_crops([rgb], np.zeros(3, int), mat, size)

    assert from_bgr.shape == (3, 3, *size) and from_bgr.flags.c_contiguous
    np.testing.assert_array_equal(from_bgr, expected)
    np.testing.assert_array_equal(as_given, expected)
    assert (from_bgr[1, :, -5:, -5:] == 0).all()  # the zero border where the second box leaves the photo
    assert not np.array_equal(from_bgr[:, 0], from_bgr[:, 2])  # red and blue planes differ on a photo


def literal_completeness(data: bytes) -> bool:
    """The rule as stated: an end-of-image marker after the last start-of-scan."""
    last_scan = data.rfind(JPEG_SOS)
    return last_scan >= 0 and data.find(JPEG_EOI, last_scan) >= 0


def test_the_jpeg_completeness_check_searched_from_the_end_decides_as_the_rule(coco_mini):
    cases = []
    for data in photos(coco_mini):
        first_scan = data.find(JPEG_SOS)
        thumbnail = data[:2] + b"\xff\xe1\x00\x10" + JPEG_SOS + b"thumb" + JPEG_EOI + b"xx" + data[2:]
        cases += [data, data + b"\x00" * 7, data + b"trailing junk", data[:-2], data[:-1], data[: len(data) // 2],
                  data[:first_scan], data[:first_scan + 2], thumbnail, thumbnail[: len(thumbnail) // 2],
                  data[:-2] + JPEG_SOS + b"\x00\x01" + JPEG_EOI, data[:-2] + JPEG_SOS + b"\x00\x01", b"", JPEG_EOI]
    decided = [jpeg_is_complete(case) for case in cases]
    assert decided == [literal_completeness(case) for case in cases]
    assert True in decided and False in decided


def test_images_no_instance_comes_from_are_not_decoded(coco_mini, monkeypatch):
    """COCO's train annotations list every image; about half have no labelled person. Those are not decoded,
    so a corrupt one among them costs nothing and fails nothing."""
    coco = json.loads((coco_mini / "person_keypoints_val_mini.json").read_text())
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(
            {"bbox": ann["bbox"], "keypoints": ann["keypoints"], "num_keypoints": ann["num_keypoints"],
             "iscrowd": ann["iscrowd"]})
    entries = sorted(coco["images"], key=lambda im: im["id"])
    rows = {"image_id": [im["id"] for im in entries],
            "image": [(coco_mini / "images" / im["file_name"]).read_bytes() for im in entries],
            "persons": [by_image.get(im["id"], []) for im in entries],
            "width": [im["width"] for im in entries], "height": [im["height"] for im in entries]}
    rows["persons"][1] = []  # no one in it
    rows["persons"][2] = [{**p, "num_keypoints": 0} for p in rows["persons"][2]]  # people without keypoints
    rows["image"][1] = rows["image"][2] = b"\xff\xd8 not a JPEG"
    decoded = []
    real_decode = instances.decode_bgr
    monkeypatch.setattr(instances, "decode_bgr", lambda data: decoded.append(data) or real_decode(data))
    cfg = DataConfig(input_size=(64, 48), heatmap_size=(16, 12), on_bad_image="fail")

    out = instances.build_instances(rows, cfg, train=True, epoch=0)

    assert len(decoded) == 2 and set(out["image_id"]) == {rows["image_id"][0], rows["image_id"][3]}
    rows["persons"][1] = by_image[rows["image_id"][0]]  # now someone is in the corrupt image: it is decoded
    with pytest.raises(DataValidationError, match=f"image id={rows['image_id'][1]} cannot be decoded"):
        instances.build_instances(rows, cfg, train=True, epoch=0)
