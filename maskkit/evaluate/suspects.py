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

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from .. import labels as L
from ..catalog.engine import Catalog
from ..catalog.models import Image, Profile, Run
from ..errors import InvalidInput, MaskkitError, NotFound


def probabilities_file(catalog: Catalog, ref: str) -> Path:
    """Where `ref`'s out-of-sample probabilities are: `latest` (the newest ensemble or finished run), an
    ensemble (the out-of-fold probabilities `train --folds` tuned it on), a run (its val_probs.npz), or a
    probabilities file (.npz)."""
    from ..catalog.models import Ensemble
    from ..errors import NotFound

    if ref == "latest":
        from .experiments import latest_source

        ref = latest_source(catalog)
    with catalog.session() as session:
        ens = session.execute(select(Ensemble).where(Ensemble.name == ref)).scalars().first()
        run = session.execute(select(Run).where(Run.name == ref)).scalars().first()
    if ens is not None:
        tuned_on = (ens.decision or {}).get("tuned_on")
        if not tuned_on:
            raise NotFound(f"ensemble {ref!r} has no out-of-fold probabilities (only `train --folds` ensembles and "
                           "blends do): give one of its k-fold ensembles or a run", what="probabilities")
        if not Path(tuned_on).is_file():
            raise NotFound(f"ensemble {ref!r}: its out-of-fold probabilities {tuned_on} are gone", what="file")
        return Path(tuned_on)
    if run is not None:
        path = Path(run.folder) / "val_probs.npz"
        if not path.is_file():
            raise NotFound(f"run {ref} has no validation probabilities yet", what="probabilities")
        return path
    path = Path(ref)
    if path.is_file():
        return path
    raise NotFound(f"{ref!r} is neither a run, an ensemble, 'latest' nor a probabilities file (.npz)", what="run")


def load_probabilities(catalog: Catalog, ref: str) -> dict:
    """Probabilities of `ref` (see probabilities_file), checked to be this catalog's: every image id must
    belong here to the person the file says (another catalog's file would map onto other people)."""
    path = probabilities_file(catalog, ref)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: not a maskkit probabilities file (.npz): {str(exc).splitlines()[0]}") from None
    if not hasattr(data, "files"):
        raise InvalidInput(f"{path}: not a maskkit probabilities file (.npz)")
    for key in ("probs", "labels", "image_ids", "profile_ids"):
        if key not in data:
            raise InvalidInput(f"{path}: not a maskkit probabilities file (no {key!r})")
    if data["probs"].ndim != 2 or data["probs"].shape[1] != L.NUM_CLASSES:
        raise InvalidInput(f"{path}: probabilities have {data['probs'].shape[-1]} classes, expected {L.NUM_CLASSES}")
    out = {k: data[k] for k in ("probs", "image_ids", "profile_ids")}
    if "probs_raw" in data:  # people-pooled out-of-fold files: each photo's own predictions (the ranking pools by person
        out["probs"] = data["probs_raw"]  # itself; pooled ones carry one photo's view, assigned masks near-certainty)
    with catalog.session() as session:
        owner = dict(session.execute(select(Image.id, Image.profile_id).where(
            Image.id.in_(out["image_ids"].tolist()))).all())
    wrong = sum(1 for i, p in zip(out["image_ids"].tolist(), out["profile_ids"].tolist())
                if i in owner and owner[i] != p)
    if wrong:
        from ..errors import Conflict

        raise Conflict(f"{path}: {wrong} of {len(out['image_ids'])} images belong to other people in this catalog: "
                       "these probabilities were made on another catalog")
    return out


