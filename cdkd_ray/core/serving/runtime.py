"""The student at serving time: crops for boxes, batched forward, keypoints in image coordinates."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from cdkd_ray.core.checkpoint import ONNX_FILE
from cdkd_ray.core.codec import DECODE_METHODS, flip_back, heatmaps_to_keypoints
from cdkd_ray.core.errors import CheckpointError
from cdkd_ray.core.evaluation import rescore
from cdkd_ray.core.geometry import box_to_center_scale, crop_affine, warp_crops
from cdkd_ray.core.keypoints import NUM_KEYPOINTS
from cdkd_ray.core.models.export import export_onnx
from cdkd_ray.core.models.inference import normalize_images, predict_heatmaps
from cdkd_ray.core.models.loading import follow_export_pointer, load_pose_model
from cdkd_ray.core.models.strides import heatmap_size_for
from cdkd_ray.core.storage import resolve


BACKENDS = ("torch", "onnxruntime")


def person_crops(image_bgr: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB crops [M,3,H,W] for boxes [M,5] at the model's input size, with their centers and scales."""
    h, w = input_size
    center, scale = box_to_center_scale(boxes[:, :4], w / h)
    mat = crop_affine(center, scale, np.zeros(len(boxes)), input_size)
    crops = warp_crops([image_bgr], np.zeros(len(boxes), int), mat, input_size, swap_red_blue=True)
    return crops, center, scale


class OnnxHeatmaps:
    """The student's heatmaps through onnxruntime: the export's heatmap ONNX, or one made from the weights."""

    def __init__(self, model: torch.nn.Module, input_size: tuple[int, int], model_uri: str, card: dict):
        import onnxruntime as ort

        onnx = card.get("onnx") or {}
        path = follow_export_pointer(resolve(model_uri)).join(ONNX_FILE)
        if onnx and not onnx.get("decode_in_graph") and path.exists():
            data = path.read_bytes()
        else:  # no ONNX, or one that decodes in-graph (no heatmaps to average a flip test with): make one
            with tempfile.TemporaryDirectory() as tmp:
                export_onnx(model, os.path.join(tmp, ONNX_FILE), input_size, heatmap_size_for(input_size))
                with open(os.path.join(tmp, ONNX_FILE), "rb") as f:
                    data = f.read()
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, np.float32)})[0]


class StudentRuntime:
    """A loaded student export plus the geometry its card describes; heatmaps by torch or onnxruntime."""

    def __init__(self, model_uri: str, backend: str = "torch"):
        loaded = load_pose_model(model_uri)
        self.model = loaded.model.eval()
        self.card = loaded.card
        self.channel_order = loaded.channel_order
        self.input_size = tuple(self.card.get("input_size", (256, 192)))
        self.heatmap_size = heatmap_size_for(self.input_size)
        self.num_keypoints = loaded.model_cfg.num_keypoints
        self.decode = self.card.get("decode", "argmax")
        self.model_uri = model_uri
        self.name = f"cdkd-ray {loaded.model_cfg.arch}"
        if backend not in BACKENDS:
            raise CheckpointError(f"unknown pose backend {backend!r} (choose from {', '.join(BACKENDS)})")
        self.backend = backend
        self._onnx = OnnxHeatmaps(self.model, self.input_size, model_uri, self.card) if backend == "onnxruntime" \
            else None
        self._check(model_uri)

    def _check(self, model_uri: str) -> None:
        """Refuse an export that would load and then fail every request: say what is wrong, at load time."""
        problems = []
        h, w = self.input_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            problems.append(f"input_size {h}x{w} is not a multiple of 32")
        if self.num_keypoints != NUM_KEYPOINTS or self.card.get("num_keypoints", NUM_KEYPOINTS) != NUM_KEYPOINTS:
            problems.append(f"{self.num_keypoints} keypoints (card: {self.card.get('num_keypoints')}), the service "
                            f"answers the {NUM_KEYPOINTS} COCO keypoints")
        if self.decode not in DECODE_METHODS:
            problems.append(f"decode method {self.decode!r} is not one of {', '.join(DECODE_METHODS)}")
        if not problems:
            out = self.heatmaps(np.zeros((1, 3, h, w), np.uint8), False)
            if out.shape != (1, self.num_keypoints, *self.heatmap_size) or not np.isfinite(out).all():
                problems.append(f"a test forward gave {out.shape}, expected (1, {self.num_keypoints}, "
                                f"{self.heatmap_size[0]}, {self.heatmap_size[1]}) finite heatmaps")
        if problems:
            raise CheckpointError(f"the export at {model_uri} cannot be served: {'; '.join(problems)}")

    def crops(self, image_bgr: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return person_crops(image_bgr, boxes, self.input_size)

    def heatmaps(self, crops: np.ndarray, flip_test: bool) -> np.ndarray:
        if self._onnx is None:
            return predict_heatmaps(self.model, torch.from_numpy(crops), self.channel_order, flip_test).numpy()
        x = normalize_images(torch.from_numpy(crops), self.channel_order).numpy()
        heatmaps = self._onnx(x)
        if flip_test:
            heatmaps = (heatmaps + flip_back(self._onnx(x[..., ::-1]))) * 0.5
        return heatmaps

    def keypoints(self, heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray, boxes: np.ndarray,
                  image_size: tuple[int, int] | None = None) -> list[dict]:
        """Per person: box, score and keypoints [x, y, score] in image pixels.

        Keypoints decoded outside the image (width, height) are clipped to its edge with score 0: never a
        confident coordinate outside the picture.
        """
        kpts, scores = heatmaps_to_keypoints(heatmaps, center, scale, self.input_size, self.decode)
        if image_size is not None:
            width, height = image_size
            outside = (kpts[..., 0] < 0) | (kpts[..., 0] > width - 1) | (kpts[..., 1] < 0) | (kpts[..., 1] > height - 1)
            kpts = np.stack([np.clip(kpts[..., 0], 0, width - 1), np.clip(kpts[..., 1], 0, height - 1)], -1)
            scores = np.where(outside, 0.0, scores)
        person_scores = rescore(scores, boxes[:, 4])
        return [{"box": [round(float(v), 2) for v in box[:4]], "box_score": float(box[4]),
                 "score": float(ps), "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                                    for (x, y), s in zip(k, sc)]}
                for box, ps, k, sc in zip(boxes, person_scores, kpts, scores)]
