"""Frames on the wire: a content hash, lossless PNG as base64 text (what a VLM server receives),
and a segment's frames tiled into one image."""

from __future__ import annotations

import base64
import hashlib

import numpy as np


def frame_hash(image: np.ndarray) -> str:
    image = np.ascontiguousarray(image)
    return hashlib.sha256(f"{image.shape}{image.dtype}".encode() + image.tobytes()).hexdigest()[:32]


def encode_png(image: np.ndarray) -> str:
    """An RGB uint8 frame as base64 PNG (lossless: the server sees exactly the stored pixels)."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise ValueError("could not encode the frame as PNG")
    return base64.b64encode(data.tobytes()).decode()


def decode_png(text: str) -> np.ndarray:
    import cv2

    data = np.frombuffer(base64.b64decode(text), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not an encoded image")
    return image[..., ::-1].copy()


def tile(frames: np.ndarray) -> np.ndarray:
    """A segment's frames side by side, one image for the VLM."""
    return frames[0] if len(frames) == 1 else np.concatenate(list(frames), axis=1)