def _marginal(probs: np.ndarray, field: str) -> np.ndarray:
    return dict(zip(("mask", "gender", "age"), L.marginals(probs)))[field]


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
        raise InvalidInput("none of these probabilities belong to images in this catalog")
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
        _, pg, pb = L.marginals(probs[sel])
        rows.append({
            "profile_id": int(pid), "person": person, "folder": folder, "gender": gender, "age": age,
            "gender_score": gender_score, "age_score": age_score, "mask_score": mask_score,
            "mask_image": current[int(image_ids[worst_image])][2],
            "predicted_gender": L.GENDERS[int(pg.mean(0).argmax())],
            "predicted_band": L.AGE_BANDS[int(pb.mean(0).argmax())],
            "images": int(sel.sum()),
        })
    fields = {"gender": "gender_score", "age band": "age_score", "mask": "mask_score"}
    for r in rows:
        field = min(fields, key=lambda f: r[fields[f]])
        r["field"], r["score"] = field, r[fields[field]]
    rows.sort(key=lambda r: r["score"])
    return rows[:top] if top else rows


PRIOR = "prior"  # the name that asks for zero-shot suspects from the face networks instead of a run's probabilities
FACES = "faces"  # the source of those rows: the face networks and the copied-photo check, no probabilities
EVIDENCE_ROWS = ("combined", FACES)  # rows of evidence.combine: log-evidence scores, an evidence text per field


def _unmasked_photos(catalog: Catalog, profile_ids: list[int]) -> tuple[dict[int, str], dict[int, str], float]:
    """Each person's unmasked photo (normal): ({profile id: its catalogued face crop}, {profile id: the photo
    itself, for people whose crop is not there}, the crop margin). Crops count where a face-crop variant with
    the prior's margin (CropParams) has one."""
    from ..catalog.models import DERIVED_USABLE, DataRoot, Derived, Variant
    from ..faces.crop import CropParams

    margin = CropParams().margin
    with catalog.session() as session:
        images = session.execute(
            select(Image.id, Image.profile_id, DataRoot.path, Image.path).join(Profile, Profile.id == Image.profile_id)
            .join(DataRoot, DataRoot.id == Profile.root_id)
            .where(Image.kind == "normal", Image.damaged.is_(False), Image.profile_id.in_(profile_ids))).all()
        variant = session.execute(select(Variant).where(Variant.kind == "crop").order_by(Variant.id)).scalars().first()
        crops = {}
        if variant is not None and CropParams(**variant.params["crop"]).margin == margin:
            vroot = session.get(DataRoot, variant.root_id).path
            crops = {i: Path(vroot) / p for i, p in session.execute(
                select(Derived.image_id, Derived.path).where(
                    Derived.variant_id == variant.id, Derived.status.in_(DERIVED_USABLE),
                    Derived.image_id.in_([r[0] for r in images]))).all()}
    cropped, photos = {}, {}
    for image_id, pid, root, rel in images:
        if image_id in crops and crops[image_id].is_file():
            cropped[pid] = str(crops[image_id])
        else:
            photos[pid] = str(Path(root) / rel)
    return cropped, photos, margin


def _crop_now(paths: dict[int, str], margin: float, progress=None) -> dict[int, np.ndarray]:
    """Photos without a catalogued crop, cut now around the face MTCNN finds (the whole photo's centre when none)."""
    if not paths:
        return {}
    from ..faces.crop import CropParams, face_crop
    from ..faces.detect import FaceDetector
    from ..train.data import load_rgb

    params = CropParams(margin=margin)
    detector = FaceDetector(min_face_px=params.min_face_px)
    out = {}
    for n, (pid, path) in enumerate(paths.items()):
        rgb = load_rgb(path)
        out[pid], _ = face_crop(rgb, detector.detect(rgb[None])[0], params)
        if progress:
            progress("cutting faces", n + 1, len(paths))
    return out


class CutFaces:
    """A face network's features of photos that have no catalogued crop, for train.features.FeatureCache: each
    photo cut now around its face (UnmaskedFaces.cut, once for every network that reads it), kept per photo file
    under its own identity (the network's and the cut's parameters), so the next ranking neither detects nor runs
    a network on it."""

    def __init__(self, extractor, faces: "UnmaskedFaces"):
        import hashlib
        import json

        from ..faces.crop import CropParams

        self.extractor, self.faces = extractor, faces
        cut = json.dumps(dataclasses.asdict(CropParams(margin=faces.margin)), sort_keys=True, default=str)
        self.identity = f"{extractor.identity}-cut-{hashlib.sha1(cut.encode()).hexdigest()[:10]}"

    def parallel(self, images: int, prior_workers: bool = True):
        from contextlib import nullcontext

        return nullcontext()  # a ranking's few hundred photos: one process

    def extract(self, paths: list[str], progress=None) -> np.ndarray:
        if hasattr(self.extractor, "prepare"):  # a network that cannot run (no weights) says so before any cutting
            self.extractor.prepare()
        by_path = {path: pid for pid, path in self.faces.photos.items()}
        cut = self.faces.cut([by_path[p] for p in paths], progress)
        return self.extractor.extract_images([cut[by_path[p]] for p in paths])


