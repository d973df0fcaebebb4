"""Validating HTTP inputs before any heavy work: sizes, formats, pixel counts, boxes."""

from __future__ import annotations

import hashlib
import hmac
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


MAX_JPEG_SEGMENTS = 256  # real JPEGs have a few dozen before the frame header; more is an attack or junk
MAX_COORDINATE = 1e7  # pixels: larger box values are refused before any float conversion can overflow
BOX_CHARS = 200  # JSON characters allowed per box (the boxes parameter is refused beyond max_boxes x this)


def _jpeg_frame_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first frame header, skipping fill bytes; at most MAX_JPEG_SEGMENTS markers."""
    i, segments = 2, 0
    while i + 1 < len(data):
        if data[i] != 0xFF:
            raise BadRequest("JPEG header is corrupt")
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes before a marker are allowed
            i += 1
        if i + 1 >= len(data):
            break
        marker = data[i + 1]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise BadRequest(f"JPEG header has more than {MAX_JPEG_SEGMENTS} segments before its frame header")
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if i + 9 > len(data):
            break
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise BadRequest("JPEG has no frame header (truncated?)")


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG SOF or PNG IHDR header, without decoding pixels."""
    fmt = image_format(data)
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadRequest("PNG header is truncated or invalid")
        return struct.unpack(">II", data[16:24])
    if fmt == "jpeg":
        return _jpeg_frame_size(data)
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


def _box_number(value, where: str) -> float:
    """A finite number within +-MAX_COORDINATE (huge integers are refused before converting them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{where} must be a number")
    if isinstance(value, int) and abs(value) > MAX_COORDINATE:
        raise BadRequest(f"{where} is out of range")
    if not math.isfinite(value):
        raise BadRequest(f"{where} is not finite")
    if abs(value) > MAX_COORDINATE:
        raise BadRequest(f"{where} is out of range")
    return float(value)


def _load_boxes(raw: str | list, limits: Limits) -> list:
    if not isinstance(raw, str):
        return raw
    if len(raw) > limits.max_boxes * BOX_CHARS:
        raise BadRequest(f"boxes parameter of {len(raw)} characters exceeds {limits.max_boxes * BOX_CHARS}", status=413)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError, over-long integers, absurd nesting
        raise BadRequest("boxes must be JSON: [[x, y, w, h, score], ...]") from None


def parse_boxes(raw: str | list | None, width: int, height: int, limits: Limits) -> np.ndarray:
    """[[x, y, w, h(, score)], ...] -> [M,5] clipped to the image; default: the whole image.

    Coordinates must be finite and within +-1e7; a score must lie in [0, 1].
    """
    if raw is None or raw == "":
        return np.array([[0, 0, width, height, 1.0]], np.float32)
    raw = _load_boxes(raw, limits)
    if not isinstance(raw, list) or not raw:
        raise BadRequest("boxes must be a non-empty list of [x, y, w, h] or [x, y, w, h, score]")
    if len(raw) > limits.max_boxes:
        raise BadRequest(f"{len(raw)} boxes exceed the limit of {limits.max_boxes}", status=413)
    out = []
    for i, box in enumerate(raw):
        if not isinstance(box, list) or len(box) not in (4, 5):
            raise BadRequest(f"box {i} must be [x, y, w, h] or [x, y, w, h, score] numbers")
        x, y, w, h = (_box_number(v, f"box {i}") for v in box[:4])
        score = _box_number(box[4], f"box {i} score") if len(box) == 5 else 1.0
        if not 0.0 <= score <= 1.0:
            raise BadRequest(f"box {i} score must lie in [0, 1]")
        if w <= 0 or h <= 0:
            raise BadRequest(f"box {i} must have positive width and height")
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(width), x + w), min(float(height), y + h)
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise BadRequest(f"box {i} lies outside the {width}x{height} image")
        out.append([x0, y0, x1 - x0, y1 - y0, score])
    return np.asarray(out, np.float32)


def bearer_ok(authorization: str | None, token_sha256: str) -> bool:
    """Whether an `Authorization: Bearer <token>` header carries the token whose SHA-256 is `token_sha256`."""
    if not token_sha256:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(hashlib.sha256(token.strip().encode()).hexdigest(), token_sha256)


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
