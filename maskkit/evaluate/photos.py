"""`maskkit predict PHOTO...`: every face in any photo, cropped as in training, classified; boxes with
"mask / gender / age" and confidence drawn into an output image, and JSON for scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import labels as L
from ..catalog.engine import Catalog
from ..files import atomic_path
from ..images import read_rgb
from .predict import RunModel, decide, load_model, resolve

MASK_WORDS = ("mask", "incorrect mask", "no mask")


def _crop_params(catalog: Catalog, run):
    """How the run's images were cut (None: it trained on whole photos, and sees whole photos here)."""
    from ..faces.preprocess import view_crop_params

    return view_crop_params(catalog, run.view_id)


def _each_model(models: list[RunModel], crops: list[np.ndarray], tta: str | None) -> list[np.ndarray]:
    """Every model's probabilities of the crops; one feature pass per extractor (the fold models of a k-fold
    ensemble share theirs), not one per model."""
    shared: dict[str, np.ndarray] = {}
    out = []
    for m in models:
        features = None
        if m.extractor is not None:
            if m.extractor.identity not in shared:
                shared[m.extractor.identity] = m.image_features(crops)
            features = shared[m.extractor.identity]
        out.append(m.probs_images(crops, tta, features))
    return out


def output_names(paths: list[Path]) -> dict[Path, str]:
    """One annotated-copy name per distinct photo: FOLDER_STEM_pred.jpg, with more of the path (then a short
    hash of it) where two photos would share a name (a/img/x.jpg and b/img/x.jpg)."""
    import hashlib

    distinct = list(dict.fromkeys(p.resolve() for p in paths))

    def name(p: Path, depth: int) -> str:
        parts = [*p.parent.parts[-depth:], p.stem] if depth else [p.stem]
        return "_".join(part.strip("/") or "root" for part in parts) + "_pred.jpg"

    out: dict[Path, str] = {}
    for p in distinct:
        for depth in range(1, len(p.parts)):
            candidate = name(p, depth)
            if sum(1 for q in distinct if name(q, depth) == candidate) == 1:
                break
        else:
            candidate = name(p, 1).replace("_pred.jpg", f"_{hashlib.sha1(str(p).encode()).hexdigest()[:8]}_pred.jpg")
        out[p] = candidate
    return out


def predict_photos(catalog: Catalog, name: str, photos: list[str], out_dir: Path | None = None,
                   device: str = "cpu", min_face_px: float = 24.0) -> list[dict]:
    from PIL import Image, ImageDraw

    from ..faces.crop import crop_region, cut
    from ..faces.detect import Face, FaceDetector

    source = resolve(catalog, name)
    models = [load_model(run, device) for run in source.runs]
    params = _crop_params(catalog, source.runs[0])
    detector = FaceDetector(device=device, min_face_px=min_face_px)
    results = []
    names = output_names([Path(p) for p in photos])
    if out_dir is not None:
        from ..files import output_dir

        out_dir = output_dir(out_dir, "--out folder")
    for photo in photos:
        path = Path(photo)
        rgb = read_rgb(path)
        entry = {"photo": str(path), "faces": []}
        if params is None:
            faces = [Face((0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0])), 1.0, [])]
            crops = [rgb]
        else:
            faces = [f for f in detector.detect(rgb[None])[0] if f.prob >= params.min_confidence]
            crops = [cut(rgb, crop_region(f.box, rgb.shape[1], rgb.shape[0], params), params.width, params.height)
                     for f in faces]
        if crops:
            probs = decide(source, _each_model(models, crops, source.tta))
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
            out = Path(out_dir) / names[path.resolve()]
            with atomic_path(out, "annotated copy") as tmp:
                img.save(tmp, "JPEG", quality=92)
            entry["output"] = str(out)
        results.append(entry)
    return results