DEFAULT_CACHE = Path("runs") / "cache"  # the face networks' features before any run: train's default cache folder


def _cache_folder(catalog: Catalog) -> Path | None:
    """The feature cache folder of the catalog's newest run (None before any run)."""
    with catalog.session() as session:
        run = session.execute(select(Run).order_by(Run.id.desc())).scalars().first()
    if run is None or not Path(run.folder).parent.is_dir():
        return None
    return Path((run.config.get("data") or {}).get("cache_dir") or Path(run.folder).parent / "cache")


def _people(catalog: Catalog, original_only: bool = False) -> dict[int, tuple]:
    query = select(Profile.id, Profile.person_id, Profile.folder, Profile.gender, Profile.age)
    if original_only:
        query = query.where(Profile.origin == "original")
    with catalog.session() as session:
        return {pid: (person, folder, gender, age) for pid, person, folder, gender, age in session.execute(query)}


@dataclass
class UnmaskedFaces:
    """Each person's unmasked photo as the face networks read it: catalogued face crops (files) and, for people
    without one, the photo itself, cut now around its face once, whichever networks read it."""

    cropped: dict[int, str]
    photos: dict[int, str]
    margin: float
    _cut: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, catalog: Catalog, profile_ids: list[int]) -> "UnmaskedFaces":
        return cls(*_unmasked_photos(catalog, profile_ids))

    def cut(self, pids: list[int], progress=None) -> dict[int, np.ndarray]:
        """The photos of `pids` (people without a crop) cut around their faces; each is cut once."""
        todo = {p: self.photos[p] for p in pids if p not in self._cut}
        self._cut.update(_crop_now(todo, self.margin, progress))
        return {p: self._cut[p] for p in pids}


def _face_features(catalog: Catalog, faces: UnmaskedFaces, extractor, what: str, progress=None) -> dict[int, np.ndarray]:
    """profile id -> `extractor`'s features of the person's unmasked face, kept per file by the extractor's
    FeatureCache in the newest run's cache folder (training filled the prior's), or before any run in `runs/cache`
    (where `train` keeps it by default): catalogued crops by their file, photos without one cut now (CutFaces) by
    the photo's file. Only files the cache lacks run the network, so a second ranking runs none."""
    from ..train.features import FeatureCache

    folder = _cache_folder(catalog) or DEFAULT_CACHE
    out: dict[int, np.ndarray] = {}
    for files, reader in ((faces.cropped, extractor), (faces.photos, CutFaces(extractor, faces))):
        pids = list(files)
        if pids:
            step = (lambda _, n, total: progress(what, n, total)) if progress else None
            # best effort: where no cache can be kept (a read-only or full disk, a file named runs) the ranking
            # goes on with the features computed once and kept nowhere
            found = FeatureCache(folder, reader, best_effort=True).features([files[p] for p in pids], step)
            out.update(zip(pids, found))
    return out


def person_priors(catalog: Catalog, profile_ids: list[int], progress=None, faces: UnmaskedFaces | None = None) -> dict:
    """profile id -> the face prior's outputs (evidence.PersonPrior) on the person's unmasked photo; people
    without a readable one are left out. Catalogued crops are read through the prior's feature cache (no
    network runs for crops training already saw); photos without a crop are cut and run now."""
    from ..faces.prior import outputs_from_features
    from ..train.features import PriorExtractor
    from .evidence import PersonPrior

    faces = faces or UnmaskedFaces.of(catalog, profile_ids)
    found = _face_features(catalog, faces, PriorExtractor(faces.margin), "face prior", progress)
    if not found:
        return {}
    pids = list(found)
    o = outputs_from_features(np.stack([found[p] for p in pids]))
    return {pid: PersonPrior(gender=o.gender[n], age=float(o.age[n])) for n, pid in enumerate(pids)}


