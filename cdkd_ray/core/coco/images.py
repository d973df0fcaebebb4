"""Decoding and checking encoded images (JPEG/PNG bytes)."""

from __future__ import annotations

import cv2
import numpy as np

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_format(data: bytes) -> str | None:
    if data[:2] == JPEG_MAGIC:
        return "jpeg"
    if data[:8] == PNG_MAGIC:
        return "png"
    return None


def image_problem(data: bytes, width: int | None = None, height: int | None = None) -> str | None:
    """Why these bytes are not a complete, decodable image of the given size (None if fine)."""
    if not data:
        return "empty file"
    fmt = image_format(data)
    if fmt is None:
        return "not a JPEG or PNG image"
    if fmt == "jpeg" and data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return "truncated JPEG (no end-of-image marker)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return f"cannot be decoded as {fmt.upper()}"
    h, w = image.shape[:2]
    if width is not None and height is not None and (w, h) != (width, height):
        return f"size {w}x{h} differs from the annotation's {width}x{height}"
    return None


def decode_bgr(data: bytes) -> np.ndarray | None:
    """Decode image bytes to a BGR uint8 array (None when undecodable)."""
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
