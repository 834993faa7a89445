"""Face crop geometry: choosing the main face and cutting a fixed-aspect, fixed-size crop around it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .detect import Face

SELECTIONS = ("largest", "central", "confident")


@dataclass(frozen=True)
class CropParams:
    margin: float = 0.3  # added on every side, as a fraction of the face box
    width: int = 240
    height: int = 320
    min_face_px: float = 80.0  # smaller faces are not looked for (see faces/detect.py)
    select: str = "largest"  # largest / central / confident
    min_confidence: float = 0.7  # O-Net's own threshold: masked faces often score 0.7-0.9 and are real
    fallback_height: float = 0.7  # centre crop when no face: this fraction of the image height ...
    fallback_center_y: float = 0.45  # ... centred this far down the image

    def validate(self) -> "CropParams":
        from ..errors import InvalidInput

        if self.select not in SELECTIONS:
            raise InvalidInput(f"unknown face selection {self.select!r} (choose {', '.join(SELECTIONS)})")
        if not 0 <= self.margin <= 2:
            raise InvalidInput(f"margin {self.margin} must be within 0..2")
        if self.width < 16 or self.height < 16 or self.width > 4096 or self.height > 4096:
            raise InvalidInput(f"crop size {self.width}x{self.height} must be within 16..4096 pixels")
        if self.min_face_px < 12:
            raise InvalidInput("min face size must be at least 12 pixels")
        return self


def main_face(faces: list[Face], image_w: int, image_h: int, params: CropParams) -> Face | None:
    """The face the photo is about: among confident faces, the largest (default), the one nearest
    the centre, or the most confident."""
    candidates = [f for f in faces if f.prob >= params.min_confidence]
    if not candidates:
        return None
    if params.select == "largest":
        return max(candidates, key=lambda f: f.area)
    if params.select == "confident":
        return max(candidates, key=lambda f: f.prob)
    cx, cy = image_w / 2, image_h / 2
    return min(candidates, key=lambda f: math.hypot((f.box[0] + f.box[2]) / 2 - cx, (f.box[1] + f.box[3]) / 2 - cy))


def crop_region(box, image_w: int, image_h: int, params: CropParams) -> tuple[float, float, float, float]:
    """The region (x1, y1, x2, y2) around a face box: margin added, widened to the output aspect, and
    moved inside the image where it fits (otherwise it is padded)."""
    x1, y1, x2, y2 = box
    w, h = (x2 - x1) * (1 + 2 * params.margin), (y2 - y1) * (1 + 2 * params.margin)
    aspect = params.width / params.height
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = cx - w / 2, cy - h / 2
    if w <= image_w:
        left = min(max(left, 0), image_w - w)
    if h <= image_h:
        top = min(max(top, 0), image_h - h)
    return left, top, left + w, top + h


def fallback_region(image_w: int, image_h: int, params: CropParams) -> tuple[float, float, float, float]:
    h = image_h * params.fallback_height
    w = h * params.width / params.height
    if w > image_w:
        w, h = image_w, image_w * params.height / params.width
    cx, cy = image_w / 2, image_h * params.fallback_center_y
    top = min(max(cy - h / 2, 0), image_h - h)
    return cx - w / 2, top, cx + w / 2, top + h


def face_crop(image: np.ndarray, faces: list[Face], params: CropParams) -> tuple[np.ndarray, Face | None]:
    """The crop training sees: around the main face, else the centre-crop fallback."""
    h, w = image.shape[:2]
    face = main_face(faces, w, h, params)
    region = crop_region(face.box, w, h, params) if face else fallback_region(w, h, params)
    return cut(image, region, params.width, params.height), face


def cut(image: np.ndarray, region, width: int, height: int) -> np.ndarray:
    """The region of an RGB image resized to width x height; parts outside the image repeat its edge."""
    import cv2

    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in region)
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    pad = max(0, -x1, -y1, x2 - w, y2 - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x1, y1, x2, y2 = x1 + pad, y1 + pad, x2 + pad, y2 + pad
    patch = image[y1:y2, x1:x2]
    shrink = patch.shape[1] > width and patch.shape[0] > height
    return cv2.resize(patch, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
