"""Synthetic masks: mask templates (drawn by maskkit, or MaskTheFace's format) warped onto a face.

A template is an RGBA image with six anchors, in MaskTheFace's order:
  a left edge at nose level, b nose bridge, c right edge at nose level,
  d left jaw at lip level,  e chin,        f right jaw at lip level.
The same six points are placed on a face from MTCNN's box and 5 landmarks (`six_points`); a homography
maps the template onto them and the mask's brightness follows the face's (`overlay`). Masks worn
incorrectly slide down: under the nose, or onto the chin (`placement`).
"""

from __future__ import annotations

import configparser
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput, NotFound

PLACEMENTS = ("wear", "under_nose", "chin")
TEMPLATE_W, TEMPLATE_H = 600, 480


@dataclass
class MaskTemplate:
    name: str
    rgba: np.ndarray  # H x W x 4 uint8
    anchors: np.ndarray  # 6 x 2 float32, order a..f
    family: str  # surgical / kn95 / cloth / external


# ---------------------------------------------------------------- templates drawn by maskkit

_ANCHORS = np.float32([[0.03, 0.22], [0.50, 0.03], [0.97, 0.22], [0.06, 0.74], [0.50, 0.98], [0.94, 0.74]]) * \
    np.float32([TEMPLATE_W, TEMPLATE_H])

SURGICAL_COLOURS = {"blue": (128, 178, 222), "white": (236, 238, 240), "green": (132, 196, 170),
                    "pink": (235, 170, 190), "black": (45, 45, 50)}
CLOTH_COLOURS = {"navy": (40, 52, 92), "grey": (120, 122, 128), "red": (170, 40, 50), "beige": (214, 196, 160),
                 "black": (30, 30, 32), "olive": (104, 110, 60)}
CLOTH_PATTERNS = ("plain", "dots", "stripes", "checks")


def _outline(kind: str) -> list[tuple[float, float]]:
    a, b, c, d, e, f = (tuple(p) for p in _ANCHORS)
    if kind == "kn95":  # pointed at the nose and the chin
        return [a, b, c, (TEMPLATE_W * 0.99, TEMPLATE_H * 0.48), f, e, d, (TEMPLATE_W * 0.01, TEMPLATE_H * 0.48)]
    # surgical / cloth: a rounded hexagon
    return [a, (TEMPLATE_W * 0.25, TEMPLATE_H * 0.08), b, (TEMPLATE_W * 0.75, TEMPLATE_H * 0.08), c,
            (TEMPLATE_W * 0.99, TEMPLATE_H * 0.48), f, (TEMPLATE_W * 0.75, TEMPLATE_H * 0.93), e,
            (TEMPLATE_W * 0.25, TEMPLATE_H * 0.93), d, (TEMPLATE_W * 0.01, TEMPLATE_H * 0.48)]


