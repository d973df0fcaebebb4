"""Person detectors in front of the pose model: an ONNX export and a torchvision checkpoint (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdkd_ray.core.errors import CheckpointError
from cdkd_ray.core.serving.detectors import DetectorConfig, OnnxDetector, TorchvisionDetector, build_detector
from tests.helpers import constant_onnx_detector


def test_onnx_detector_maps_letterboxed_boxes_back_and_keeps_people(tmp_path):
    # in the 640x640 letterboxed input of a 240x320 image (scale 2): x1, y1, x2, y2, score
    dets = [[20, 40, 120, 400, 0.9], [300, 60, 380, 420, 0.95], [500, 10, 600, 300, 0.99], [10, 10, 50, 50, 0.3]]
    labels = [0, 0, 2, 0]  # the third is not a person, the fourth is under the score threshold
    path = constant_onnx_detector(str(tmp_path / "det.onnx"), dets, labels)
    detector = OnnxDetector(DetectorConfig(kind="onnx", checkpoint=path, score_threshold=0.5))
    boxes = detector.detect(np.zeros((240, 320, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[150, 30, 40, 180, 0.95], [10, 20, 50, 180, 0.9]], rtol=1e-5)


def test_torchvision_detector_loads_weights_only_and_keeps_the_person_class(tmp_path):
    import torchvision

    torch.manual_seed(0)
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    model = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None, num_classes=91).eval()
    path = tmp_path / "det.pth"
    torch.save({"model": model.state_dict()}, path)
    cfg = DetectorConfig(kind="torchvision", checkpoint=str(path), arch=arch, score_threshold=0.0)
    detector = build_detector(cfg)
    image = np.random.default_rng(0).integers(0, 255, (200, 240, 3), np.uint8)
    boxes = detector.detect(image)
    with torch.no_grad():
        ref = model([torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255])[0]
    people = (ref["labels"] == 1).numpy()
    assert boxes.shape == (min(int(people.sum()), cfg.max_persons), 5)
    expected = ref["boxes"].numpy()[people][: len(boxes)]
    np.testing.assert_allclose(boxes[:, :2], expected[:, :2], atol=1e-3)
    with pytest.raises(CheckpointError, match="does not fit"):
        TorchvisionDetector(DetectorConfig(kind="torchvision", checkpoint=str(path), arch="retinanet_resnet50_fpn"))