def prior_suspects(catalog: Catalog, top: int | None = None, progress=None) -> list[dict]:
    """Label suspects before any training: the face networks on each person's unmasked photo (the face prior and,
    when its weights are there, HSE-FaceRes) and the copied-photo check, as one ranking through
    evidence.combine without out-of-sample probabilities: gender (each network calibrated to the labels per age
    band), the labelled age against the networks' estimates, and mask files that copy another kind's photo. The
    networks know no masks otherwise. Rows are like the combined ranking's, with source "faces"."""
    from .evidence import combine

    people = _people(catalog, original_only=True)
    if not people:
        raise NotFound("the catalog has no people: maskkit ingest first")
    sources = _face_sources(catalog, sorted(people), progress)
    if not sources.priors:
        raise NotFound("no person has a readable normal (unmasked) photo for the face prior")
    rows = combine(people, {}, None, sources.priors, sources.copies, faceres=sources.faceres)
    for row in rows:
        row["source"], row["missing_evidence"] = FACES, sources.missing
    return rows[:top] if top else rows


@dataclass
class FaceSources:
    """What the ranking knows of people without (or beside) out-of-sample probabilities."""

    priors: dict  # profile id -> the face prior's PersonPrior
    copies: dict  # profile id -> copied mask files (copied_photos)
    faceres: dict  # profile id -> HSE-FaceRes's PersonPrior ({} without its weights)
    missing: str | None  # why HSE-FaceRes was left out, or None


def _face_sources(catalog: Catalog, pids: list[int], progress) -> FaceSources:
    """The face prior and HSE-FaceRes on each person's unmasked photo (cut once for both) and the copy check."""
    faces = UnmaskedFaces.of(catalog, pids)
    priors = person_priors(catalog, pids, progress, faces)
    copies = copied_photos(catalog, pids, progress)
    try:
        return FaceSources(priors, copies, person_faceres(catalog, pids, progress, faces), None)
    except MaskkitError as exc:  # no weights (offline): the ranking goes on with the other sources
        return FaceSources(priors, copies, {}, f"HSE-FaceRes left out: {exc}")


def combined_suspects(catalog: Catalog, ref: str, top: int | None = None, progress=None) -> list[dict]:
    """One ranking from the out-of-fold probabilities of `ref` and the face prior (maskkit/evaluate/evidence.py):
    gender and age per person, mask per image (swaps as one suspect). Scores are summed calibrated
    log-probabilities of the labels as given: lowest first."""
    from .evidence import combine

    data = load_probabilities(catalog, ref)
    people = _people(catalog)
    with catalog.session() as session:
        images = {i: (m, pid, k) for i, m, pid, k in session.execute(
            select(Image.id, Image.mask, Image.profile_id, Image.kind).where(
                Image.id.in_(data["image_ids"].tolist())))}
    if not images:
        raise InvalidInput("none of these probabilities belong to images in this catalog")
    ranked_people = sorted({pid for _m, pid, _k in images.values()})
    sources = _face_sources(catalog, ranked_people, progress)
    rows = combine({p: people[p] for p in ranked_people}, images, data, sources.priors, sources.copies,
                   faceres=sources.faceres)
    for row in rows:
        row["missing_evidence"] = sources.missing
    return rows[:top] if top else rows


def person_faceres(catalog: Catalog, profile_ids: list[int], progress=None, faces: UnmaskedFaces | None = None) -> dict:
    """profile id -> HSE-FaceRes's guesses (evidence.PersonPrior) on the person's unmasked photo, the face network
    beside the prior (maskkit/faces/faceres.py), kept per file in the newest run's cache folder like the prior's
    features, so only new photos run the network (~30 ms a photo on a core)."""
    from ..faces.faceres import FaceResExtractor
    from .evidence import PersonPrior

    faces = faces or UnmaskedFaces.of(catalog, profile_ids)
    found = _face_features(catalog, faces, FaceResExtractor(faces.margin), "HSE-FaceRes", progress)
    return {pid: PersonPrior(gender=np.array([f[0], 1.0 - f[0]], np.float64), age=float(f[1]))
            for pid, f in found.items()}


