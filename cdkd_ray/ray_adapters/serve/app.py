"""The Serve application: a FastAPI ingress (validation, decoding) and a batching, autoscaling model.

    serve run cdkd_ray.ray_adapters.serve.app:app_builder model_uri=/path/to/export
    cdkd-ray serve /path/to/export --port 8000 --min-replicas 1 --max-replicas 3
"""


import asyncio
import time
import uuid
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from cdkd_ray.core.coco.images import decode_checked
from cdkd_ray.core.serving.validation import BadRequest, Limits, check_image_bytes, parse_boxes, parse_flag

IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")


@dataclass
class ServeConfig:
    model_uri: str = ""
    version: str = "1"
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    max_ongoing_requests: int = 32
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.02
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 10.0
    num_cpus: float = 1.0
    torch_threads: int = 1
    max_body_bytes: int = Limits.max_body_bytes
    max_pixels: int = Limits.max_pixels
    max_side: int = Limits.max_side
    max_boxes: int = Limits.max_boxes

    def validate(self, where: str = "serve") -> None:
        from cdkd_ray.core.errors import ConfigError

        if not self.model_uri:
            raise ConfigError(f"{where}.model_uri is required (a student export folder or s3:// URI)")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"{where}: need 1 <= min_replicas <= max_replicas")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_pixels, self.max_side, self.max_boxes)


@serve.deployment(name="PoseModel")
class PoseModel:
    """Runs the student on person crops batched across concurrent requests."""

    def __init__(self, model_uri: str, max_batch_size: int, batch_wait_timeout_s: float, torch_threads: int = 1):
        import torch

        from cdkd_ray.core.serving.runtime import StudentRuntime

        torch.set_num_threads(torch_threads)
        self.runtime = StudentRuntime(model_uri)
        self.version = str(self.runtime.card.get("version", "1"))
        self.forward.set_max_batch_size(max_batch_size)
        self.forward.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches = {"count": 0, "max_items": 0, "max_requests": 0}

    def reconfigure(self, user_config: dict) -> None:
        """Roll out a new model version in place (`user_config: {model_uri, version}`)."""
        from cdkd_ray.core.serving.runtime import StudentRuntime

        uri = user_config.get("model_uri")
        if uri and uri != self.runtime.model_uri:
            self.runtime = StudentRuntime(uri)  # swapped atomically: in-flight batches keep the old one
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

    async def predict(self, request_id: str, image_bgr: np.ndarray, boxes: np.ndarray, flip_test: bool) -> dict:
        runtime = self.runtime
        crops, center, scale = runtime.crops(image_bgr, boxes)
        heatmaps = await asyncio.gather(*[self.forward((request_id, crop, flip_test)) for crop in crops])
        persons = runtime.keypoints(np.stack(heatmaps), center, scale, boxes)
        return {"model": {"name": runtime.name, "version": self.version}, "persons": persons}

    def model_card(self) -> dict:
        return {**self.runtime.card, "served_version": self.version, "model_uri": self.runtime.model_uri}

    def stats(self) -> dict:
        return dict(self.batches)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "status": status})


api = FastAPI(title="cdkd-ray pose estimation", version="1",
              description="Top-down human pose (COCO keypoints) from a CDKD-distilled student.")


@api.exception_handler(BadRequest)
async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
    return _error(exc.status, exc.message)


@serve.deployment(name="PoseAPI")
@serve.ingress(api)
class PoseAPI:
    """HTTP ingress: validates and decodes, then asks PoseModel; never lets bad input through."""

    def __init__(self, model, limits: dict):
        self.model = model
        self.limits = Limits(**limits)

    async def _read(self, request: Request) -> tuple[bytes, object, object]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body_bytes + 1024 * 1024:
            raise BadRequest(f"body of {declared} bytes exceeds the limit of {self.limits.max_body_bytes}", status=413)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise BadRequest("multipart body needs a file field 'image'")
            data = await upload.read()
            return data, form.get("boxes"), form.get("flip_test")
        if ctype in IMAGE_TYPES:
            data = await request.body()
            return data, request.query_params.get("boxes"), request.query_params.get("flip_test")
        raise BadRequest(f"unsupported content type '{ctype or 'none'}': send image/jpeg, image/png, or "
                         "multipart/form-data with an 'image' file", status=415)

    async def _predict(self, request: Request) -> tuple[np.ndarray, dict]:
        data, raw_boxes, raw_flip = await self._read(request)
        width, height = check_image_bytes(data, self.limits)  # header only: refuse bombs before decoding
        image, problem = decode_checked(data)  # the one decode
        if problem:
            raise BadRequest(f"image {problem}")
        boxes = parse_boxes(raw_boxes, image.shape[1], image.shape[0], self.limits)
        flip = parse_flag(raw_flip)
        request_id = uuid.uuid4().hex
        for attempt in range(4):  # a replica that died mid-request is replaced; retry on another
            try:
                result = await self.model.predict.remote(request_id, image, boxes, flip)
                break
            except Exception as exc:  # noqa: BLE001 - only actor deaths are retried
                if "ActorDied" not in type(exc).__name__ and "ActorUnavailable" not in type(exc).__name__ \
                        and "RayActorError" not in type(exc).__name__ or attempt == 3:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        result["image"] = {"width": width, "height": height}
        return image, result

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "time": time.time()}

    @api.get("/v1/model")
    async def model_card(self) -> dict:
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


def build_app(cfg: ServeConfig):
    """The bound Serve application for a ServeConfig."""
    model = PoseModel.options(
        autoscaling_config={"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                            "initial_replicas": cfg.min_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests,
                            "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s},
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus},
        user_config={"model_uri": cfg.model_uri, "version": cfg.version},
    ).bind(cfg.model_uri, cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.torch_threads)
    limits = asdict(cfg.limits)
    return PoseAPI.options(max_ongoing_requests=max(64, cfg.max_ongoing_requests * cfg.max_replicas),
                           ray_actor_options={"num_cpus": 0.5}).bind(model, limits)


def app_builder(args: dict):
    """Entry point for `serve run/build cdkd_ray.ray_adapters.serve.app:app_builder model_uri=...`."""
    from cdkd_ray.core.config import from_dict

    return build_app(from_dict(ServeConfig, dict(args), "serve"))


__all__ = ["ServeConfig", "build_app", "app_builder"]
