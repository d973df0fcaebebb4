"""The Serve application: a FastAPI ingress (validation, decoding) and a batching, autoscaling model.

    serve run cdkd_ray.ray_adapters.serve.app:app_builder model_uri=/path/to/export
    cdkd-ray serve /path/to/export --port 8000 --min-replicas 1 --max-replicas 3
"""


import asyncio
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from cdkd_ray.core.serving.detectors import DetectorConfig
from cdkd_ray.core.serving.runtime import person_crops
from cdkd_ray.core.serving.requests import ServiceUnavailable, decode_request_image, read_image_request
from cdkd_ray.core.serving.validation import BadRequest, Limits, bearer_ok, parse_boxes, parse_flag


class Unauthorized(BadRequest):
    """401: the /v1 endpoints need the configured bearer token."""


@dataclass
class ServeConfig:
    """The pose service: the student's replicas and limits, and optionally a person detector in front."""

    model_uri: str = ""
    version: str = "1"
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 32
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.0  # 0: a lone request runs at once; under load the queue forms the batches
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 10.0
    look_back_period_s: float = 30.0  # the window Serve averages ongoing requests over (Ray's default)
    num_cpus: float = 1.0
    torch_threads: int = 1
    max_body_bytes: int = Limits.max_body_bytes
    max_pixels: int = Limits.max_pixels
    max_side: int = Limits.max_side
    max_boxes: int = Limits.max_boxes
    max_queued_requests: int = 64  # per model replica; beyond it requests get 503 + Retry-After
    request_timeout_s: float = 30.0  # a request not answered by then gets 503 + Retry-After
    decode_slots: int = 2  # image decodes running at once in the ingress (off its event loop)
    backend: Literal["torch", "onnxruntime"] = "torch"  # what runs the pose model in its replicas
    auth_token_sha256: str = ""  # SHA-256 of a bearer token the /v1 endpoints require ("" = open)
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # kind none: client boxes, else the image
    detector_replicas: int = 1
    detector_num_cpus: float = 1.0
    detector_num_gpus: float = 0.0

    def validate(self, where: str = "serve") -> None:
        from cdkd_ray.core.errors import ConfigError

        if not self.model_uri:
            raise ConfigError(f"{where}.model_uri is required (a student export folder or s3:// URI)")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"{where}: need 1 <= min_replicas <= max_replicas")
        if not self.look_back_period_s > 0:
            raise ConfigError(f"{where}.look_back_period_s must be > 0 seconds, got {self.look_back_period_s}")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_pixels, self.max_side, self.max_boxes)


class InputSizeChanged(Exception):
    """The model replica now expects crops of another size (a new model version was rolled out)."""


@serve.deployment(name="PoseModel")
class PoseModel:
    """Runs the student on person crops batched across concurrent requests."""

    def __init__(self, model_uri: str, max_batch_size: int, batch_wait_timeout_s: float, torch_threads: int = 1,
                 backend: str = "torch"):
        import torch

        from cdkd_ray.core.serving.runtime import StudentRuntime

        torch.set_num_threads(torch_threads)
        self.backend = backend
        self.runtime = StudentRuntime(model_uri, backend)
        self.version = str(self.runtime.card.get("version", "1"))
        self.forward.set_max_batch_size(max_batch_size)
        self.forward.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches = {"count": 0, "max_items": 0, "max_requests": 0}

    def reconfigure(self, user_config: dict) -> None:
        """Roll out a new model version in place (`user_config: {model_uri, version}`)."""
        from cdkd_ray.core.serving.runtime import StudentRuntime

        uri = user_config.get("model_uri")
        if uri and uri != self.runtime.model_uri:
            self.runtime = StudentRuntime(uri, self.backend)  # swapped atomically: in-flight batches keep the old one
        self.version = str(user_config.get("version", self.version))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def forward(self, items: list[tuple[str, np.ndarray, bool]]) -> list[np.ndarray]:
        runtime = self.runtime
        crops = np.stack([crop for _, crop, _ in items])
        flips = np.array([flip for _, _, flip in items])
        out = np.empty((len(items), runtime.num_keypoints, *runtime.heatmap_size), np.float32)
        for flag in (False, True):
            idx = np.nonzero(flips == flag)[0]
            if len(idx):
                out[idx] = runtime.heatmaps(crops[idx], flag)
        self.batches["count"] += 1
        self.batches["max_items"] = max(self.batches["max_items"], len(items))
        self.batches["max_requests"] = max(self.batches["max_requests"], len({rid for rid, _, _ in items}))
        return list(out)

    async def predict(self, request_id: str, crops: np.ndarray, center: np.ndarray, scale: np.ndarray,
                      boxes: np.ndarray, image_size: tuple[int, int], flip_test: bool) -> dict:
        """Keypoints for the person crops the ingress cut (crops travel, not whole images)."""
        runtime = self.runtime
        if tuple(crops.shape[-2:]) != runtime.input_size:  # a rolled-out model with another input size
            raise InputSizeChanged(list(runtime.input_size))
        heatmaps = await asyncio.gather(*[self.forward((request_id, crop, flip_test)) for crop in crops])
        persons = runtime.keypoints(np.stack(heatmaps), center, scale, boxes, image_size=image_size)
        return {"model": {"name": runtime.name, "version": self.version}, "persons": persons}

    def ready(self) -> dict:
        return {"model": self.runtime.name, "version": self.version, "input_size": list(self.runtime.input_size)}

    def model_card(self) -> dict:
        return {**self.runtime.card, "served_version": self.version, "model_uri": self.runtime.model_uri}

    def stats(self) -> dict:
        return dict(self.batches)


