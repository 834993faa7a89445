"""`maskkit predict PHOTO...`: every face in any photo, cropped as in training, classified; boxes with
"mask / gender / age" and confidence drawn into an output image, and JSON for scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import labels as L
from ..catalog.engine import Catalog
from ..errors import MaskkitError
from .predict import RunModel, combine, resolve, run_variant

MASK_WORDS = ("mask", "incorrect mask", "no mask")


def _crop_params(catalog: Catalog, run):
    from ..faces.crop import CropParams
    from ..faces.preprocess import get_variant, variant_params

    variant = run_variant(catalog, run)
    if variant != "original":
        crop, _ = variant_params(get_variant(catalog, variant))
        if crop is not None:
            return crop
    return CropParams()


def predict_photos(catalog: Catalog, name: str, photos: list[str], out_dir: Path | None = None,
                   device: str = "cpu", min_face_px: float = 24.0) -> list[dict]:
    from PIL import Image, ImageDraw

    from ..faces.crop import crop_region, cut
    from ..faces.detect import FaceDetector

    source = resolve(catalog, name)
    models = [RunModel(run, device) for run in source.runs]
    params = _crop_params(catalog, source.runs[0])
    detector = FaceDetector(device=device, min_face_px=min_face_px)
    results = []
    for photo in photos:
        path = Path(photo)
        try:
            rgb = np.asarray(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as exc:
            raise MaskkitError(f"{path}: cannot read image ({exc})") from None
        faces = [f for f in detector.detect(rgb[None])[0] if f.prob >= 0.7]
        entry = {"photo": str(path), "faces": []}
        crops = []
        for f in faces:
            region = crop_region(f.box, rgb.shape[1], rgb.shape[0], params)
            crops.append(cut(rgb, region, params.width, params.height))
        if crops:
            probs_each = []
            for m in models:
                batch = torch.stack([torch.from_numpy(np.array(Image.fromarray(c).resize((m.size, m.size))))
                                     .permute(2, 0, 1) for c in crops])
                probs_each.append(m.probs(batch, source.tta))
            probs = combine(probs_each, source.weights, source.vote)
            for f, p in zip(faces, probs):
                c = int(p.argmax())
                mask, gender, band = L.decode(c)
                entry["faces"].append({"box": [round(v, 1) for v in f.box], "face_confidence": round(f.prob, 4),
                                       "class": c, "confidence": round(float(p[c]), 4), "mask": L.MASK_STATES[mask],
                                       "gender": L.GENDERS[gender], "age_band": L.AGE_BAND_RANGES[band]})
        if out_dir is not None:
            img = Image.fromarray(rgb.copy())
            draw = ImageDraw.Draw(img)
            for face in entry["faces"]:
                colour = ((40, 200, 60), (240, 180, 20), (230, 50, 50))[L.MASK_STATES.index(face["mask"])]
                draw.rectangle(face["box"], outline=colour, width=max(2, rgb.shape[1] // 200))
                text = f"{MASK_WORDS[L.MASK_STATES.index(face['mask'])]} / {face['gender']} / {face['age_band']} " \
                       f"{face['confidence']:.0%}"
                draw.text((face["box"][0], max(0, face["box"][1] - 12)), text, fill=colour)
            out = Path(out_dir) / f"{path.parent.name}_{path.stem}_pred.jpg"  # photos of two folders may share a name
            out.parent.mkdir(parents=True, exist_ok=True)
            img.save(out, quality=92)
            entry["output"] = str(out)
        results.append(entry)
    return results