# mean absolute difference (0..255) of two 64 x 64 grey thumbnails below which two files are one photo re-saved:
# a JPEG re-save differs by ~0.1; a mask composited on the same photo by 1 or more (facebench: >= 1.05)
NEAR_COPY_DIFF = 0.5


def copied_photos(catalog: Catalog, profile_ids: list[int], progress=None) -> dict[int, list[tuple]]:
    """profile id -> [(image id, kind, kind it copies, exact)]: a person's incorrect_mask or normal file that is
    the same photo as one of their mask1..5 files: byte for byte (the catalog's sha1), or nearly (a re-saved
    copy: 64 x 64 grey thumbnails almost equal; masks composited on one photo differ far more, in the mask)."""
    from ..catalog.models import DataRoot
    from ..images import open_image

    with catalog.session() as session:
        rows = session.execute(
            select(Image.id, Image.profile_id, Image.kind, Image.sha1, DataRoot.path, Image.path)
            .join(Profile, Profile.id == Image.profile_id).join(DataRoot, DataRoot.id == Profile.root_id)
            .where(Image.profile_id.in_(profile_ids), Image.damaged.is_(False))).all()
    by_person: dict[int, list] = {}
    for r in rows:
        by_person.setdefault(r[1], []).append(r)
    thumbs: dict[int, np.ndarray | None] = {}

    def thumb(r) -> np.ndarray | None:
        if r[0] not in thumbs:
            try:
                img = open_image(Path(r[4]) / r[5], draft=(128, 128))
                thumbs[r[0]] = np.asarray(img.convert("L").resize((64, 64)), dtype=np.float32)
            except MaskkitError:  # an unreadable file is simply no evidence here
                thumbs[r[0]] = None
        return thumbs[r[0]]

    out: dict[int, list[tuple]] = {}
    for n, (pid, items) in enumerate(by_person.items()):
        masks = [r for r in items if r[2].startswith("mask")]
        for r in items:
            if r[2] not in ("incorrect_mask", "normal"):
                continue
            same = next((m for m in masks if m[3] == r[3]), None)
            if same is not None:
                out.setdefault(pid, []).append((r[0], r[2], same[2], True))
                continue
            for m in masks:
                a, b = thumb(r), thumb(m)
                if a is not None and b is not None and float(np.abs(a - b).mean()) < NEAR_COPY_DIFF:
                    out.setdefault(pid, []).append((r[0], r[2], m[2], False))
                    break
        if progress and (n % 50 == 0 or n == len(by_person) - 1):
            progress("copied photos", n + 1, len(by_person))
    return out


EVIDENCE = ("combined", "model", "prior")


def default_source(catalog: Catalog) -> str:
    """What ranks suspects when nothing is named: the latest finished ensemble or run, else the face prior."""
    from .experiments import latest_source

    try:
        return latest_source(catalog)
    except NotFound:
        return PRIOR


FIELDS = ("gender", "age", "mask")


def suspects(catalog: Catalog, ref: str, top: int | None = None, progress=None, evidence: str = "combined",
             field: str | None = None, leave_out: Collection[int] = ()) -> list[dict]:
    """Label suspects. `ref` = "prior": the face networks and the copy check, before any training. Else `ref` names
    out-of-sample probabilities (run, ensemble, latest, .npz) and `evidence` says what ranks: combined (the
    default: the probabilities and the face networks as one ranking), model (the probabilities alone) or prior.
    `field` (gender, age, mask) ranks by that field's evidence alone: one reviewer per field, each list in its
    own order (a person's most suspect field decides the one ranking otherwise). `leave_out`: profile ids not
    listed (review.queue.settled_people: a ranking after retraining goes on to people nobody has looked at); the
    evidence is still weighed over everyone."""
    return suspect_views(catalog, ref, top, progress, evidence, field, leave_out).get(field or ALL_FIELDS, [])