@serve.deployment(name="PersonDetector")
class PersonDetectorDeployment:
    """Finds the people in an image: boxes [M,5] (x, y, w, h, score), best first."""

    def __init__(self, detector: dict, torch_threads: int = 1):
        import torch

        from cdkd_ray.core.config import from_dict
        from cdkd_ray.core.serving.detectors import build_detector

        torch.set_num_threads(torch_threads)
        self.detector = build_detector(from_dict(DetectorConfig, detector, "detector"),
                                       "cuda" if torch.cuda.is_available() else "cpu")

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        return self.detector.detect(image_bgr)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "status": status})


API_DESCRIPTION = """Top-down human pose (17 COCO keypoints) from a CDKD-distilled student.

* **People**: client boxes (`boxes=[[x, y, w, h, score], ...]`) always win; without them a configured person
  detector (a torchvision detection checkpoint or an ONNX dets+labels export) finds the people, else the
  whole image is one person.
* **Backends**: the pose model runs on torch or onnxruntime (`backend` in the serve config).
* **Limits**: bodies over `max_body_bytes` and images over `max_pixels` get 413 (checked from the header,
  before decoding); malformed boxes 400; a full queue or no answer within `request_timeout_s` 503 with
  `Retry-After`. EXIF orientation is applied; keypoints outside the image are clipped with score 0.
* **Auth**: with a token configured, `/v1/*` needs `Authorization: Bearer <token>` (401 otherwise).
* **Probes**: `/healthz` is liveness; `/readyz` is 200 once a model replica has loaded and checked its export.
"""

api = FastAPI(title="cdkd-ray pose estimation", version="1", description=API_DESCRIPTION)


@api.exception_handler(BadRequest)
async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
    response = _error(exc.status, exc.message)
    if isinstance(exc, ServiceUnavailable):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


