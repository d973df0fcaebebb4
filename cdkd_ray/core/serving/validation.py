"""Validating HTTP inputs before any heavy work: sizes, formats, pixel counts, boxes."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from cdkd_ray.core.coco.images import image_format


class BadRequest(Exception):
    """A client error: becomes a 4xx with a JSON body that says what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16384
    max_boxes: int = 64


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG SOF or PNG IHDR header, without decoding pixels."""
    fmt = image_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadRequest("PNG header is truncated or invalid")
        return struct.unpack(">II", data[16:24])
    if fmt == "jpeg":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                raise BadRequest("JPEG header is corrupt")
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5:i + 9])
                return width, height
            i += 2 + length
        raise BadRequest("JPEG has no frame header (truncated?)")
    raise BadRequest("body is not a JPEG or PNG image", status=415)


def check_image_bytes(data: bytes, limits: Limits) -> tuple[int, int]:
    if not data:
        raise BadRequest("empty image")
    if len(data) > limits.max_body_bytes:
        raise BadRequest(f"image of {len(data)} bytes exceeds the limit of {limits.max_body_bytes}", status=413)
    width, height = header_size(data)
    if width <= 0 or height <= 0:
        raise BadRequest(f"image declares an invalid size {width}x{height}")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise BadRequest(f"image of {width}x{height} pixels exceeds the limit of {limits.max_pixels} pixels "
                         f"or {limits.max_side} per side", status=413)
    return width, height


def parse_boxes(raw: str | list | None, width: int, height: int, limits: Limits) -> np.ndarray:
    """[[x, y, w, h(, score)], ...] -> [M,5] clipped to the image; default: the whole image."""
    if raw is None or raw == "":
        return np.array([[0, 0, width, height, 1.0]], np.float32)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise BadRequest("boxes must be JSON: [[x, y, w, h, score], ...]") from None
    if not isinstance(raw, list) or not raw:
        raise BadRequest("boxes must be a non-empty list of [x, y, w, h] or [x, y, w, h, score]")
    if len(raw) > limits.max_boxes:
        raise BadRequest(f"{len(raw)} boxes exceed the limit of {limits.max_boxes}", status=413)
    out = []
    for i, box in enumerate(raw):
        if not isinstance(box, list) or len(box) not in (4, 5) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise BadRequest(f"box {i} must be [x, y, w, h] or [x, y, w, h, score] numbers")
        if not all(math.isfinite(v) for v in box):
            raise BadRequest(f"box {i} has a non-finite value")
        x, y, w, h = box[:4]
        score = box[4] if len(box) == 5 else 1.0
        if w <= 0 or h <= 0:
            raise BadRequest(f"box {i} must have positive width and height")
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(width), x + w), min(float(height), y + h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise BadRequest(f"box {i} lies outside the {width}x{height} image")
        out.append([x0, y0, x1 - x0, y1 - y0, score])
    return np.asarray(out, np.float32)


def parse_flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return False
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"flip_test must be true or false, got '{value}'")