def _draw(kind: str, colour: tuple[int, int, int], pattern: str = "plain", seed: int = 0) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed)
    fabric = Image.new("RGB", (TEMPLATE_W, TEMPLATE_H), colour)
    draw = ImageDraw.Draw(fabric)
    darker = tuple(max(0, int(v * 0.78)) for v in colour)
    lighter = tuple(min(255, int(v * 1.15 + 20)) for v in colour)
    if kind == "surgical":  # three pleats and a nose wire
        for y in (0.36, 0.52, 0.68):
            yy = int(TEMPLATE_H * y)
            draw.line([(20, yy), (TEMPLATE_W - 20, yy)], fill=darker, width=7)
            draw.line([(20, yy + 7), (TEMPLATE_W - 20, yy + 7)], fill=lighter, width=3)
        draw.line([(int(TEMPLATE_W * 0.3), int(TEMPLATE_H * 0.12)), (int(TEMPLATE_W * 0.7), int(TEMPLATE_H * 0.12))],
                  fill=darker, width=5)
    elif kind == "kn95":  # centre seam and edge weld
        draw.line([(TEMPLATE_W // 2, 10), (TEMPLATE_W // 2, TEMPLATE_H - 10)], fill=darker, width=6)
    elif pattern == "dots":
        accent = tuple(255 - v for v in colour)
        for _ in range(160):
            x, y, r = rng.randint(0, TEMPLATE_W), rng.randint(0, TEMPLATE_H), rng.randint(6, 14)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif pattern == "stripes":
        accent = tuple(min(255, v + 90) for v in colour)
        for x in range(-TEMPLATE_H, TEMPLATE_W, 44):
            draw.line([(x, 0), (x + TEMPLATE_H, TEMPLATE_H)], fill=accent, width=14)
    elif pattern == "checks":
        accent = tuple(min(255, v + 70) for v in colour)
        for x in range(0, TEMPLATE_W, 60):
            draw.rectangle([x, 0, x + 24, TEMPLATE_H], fill=accent)
        for y in range(0, TEMPLATE_H, 60):
            draw.rectangle([0, y, TEMPLATE_W, y + 24], fill=accent)
    # soft shading: a little darker towards the edges, like cloth curving round a face
    yy, xx = np.mgrid[0:TEMPLATE_H, 0:TEMPLATE_W]
    shade = 1.0 - 0.25 * (((xx - TEMPLATE_W / 2) / (TEMPLATE_W / 2)) ** 2)
    rgb = np.clip(np.asarray(fabric, np.float32) * shade[..., None], 0, 255).astype(np.uint8)
    alpha = Image.new("L", (TEMPLATE_W, TEMPLATE_H), 0)
    ImageDraw.Draw(alpha).polygon(_outline(kind), fill=255)
    alpha = alpha.filter(ImageFilter.GaussianBlur(2))
    return np.dstack([rgb, np.asarray(alpha)])


def builtin_templates() -> list[MaskTemplate]:
    """maskkit's own mask styles: surgical in five colours, KN95 in two, cloth in colours x patterns."""
    out = [MaskTemplate(f"surgical_{name}", _draw("surgical", rgb), _ANCHORS.copy(), "surgical")
           for name, rgb in SURGICAL_COLOURS.items()]
    out += [MaskTemplate(f"kn95_{name}", _draw("kn95", rgb), _ANCHORS.copy(), "kn95")
            for name, rgb in (("white", (240, 240, 236)), ("black", (40, 40, 44)))]
    for i, (cname, rgb) in enumerate(CLOTH_COLOURS.items()):
        for pattern in CLOTH_PATTERNS:
            out.append(MaskTemplate(f"cloth_{cname}_{pattern}", _draw("cloth", rgb, pattern, seed=i),
                                    _ANCHORS.copy(), "cloth"))
    return out


def load_masktheface_templates(directory) -> list[MaskTemplate]:
    """Templates in MaskTheFace's format: a *.cfg with sections holding `template: PATH` (relative to the
    cfg's folder or its parent) and six anchors `mask_a` .. `mask_f` as `x, y`."""
    from PIL import Image

    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"template folder {directory} does not exist")
    cfgs = sorted(directory.glob("*.cfg"))
    if not cfgs:
        raise InvalidInput(f"{directory}: no *.cfg file (MaskTheFace format: [name] template: ... mask_a: x, y ...)")
    out = []
    for cfg_path in cfgs:
        parser = configparser.ConfigParser()
        parser.read(cfg_path)
        for section in parser.sections():
            item = parser[section]
            try:
                rel = item["template"].strip()
                anchors = np.float32([[float(v) for v in item[f"mask_{k}"].split(",")] for k in "abcdef"])
            except (KeyError, ValueError) as exc:
                raise InvalidInput(f"{cfg_path}: section [{section}]: needs template and mask_a..mask_f "
                                   f"as 'x, y' ({exc})") from None
            candidates = [cfg_path.parent / rel, cfg_path.parent.parent / rel, directory / Path(rel).name,
                          directory / "templates" / Path(rel).name]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise NotFound(f"{cfg_path}: section [{section}]: template file {rel} not found")
            out.append(MaskTemplate(section, np.asarray(Image.open(path).convert("RGBA")), anchors, "external"))
    return out


# ---------------------------------------------------------------- placing a mask on a face


def six_points(box, landmarks) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Six anchor points on the face (order a..f), the face's 'down' unit vector, the eye-to-mouth
    distance and the nose-to-mouth distance along it."""
    le, re, nose, ml, mr = (np.asarray(p, np.float64) for p in landmarks)
    right = (re - le) / max(np.linalg.norm(re - le), 1e-6)
    down = np.array([-right[1], right[0]])
    eyes, mouth = (le + re) / 2, (ml + mr) / 2
    eye_mouth = max(float(np.dot(mouth - eyes, down)), 8.0)
    x1, _, x2, _ = box
    half_left = max(float(nose[0] - x1), 0.3 * (x2 - x1)) * 0.97
    half_right = max(float(x2 - nose[0]), 0.3 * (x2 - x1)) * 0.97
    bridge = eyes + 0.45 * (nose - eyes)
    a = nose - half_left * right + 0.05 * eye_mouth * down
    c = nose + half_right * right + 0.05 * eye_mouth * down
    lip = mouth + 0.12 * eye_mouth * down
    d, f = lip - 0.86 * half_left * right, lip + 0.86 * half_right * right
    chin = mouth + 0.72 * eye_mouth * down
    return (np.float32([a, bridge, c, d, chin, f]), down.astype(np.float32), eye_mouth,
            float(np.dot(mouth - nose, down)))


def placement_points(box, landmarks, placement: str) -> np.ndarray:
    """The six destination points for a mask worn properly ('wear') or slid down ('under_nose', 'chin')."""
    if placement not in PLACEMENTS:
        raise InvalidInput(f"unknown placement {placement!r} (placements: {', '.join(PLACEMENTS)})")
    points, down, eye_mouth, nose_mouth = six_points(box, landmarks)
    if placement == "under_nose":
        return points + np.float32(0.85 * max(nose_mouth, 4.0) * down)
    if placement == "chin":
        return points + np.float32(0.62 * eye_mouth * down)
    return points


def face_light(image: np.ndarray, box) -> float:
    """Brightness factor for a mask on this face: darker faces (shade, night) darken the mask too."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(max(0, v)) for v in box)
    region = image[min(y1, h - 1):max(y2, y1 + 1), min(x1, w - 1):max(x2, x1 + 1)]
    return float(np.clip(0.6 + 0.4 * region.mean() / 130.0, 0.55, 1.08)) if region.size else 1.0


def overlay(image: np.ndarray, template: MaskTemplate, dst: np.ndarray, light: float) -> np.ndarray:
    """Warp the template onto the six destination points and blend it in, lit like the face."""
    import cv2

    matrix, _ = cv2.findHomography(template.anchors, dst)
    if matrix is None:
        raise ValueError("degenerate face geometry")
    warped = cv2.warpPerspective(template.rgba, matrix, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                                 borderValue=(0, 0, 0, 0))
    alpha = warped[..., 3:4].astype(np.float32) / 255.0
    out = image.astype(np.float32) * (1 - alpha) + warped[..., :3].astype(np.float32) * light * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def put_mask(image: np.ndarray, box, landmarks, template: MaskTemplate, placement: str = "wear") -> np.ndarray:
    return overlay(image, template, placement_points(box, landmarks, placement), face_light(image, box))
