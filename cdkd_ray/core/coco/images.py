"""Decoding and checking encoded images (JPEG/PNG bytes): one decode, one notion of "complete".

EXIF orientation: training data is decoded as stored, ignoring the EXIF orientation tag, because COCO
annotations (and the COCO tools) use the stored pixel frame; the header check and the decoder agree on
that frame. Serving may apply the orientation (a photo as the user sees it) with `apply_orientation`.
"""

from __future__ import annotations

import cv2
import numpy as np

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_SOS, JPEG_EOI = b"\xff\xda", b"\xff\xd9"


def image_format(data: bytes) -> str | None:
    if data[:2] == JPEG_MAGIC:
        return "jpeg"
    if data[:8] == PNG_MAGIC:
        return "png"
    return None


def jpeg_is_complete(data: bytes) -> bool:
    """An end-of-image marker follows the last start-of-scan (fill bytes or trailing data after it are fine).

    Entropy-coded data stuffs every 0xFF with 0x00, so FF D9 after the last scan can only be the marker;
    an EXIF thumbnail's own EOI sits before the main image's scans.

    Searched from the end: the last EOI, then no scan after it and one before it. Read from the front, a
    baseline JPEG's one scan sits at the start and the whole file would be scanned twice per image.
    """
    last_end = data.rfind(JPEG_EOI)
    return last_end >= 0 and data.find(JPEG_SOS, last_end) < 0 and data.find(JPEG_SOS, 0, last_end) >= 0


def decode_checked(data: bytes, apply_orientation: bool = False) -> tuple[np.ndarray | None, str | None]:
    """(BGR uint8 image, None) or (None, why not): empty, not JPEG/PNG, truncated JPEG, undecodable."""
    if not data:
        return None, "empty file"
    fmt = image_format(data)
    if fmt is None:
        return None, "not a JPEG or PNG image"
    if fmt == "jpeg" and not jpeg_is_complete(data):
        return None, "truncated JPEG (no end-of-image marker after the last scan)"
    flags = cv2.IMREAD_COLOR if apply_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        return None, f"cannot be decoded as {fmt.upper()}"
    return image, None


def decode_bgr(data: bytes) -> np.ndarray | None:
    """Decode image bytes, as stored (EXIF orientation ignored), to BGR uint8 (None when incomplete or undecodable)."""
    return decode_checked(data)[0]


def image_problem(data: bytes, width: int | None = None, height: int | None = None) -> str | None:
    """Why these bytes are not a complete, decodable image of the given size (None if fine)."""
    image, problem = decode_checked(data)
    if problem:
        return problem
    h, w = image.shape[:2]
    if width is not None and height is not None and (w, h) != (width, height):
        return f"size {w}x{h} differs from the annotation's {width}x{height}"
    return None