ALL_FIELDS = "all"  # the name of the one ranking among suspect_views' lists


def suspect_views(catalog: Catalog, ref: str, top: int | None = None, progress=None, evidence: str = "combined",
                  field: str | None = None, leave_out: Collection[int] = ()) -> dict[str, list[dict]]:
    """The one ranking ("all") and each field's own list (gender, age; mask once there are out-of-sample
    probabilities, and only fields someone has evidence for), from one computation of the evidence: what a review
    page switches between. Each list keeps its first `top`, `leave_out` left out as in `suspects`. `field` is only
    checked (the view a caller starts on must be one of them)."""
    _check_field(ref, evidence, field)
    leave_out = set(leave_out)
    rows = [r for r in _ranked(catalog, ref, progress, evidence) if r["profile_id"] not in leave_out]
    views = {ALL_FIELDS: [dict(r) for r in (rows[:top] if top else rows)]}
    for name in (f for f in FIELDS if not (before_training(ref, evidence) and f == "mask")):
        ranked = by_field([dict(r) for r in rows], name, top)
        if ranked:
            views[name] = ranked
    for ranked in views.values():
        for row in ranked:
            row["hint"] = hint(row)
    return views


def before_training(ref: str, evidence: str) -> bool:
    """No out-of-sample probabilities rank: the face networks and the copy check (prior_suspects)."""
    return ref == PRIOR or evidence == "prior"


def _check_field(ref: str, evidence: str, field: str | None) -> None:
    if evidence not in EVIDENCE:
        raise InvalidInput(f"--evidence must be one of {', '.join(EVIDENCE)}, got {evidence!r}")
    if field is not None and field not in FIELDS:
        raise InvalidInput(f"--field must be one of {', '.join(FIELDS)}, got {field!r}")
    if field == "mask" and before_training(ref, evidence):
        raise InvalidInput("--field mask needs out-of-sample probabilities (maskkit train --folds K): the face "
                           "networks know no masks (before training, the one ranking lists copied files)")


def _ranked(catalog: Catalog, ref: str, progress, evidence: str) -> list[dict]:
    """Every person's row, most suspect first."""
    if before_training(ref, evidence):
        return prior_suspects(catalog, None, progress)
    if evidence == "model":
        return rank_suspects(catalog, ref)
    return combined_suspects(catalog, ref, None, progress)


def by_field(rows: list[dict], field: str, top: int | None = None) -> list[dict]:
    """`rows` (every person's, from one ranking) re-ranked by one field's evidence alone; people without that
    field's evidence are left out. Each row's score, field and evidence become that field's."""
    rows = [r for r in rows if r.get(f"{field}_score") is not None]
    for r in rows:
        r["score"] = r[f"{field}_score"]
        r["field"] = "age band" if field == "age" and r.get("source") not in EVIDENCE_ROWS else field  # own name
        if "evidence_by_field" in r:
            r["evidence"] = r["evidence_by_field"].get(field, r["evidence"])
    rows.sort(key=lambda r: r["score"])
    return rows[:top] if top else rows


def hint(row: dict) -> dict:
    """What a reviewer is shown beside a suspect's labels: who says what, and how sure."""
    says = f"{row['predicted_gender']}, {row['predicted_band']}"
    if row.get("predicted_age") is not None:
        says += f" (about {row['predicted_age']:.0f})"
    source = {"combined": "model + face prior", FACES: "face prior"}.get(row.get("source"), "model")
    weighed = row.get("source") in EVIDENCE_ROWS
    if weighed and any("faceres" in ev for ev in (row.get("sources") or {}).values()):
        source += " + HSE-FaceRes"
    out = {"source": source, "says": says, "field": row["field"], "label_probability": round(row["score"], 3)}
    if weighed:
        out["label_probability"] = round(math.exp(row["score"]), 3)
        out["evidence"] = row["evidence"]
        if row["field"] == "mask" and row.get("mask_image"):  # the files to look at (the page marks them)
            out["images"] = row["mask_image"]
    else:
        out.update(gender_probability=round(row["gender_score"], 3), age_band_probability=round(row["age_score"], 3))
    return out