@serve.deployment(name="PoseAPI")
@serve.ingress(api)
class PoseAPI:
    """HTTP ingress: validates and decodes, then asks PoseModel; never lets bad input through."""

    def __init__(self, model, detector, limits: dict, request_timeout_s: float = 30.0, decode_slots: int = 2,
                 auth_token_sha256: str = ""):
        self.model, self.detector = model, detector
        self.model_input_size: tuple[int, int] | None = None
        self.limits = Limits(**limits)
        self.request_timeout_s = request_timeout_s
        self.decode_slots = asyncio.Semaphore(decode_slots)
        self.auth_token_sha256 = auth_token_sha256

    def _authorize(self, request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), self.auth_token_sha256):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)", status=401)

    async def _input_size(self, refresh: bool = False) -> tuple[int, int]:
        if refresh or self.model_input_size is None:
            self.model_input_size = tuple((await self.model.ready.remote())["input_size"])
        return self.model_input_size

    async def _ask_model(self, image: np.ndarray, boxes: np.ndarray, flip: bool) -> dict:
        """The model's answer for crops cut here: a dead replica is retried on another, a full queue answers
        503, a changed input size (a new model version) re-cuts the crops."""
        request_id, image_size = uuid.uuid4().hex, (image.shape[1], image.shape[0])
        crops, center, scale = person_crops(image, boxes, await self._input_size())
        for attempt in range(4):
            try:
                return await self.model.predict.remote(request_id, crops, center, scale, boxes, image_size, flip)
            except Exception as exc:  # noqa: BLE001 - sorted by kind below
                name = type(exc).__name__
                if "InputSizeChanged" in name or "InputSizeChanged" in str(exc)[:300]:
                    crops, center, scale = person_crops(image, boxes, await self._input_size(refresh=True))
                    continue
                if "BackPressure" in name:
                    raise ServiceUnavailable("the model's queue is full", retry_after_s=1) from None
                if not any(k in name for k in ("ActorDied", "ActorUnavailable", "RayActorError")) or attempt == 3:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _people_and_poses(self, image: np.ndarray, raw_boxes, flip: bool) -> dict:
        height, width = image.shape[:2]
        if raw_boxes in (None, "") and self.detector is not None:
            boxes = await self.detector.detect.remote(image)
            if not len(boxes):
                return {"persons": [], "detector": True}
        else:
            boxes = parse_boxes(raw_boxes, width, height, self.limits)
        return await self._ask_model(image, boxes, flip)

    async def _predict(self, request: Request) -> tuple[np.ndarray, dict]:
        self._authorize(request)
        data, raw_boxes, raw_flip = await read_image_request(request, self.limits)
        image = await decode_request_image(data, self.limits, self.decode_slots)
        try:
            async with asyncio.timeout(self.request_timeout_s):  # detector and model together
                result = await self._people_and_poses(image, raw_boxes, parse_flag(raw_flip))
        except TimeoutError:
            raise ServiceUnavailable(f"no answer within {self.request_timeout_s:g} s", retry_after_s=5) from None
        result["image"] = {"width": image.shape[1], "height": image.shape[0]}  # as displayed (EXIF applied)
        return image, result

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready when a model replica has loaded and checked its export; /healthz is liveness only."""
        try:
            model = await asyncio.wait_for(self.model.ready.remote(), 5.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return JSONResponse(status_code=503, content={"ready": False, "error": type(exc).__name__},
                                headers={"Retry-After": "2"})
        return JSONResponse(content={"ready": True, **model})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "time": time.time()}

    @api.get("/v1/model")
    async def model_card(self, request: Request) -> dict:
        self._authorize(request)
        return await self.model.model_card.remote()

    @api.post("/v1/keypoints")
    async def keypoints(self, request: Request) -> dict:
        """Body: an image (raw JPEG/PNG, or multipart field 'image'); boxes [[x,y,w,h,score],...]
        and flip_test as query parameters or form fields. Returns 17 COCO keypoints per person."""
        _, result = await self._predict(request)
        return result

    @api.post("/v1/keypoints/render")
    async def render(self, request: Request) -> Response:
        """Same input as /v1/keypoints; returns a PNG with the skeletons drawn."""
        from cdkd_ray.core.viz import draw_skeleton

        image, result = await self._predict(request)
        for person in result["persons"]:
            k = np.asarray(person["keypoints"], np.float32)
            x, y, w, h = (int(v) for v in person["box"])
            cv2.rectangle(image, (x, y), (x + w, y + h), (80, 220, 80), 1)
            draw_skeleton(image, k[:, :2], k[:, 2], threshold=0.2)
        ok, png = cv2.imencode(".png", image)
        return Response(content=png.tobytes(), media_type="image/png")


# How often Serve's handles and replicas push their load to its controller unless told otherwise (Ray 2.60).
SERVE_METRICS_INTERVAL_S = 10.0


def autoscaling_config(cfg: ServeConfig) -> dict:
    """Serve's autoscaling_config of the model replicas.

    Serve averages the load over look_back_period_s from what its handles push every metrics_interval_s
    (10 s by default). A window shorter than that (the quickstart's 5 s) saw at most one push: replicas
    were added ~20 s into a load, whatever upscale_delay_s said, and Ray warns that such a window will
    be an error. Such a window gets two pushes in it; a longer one keeps Serve's default interval.
    """
    config = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas, "initial_replicas": cfg.min_replicas,
              "target_ongoing_requests": cfg.target_ongoing_requests, "upscale_delay_s": cfg.upscale_delay_s,
              "downscale_delay_s": cfg.downscale_delay_s, "look_back_period_s": cfg.look_back_period_s}
    if cfg.look_back_period_s / 2 < SERVE_METRICS_INTERVAL_S:
        config["metrics_interval_s"] = cfg.look_back_period_s / 2
    return config


def build_app(cfg: ServeConfig):
    """The bound Serve application for a ServeConfig."""
    model = PoseModel.options(
        autoscaling_config=autoscaling_config(cfg),
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus},
        user_config={"model_uri": cfg.model_uri, "version": cfg.version},
    ).bind(cfg.model_uri, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.torch_threads, cfg.backend)
    detector = None
    if cfg.detector.kind != "none":
        detector = PersonDetectorDeployment.options(
            num_replicas=cfg.detector_replicas, max_queued_requests=cfg.max_queued_requests,
            ray_actor_options={"num_cpus": cfg.detector_num_cpus, "num_gpus": cfg.detector_num_gpus},
        ).bind(asdict(cfg.detector), cfg.torch_threads)
    return PoseAPI.options(max_ongoing_requests=max(64, cfg.max_ongoing_requests * cfg.max_replicas),
                           ray_actor_options={"num_cpus": 0.5}).bind(
        model, detector, asdict(cfg.limits), cfg.request_timeout_s, cfg.decode_slots, cfg.auth_token_sha256)


def app_builder(args: dict):
    """Entry point for `serve run/build cdkd_ray.ray_adapters.serve.app:app_builder model_uri=...`."""
    from cdkd_ray.core.config import from_dict

    return build_app(from_dict(ServeConfig, dict(args), "serve"))


__all__ = ["ServeConfig", "build_app", "app_builder"]
