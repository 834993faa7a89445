"""A small drawn-faces dataset in the competition layout, made from nothing.

Used by `maskkit demo` and by the tests. Faces are drawn with PIL: hair length and colour follow
gender and age band, masks cover mouth and nose (mask1..5, in five styles), slide under the nose
(incorrect_mask) or are absent (normal). With `messy=True` it also holds what real data holds:
an AppleDouble `._*` file, a `.png` and a `.jpeg` person, one id used by two folders, an id with a
suffix, a folder name that disagrees with its csv row, and a truncated JPEG.
"""

from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from . import labels

MASK_COLOURS = [(90, 150, 220), (235, 235, 240), (40, 40, 45), (200, 90, 120), (110, 170, 110)]
SKIN_TONES = [(241, 204, 170), (224, 172, 130), (198, 134, 94), (141, 85, 54), (255, 220, 190)]


@dataclass
class SyntheticPerson:
    person_id: str
    gender: str
    race: str
    age: int
    folder: str


def _draw_face(person_seed: int, gender: str, age: int, kind: str, size: tuple[int, int]):
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(person_seed)
    w, h = size
    background = tuple(rng.randint(60, 200) for _ in range(3))
    img = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(img)
    skin = rng.choice(SKIN_TONES)
    band = labels.age_band(age)
    hair = [(30, 20, 10), (90, 60, 30), (160, 120, 60)][rng.randint(0, 2)] if band < 2 else (200, 200, 200)
    if band == 1 and rng.random() < 0.5:
        hair = (120, 110, 100)
    cx, cy = w // 2, int(h * 0.45)
    fw, fh = int(w * 0.30), int(h * 0.27)
    # shoulders / clothes
    draw.ellipse([cx - int(w * 0.45), int(h * 0.80), cx + int(w * 0.45), int(h * 1.3)],
                 fill=tuple(rng.randint(0, 255) for _ in range(3)))
    # hair behind (long for female)
    if gender == "female":
        draw.ellipse([cx - fw - 14, cy - fh - 16, cx + fw + 14, cy + int(fh * 1.5)], fill=hair)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    draw.chord([cx - fw - 4, cy - fh - 10, cx + fw + 4, cy + fh // 3], 180, 360, fill=hair)
    eye_y = cy - fh // 6
    for dx in (-fw // 2, fw // 2):
        draw.ellipse([cx + dx - 7, eye_y - 4, cx + dx + 7, eye_y + 4], fill=(255, 255, 255))
        draw.ellipse([cx + dx - 3, eye_y - 3, cx + dx + 3, eye_y + 3], fill=(40, 30, 20))
    if band == 2:  # wrinkles
        for dy in (10, 16):
            draw.arc([cx - fw // 2, cy - fh + dy, cx + fw // 2, cy - fh + dy + 20], 200, 340, fill=(120, 90, 70))
    nose_y = cy + fh // 6
    draw.line([cx, eye_y + 6, cx - 5, nose_y, cx + 4, nose_y], fill=(150, 100, 80), width=2)
    mouth_y = cy + fh // 2
    draw.arc([cx - 16, mouth_y - 8, cx + 16, mouth_y + 8], 20, 160, fill=(150, 40, 40), width=3)
    if kind.startswith("mask") or kind == "incorrect_mask":
        style = int(kind[-1]) - 1 if kind.startswith("mask") else rng.randint(0, 4)
        colour = MASK_COLOURS[(style + person_seed) % len(MASK_COLOURS)]
        top = nose_y - 14 if kind != "incorrect_mask" else mouth_y - 4  # incorrect: under the nose
        draw.rounded_rectangle([cx - fw + 4, top, cx + fw - 4, cy + fh + 6], radius=14, fill=colour)
        for k in range(1, 3):
            y = top + k * (cy + fh + 6 - top) // 3
            draw.line([cx - fw + 10, y, cx + fw - 10, y], fill=tuple(max(0, c - 40) for c in colour), width=2)
        draw.line([cx - fw + 4, top + 6, cx - fw - 8, eye_y], fill=colour, width=3)
        draw.line([cx + fw - 4, top + 6, cx + fw + 8, eye_y], fill=colour, width=3)
    return img.filter(ImageFilter.GaussianBlur(0.6))


class PhotoFaces:
    """People made from one real photograph (scikit-image's astronaut), each framed, flipped, lit and
    tinted differently, with masks put on by maskkit's own mask machinery (so MTCNN finds the faces and
    the rest of the pipeline, generation included, runs on them)."""

    def __init__(self):
        try:
            from skimage import data
        except ImportError as exc:
            from .errors import MaskkitError

            raise MaskkitError(f"photo faces need scikit-image ({exc})") from None
        from .faces.detect import FaceDetector
        from .faces.masks import builtin_templates

        self.base = data.astronaut()
        self.detector = FaceDetector(min_face_px=40)
        self.templates = builtin_templates()

    def person_images(self, seed: int, size: tuple[int, int]) -> dict:
        import numpy as np
        from PIL import Image

        from .faces.masks import put_mask

        rng = random.Random(seed)
        w, h = size
        shift = rng.randint(0, 128)
        img = Image.fromarray(self.base).crop((shift, 0, shift + 384, 512)).resize((w, h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.asarray(img).astype(np.float32)
        tint = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], np.float32) * rng.uniform(0.75, 1.15)
        arr = np.clip(arr * tint, 0, 255).astype(np.uint8)
        from .faces.crop import CropParams

        faces = [f for f in self.detector.detect(arr[None])[0] if f.prob >= CropParams().min_confidence]
        out = {"normal": arr}
        if not faces:
            return out
        face = max(faces, key=lambda f: f.area)
        styles = rng.sample(self.templates, 6)
        for i in range(1, 6):
            out[f"mask{i}"] = put_mask(arr, face.box, face.landmarks, styles[i - 1], "wear")
        out["incorrect_mask"] = put_mask(arr, face.box, face.landmarks, styles[5], rng.choice(("under_nose", "chin")))
        return out


def make_people(count: int, seed: int, start_id: int = 1) -> list[SyntheticPerson]:
    rng = random.Random(seed)
    people = []
    for i in range(count):
        gender = "female" if rng.random() < 0.6 else "male"
        band = i % 3
        age = rng.randint(*labels.BAND_TYPICAL_AGES[band])
        pid = f"{start_id + i * 7:06d}"
        people.append(SyntheticPerson(pid, gender, "Asian", age, f"{pid}_{gender}_Asian_{age}"))
    return people


def make_dataset(out_dir, *, people: int = 24, eval_people: int = 6, seed: int = 0, size=(384, 512),
                 messy: bool = True, faces: str = "drawn") -> dict:
    """Write TRAIN (train.csv + images/) and EVAL (info.csv + answers.csv + images/) under out_dir.
    faces='drawn': faces drawn with PIL (fast, no face detector finds them); 'photo': see PhotoFaces."""
    from PIL import Image as PILImage

    photo = PhotoFaces() if faces == "photo" else None

    def person_images(person_seed: int, gender: str, age: int) -> dict:
        if photo is not None:
            arrays = photo.person_images(person_seed, size)
            if len(arrays) == len(labels.IMAGE_KINDS):
                return {k: PILImage.fromarray(v) for k, v in arrays.items()}
        return {kind: _draw_face(person_seed, gender, age, kind, size) for kind in labels.IMAGE_KINDS}

    out = Path(out_dir)
    train, evaldir = out / "train", out / "eval"
    (train / "images").mkdir(parents=True, exist_ok=True)
    (evaldir / "images").mkdir(parents=True, exist_ok=True)
    persons = make_people(people, seed)
    rows = []
    for n, p in enumerate(persons):
        folder = p.folder
        csv_gender = p.gender
        exts = {k: ".jpg" for k in labels.IMAGE_KINDS}
        if messy and n == 1:
            exts = {k: ".png" for k in labels.IMAGE_KINDS}
        if messy and n == 2:
            exts["normal"] = ".jpeg"
        if messy and n == 3 and people > 4:  # the same id as person 4, another folder
            p.person_id = persons[4].person_id
            folder = p.folder = f"{p.person_id}_{p.gender}_{p.race}_{p.age}"
        if messy and n == 5:
            p.person_id = f"{p.person_id}-1"
            folder = p.folder = f"{p.person_id}_{p.gender}_{p.race}_{p.age}"
        if messy and n == 6:  # folder name says the other gender than the csv row
            csv_gender = "male" if p.gender == "female" else "female"
        pdir = train / "images" / folder
        pdir.mkdir(parents=True, exist_ok=True)
        for kind, img in person_images(seed * 10_000 + n, p.gender, p.age).items():
            img.save(pdir / f"{kind}{exts[kind]}", quality=90)
        rows.append([p.person_id, csv_gender, p.race, p.age, folder])
        if messy and n == 0:
            (pdir / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
        if messy and n == 7:  # a truncated JPEG, as real data has
            damaged = pdir / "mask4.jpg"
            data = damaged.read_bytes()
            damaged.write_bytes(data[: len(data) // 3])
    with open(train / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["id", "gender", "race", "age", "path"])
        writer.writerows(rows)

    eval_rows = []
    for n, p in enumerate(make_people(eval_people, seed + 1, start_id=500_001)):
        for kind, img in person_images(seed * 10_000 + 5_000 + n, p.gender, p.age).items():
            name = hashlib.sha1(f"{seed}-{p.person_id}-{kind}".encode()).hexdigest() + ".jpg"
            img.save(evaldir / "images" / name, quality=90)
            eval_rows.append((name, labels.class_of(kind, p.gender, p.age)))
    random.Random(seed).shuffle(eval_rows)
    for fname, with_answers in (("info.csv", False), ("answers.csv", True)):
        with open(evaldir / fname, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ImageID", "ans"])
            writer.writerows((name, ans if with_answers else 0) for name, ans in eval_rows)
    return {"train": train, "eval": evaldir, "people": len(persons), "eval_images": len(eval_rows)}
