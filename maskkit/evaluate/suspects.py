"""Label suspects: people whose labels disagree most with out-of-sample predictions.

From out-of-fold probabilities (k-fold `train --fold all`, or one run's validation probabilities),
cleanlab's label-quality scores are computed per field: gender and age band on each person's images
(their probabilities marginalised to the field), and the mask state of each image. Per person: gender
and age scores are averaged over the person's images; the mask score is the mean of the two worst
images (a swapped incorrect_mask/normal pair makes two bad images). All three are the model's
probability for the label as given (self-confidence), so they compare across fields; a person's score
is their lowest field. Low = suspect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select

from .. import labels as L
from ..catalog.engine import Catalog
from ..catalog.models import Image, Profile, Run
from ..errors import MaskkitError


def load_probabilities(catalog: Catalog, ref: str) -> dict:
    """An OOF .npz file, or a run's val_probs.npz (by run name)."""
    path = Path(ref)
    if not path.is_file():
        with catalog.session() as session:
            run = session.execute(select(Run).where(Run.name == ref)).scalars().first()
        if run is None:
            raise MaskkitError(f"{ref!r} is neither a probabilities file (.npz) nor a run")
        path = Path(run.folder) / "val_probs.npz"
        if not path.is_file():
            raise MaskkitError(f"run {ref} has no validation probabilities yet")
    data = np.load(path)
    for key in ("probs", "labels", "image_ids", "profile_ids"):
        if key not in data:
            raise MaskkitError(f"{path}: not a maskkit probabilities file (no {key!r})")
    if data["probs"].ndim != 2 or data["probs"].shape[1] != L.NUM_CLASSES:
        raise MaskkitError(f"{path}: probabilities have {data['probs'].shape[-1]} classes, expected 18")
    return {k: data[k] for k in ("probs", "image_ids", "profile_ids")}


def _marginal(probs: np.ndarray, field: str) -> np.ndarray:
    p = probs.reshape(-1, 3, 2, 3)
    return {"mask": p.sum((2, 3)), "gender": p.sum((1, 3)), "age": p.sum((1, 2))}[field]


def rank_suspects(catalog: Catalog, ref: str, top: int | None = None) -> list[dict]:
    from cleanlab.rank import get_label_quality_scores

    data = load_probabilities(catalog, ref)
    probs, image_ids = data["probs"], data["image_ids"]
    with catalog.session() as session:
        current = {i: (m, pid, k) for i, m, pid, k in session.execute(
            select(Image.id, Image.mask, Image.profile_id, Image.kind).where(Image.id.in_(image_ids.tolist())))}
        people = {pid: (person, folder, gender, age) for pid, person, folder, gender, age in session.execute(
            select(Profile.id, Profile.person_id, Profile.folder, Profile.gender, Profile.age))}
    keep = [n for n, i in enumerate(image_ids) if int(i) in current]
    if not keep:
        raise MaskkitError("none of these probabilities belong to images in this catalog")
    probs, image_ids = probs[keep], image_ids[keep]
    pids = np.array([current[int(i)][1] for i in image_ids])
    # labels as they are now (relabels since training count)
    y_mask = np.array([current[int(i)][0] for i in image_ids])
    y_gender = np.array([L.gender_index(people[p][2]) for p in pids])
    y_age = np.array([L.age_band(people[p][3]) for p in pids])
    scores = {}
    for field, y in (("mask", y_mask), ("gender", y_gender), ("age", y_age)):
        marginal = _marginal(probs, field)
        marginal = marginal / marginal.sum(1, keepdims=True)
        scores[field] = get_label_quality_scores(y, marginal, method="self_confidence")
    rows = []
    for pid in np.unique(pids):
        sel = pids == pid
        gender_score = float(scores["gender"][sel].mean())
        age_score = float(scores["age"][sel].mean())
        mask_scores = np.where(sel, scores["mask"], np.inf)
        worst_two = np.argsort(mask_scores)[: min(2, int(sel.sum()))]
        worst_image = int(worst_two[0])
        mask_score = float(mask_scores[worst_two].mean())
        person, folder, gender, age = people[int(pid)]
        pm = probs[sel].reshape(-1, 3, 2, 3)
        rows.append({
            "profile_id": int(pid), "person": person, "folder": folder, "gender": gender, "age": age,
            "gender_score": gender_score, "age_score": age_score, "mask_score": mask_score,
            "mask_image": current[int(image_ids[worst_image])][2],
            "predicted_gender": L.GENDERS[int(pm.sum((1, 3)).mean(0).argmax())],
            "predicted_band": L.AGE_BANDS[int(pm.sum((1, 2)).mean(0).argmax())],
            "images": int(sel.sum()),
        })
    fields = {"gender": "gender_score", "age band": "age_score", "mask": "mask_score"}
    for r in rows:
        field = min(fields, key=lambda f: r[fields[f]])
        r["field"], r["score"] = field, r[fields[field]]
    rows.sort(key=lambda r: r["score"])
    return rows[:top] if top else rows
