"""Reading pose requests off the wire without trusting them: bounded bodies, one decode off the event loop."""

from __future__ import annotations

import asyncio

import numpy as np

from cdkd_ray.core.coco.images import decode_checked
from cdkd_ray.core.serving.validation import BadRequest, Limits, check_image_bytes

IMAGE_TYPES = ("image/jpeg", "image/png", "application/octet-stream")
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and fields around the image


class ServiceUnavailable(BadRequest):
    """Overloaded or too slow: 503 with Retry-After, the client should try again."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, status=503)
        self.retry_after_s = retry_after_s


async def read_body(request, limit: int) -> bytes:
    """The body, read as it streams in and abandoned at `limit` bytes (413), with or without Content-Length."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes exceeds the limit of {limit}", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image_request(request, limits: Limits) -> tuple[bytes, object, object]:
    """(image bytes, boxes, flip_test) from a raw image body or a multipart form with an 'image' file."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        request._body = await read_body(request, limits.max_body_bytes + MULTIPART_OVERHEAD)  # form() parses it
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise BadRequest("multipart body needs a file field 'image'")
        return await upload.read(), form.get("boxes"), form.get("flip_test")
    if ctype in IMAGE_TYPES:
        data = await read_body(request, limits.max_body_bytes)
        return data, request.query_params.get("boxes"), request.query_params.get("flip_test")
    raise BadRequest(f"unsupported content type '{ctype or 'none'}': send image/jpeg, image/png, or "
                     "multipart/form-data with an 'image' file", status=415)


async def decode_request_image(data: bytes, limits: Limits, slots: asyncio.Semaphore) -> np.ndarray:
    """Header checks (bombs refused before any pixel), then the one decode, in a worker thread.

    Serving applies the EXIF orientation: keypoints come back in the frame the photo is shown in.
    `slots` bounds how many decodes run at once, so a flood cannot take every core from the event loop.
    """
    check_image_bytes(data, limits)
    async with slots:
        image, problem = await asyncio.to_thread(decode_checked, data, True)
    if problem:
        raise BadRequest(f"image {problem}")
    h, w = image.shape[:2]
    if w * h > limits.max_pixels:  # an EXIF rotation cannot grow the pixel count, but stay safe
        raise BadRequest(f"image of {w}x{h} pixels exceeds the limit of {limits.max_pixels}", status=413)
    return image
