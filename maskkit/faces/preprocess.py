"""`maskkit preprocess`: face crops and background removal as catalogued, resumable image variants.

Work is done in batches; each batch's files are written under a temporary name and renamed, then its
`derived` rows are committed. An interrupted run (Ctrl-C, kill -9) therefore leaves whole files and
whole batches only, and a rerun picks up the images that have no row yet.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from sqlalchemy import func, insert, select

from ..catalog.engine import Catalog
from ..catalog.models import DERIVED_FOUND, DataRoot, Derived, EvalImage, Image, Profile, Variant, utcnow
from ..catalog.roots import work_root
from ..errors import Conflict, InvalidInput, MaskkitError, NotFound
from ..cpus import compute_threads, free_cores
from ..progress import Progress
from .background import BackgroundRemover, RembgParams
from .crop import CropParams, crop_region, cut, fallback_region, main_face

KINDS = ("crop", "rembg", "crop+rembg")
LENIENT_THRESHOLDS = (0.5, 0.6, 0.5)  # MTCNN P/R/O-Net thresholds of the second look (the first: 0.6, 0.7, 0.7)


@dataclass
class Target:
    """One source image to derive from."""

    image_id: int | None
    eval_image_id: int | None
    source: Path  # absolute path of the source image
    out_rel: str  # output path relative to the variant folder


@dataclass
class PreprocessReport:
    variant: str
    total: int = 0  # targets asked for
    already: int = 0  # done by an earlier run
    done: int = 0  # done now
    ok: int = 0
    relaxed: int = 0  # found only by the second, more lenient detection pass
    borrowed: int = 0  # no face found: the box of the same person's other photos (one sitting) was used
    inherited: int = 0  # synthetic images cut where the face of the photo they were made from was found
    fallback: int = 0
    failed: int = 0
    skipped_damaged: int = 0
    seconds: float = 0.0
    threads: int = 0  # compute threads used (the free cores when it started; maskkit/cpus.py)
    failures: list[str] = field(default_factory=list)


def _params_dict(kind: str, crop: CropParams | None, rembg: RembgParams | None) -> dict:
    params: dict = {"kind": kind}
    if "crop" in kind:
        params["crop"] = asdict(crop)
    if "rembg" in kind:
        params["rembg"] = {"model": rembg.model, "fill": list(rembg.fill)}
    return params


def ensure_variant(catalog: Catalog, kind: str, crop: CropParams | None = None, rembg: RembgParams | None = None,
                   name: str | None = None) -> Variant:
    """The variant for these parameters: the existing one, or a new version (crop, crop-v2, ...)."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown preprocess kind {kind!r} (kinds: {', '.join(KINDS)})")
    crop = (crop or CropParams()).validate() if "crop" in kind else None
    rembg = (rembg or RembgParams()).validate() if "rembg" in kind else None
    params = _params_dict(kind, crop, rembg)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()
    with catalog.session() as session:
        existing = session.execute(
            select(Variant).where(Variant.kind == kind, Variant.params_hash == digest)).scalars().first()
        if existing is not None:
            if name and existing.name != name:
                raise Conflict(f"these parameters are already variant {existing.name!r}; use that name")
            return existing
        if name:
            if session.execute(select(Variant.id).where(Variant.name == name)).first():
                raise Conflict(f"variant {name!r} exists with other parameters; choose another --name")
        else:
            taken = set(session.execute(select(Variant.name)).scalars())
            name, n = kind, 1
            while name in taken:
                n += 1
                name = f"{kind}-v{n}"
        root = work_root(catalog, session)
        variant = Variant(name=name, kind=kind, params=params, params_hash=digest, root_id=root.id,
                          folder=f"variants/{name.replace('+', '_')}", created_at=utcnow())
        session.add(variant)
        session.commit()
        return variant


def get_variant(catalog: Catalog, name: str) -> Variant:
    with catalog.session() as session:
        variant = session.execute(select(Variant).where(Variant.name == name)).scalars().first()
        if variant is None:
            names = ", ".join(session.execute(select(Variant.name).order_by(Variant.id)).scalars()) or "none yet"
            raise NotFound(f"unknown variant {name!r} (variants: {names})")
        return variant


def view_crop_params(catalog: Catalog, view_id: int | None) -> CropParams | None:
    """The crop parameters of the variant a view reads; None for whole photos (or a variant without a crop)."""
    from ..catalog.models import View

    with catalog.session() as session:
        view = session.get(View, view_id) if view_id is not None else None
        name = (view.spec or {}).get("variant", "original") if view else "original"
    if name == "original":
        return None
    return variant_params(get_variant(catalog, name))[0]


def variant_params(variant: Variant) -> tuple[CropParams | None, RembgParams | None]:
    crop = CropParams(**variant.params["crop"]) if "crop" in variant.params else None
    rembg = None
    if "rembg" in variant.params:
        rembg = RembgParams(model=variant.params["rembg"]["model"], fill=tuple(variant.params["rembg"]["fill"]))
    return crop, rembg


# ---------------------------------------------------------------- targets


def train_targets(catalog: Catalog, *, profiles: list[str] | None = None,
                  image_ids: Iterable[int] | None = None) -> tuple[list[Target], int]:
    """Train images (all, some people, or given image ids), minus damaged ones (counted)."""
    with catalog.session() as session:
        stmt = (select(Image.id, Image.path, Image.damaged, DataRoot.path, DataRoot.name)
                .join(Profile, Profile.id == Image.profile_id).join(DataRoot, DataRoot.id == Profile.root_id)
                .order_by(Image.id))
        if profiles:
            found = dict(session.execute(
                select(Profile.person_id, Profile.id).where(Profile.person_id.in_(profiles))).all())
            found.update(session.execute(select(Profile.folder, Profile.id).where(Profile.folder.in_(profiles))).all())
            missing = [p for p in profiles if p not in found]
            if missing:
                raise NotFound(f"unknown person(s): {', '.join(missing)}")
            stmt = stmt.where(Profile.id.in_(found.values()))
        if image_ids is not None:
            stmt = stmt.where(Image.id.in_(list(image_ids)))
        rows = session.execute(stmt).all()
    damaged = sum(1 for r in rows if r[2])
    targets = [Target(i, None, Path(root) / rel, f"{_slug(rname)}/{Path(rel).with_suffix('.jpg')}")
               for i, rel, dmg, root, rname in rows if not dmg]
    return targets, damaged


def eval_targets(catalog: Catalog) -> tuple[list[Target], int]:
    with catalog.session() as session:
        rows = session.execute(
            select(EvalImage.id, EvalImage.path, EvalImage.damaged, DataRoot.path, DataRoot.name)
            .join(DataRoot, DataRoot.id == EvalImage.root_id).order_by(EvalImage.root_id, EvalImage.position)
        ).all()
    if not rows:
        raise NotFound("the catalog has no eval images: maskkit ingest --eval EVAL_DIR first")
    damaged = sum(1 for r in rows if r[2])
    targets = [Target(None, i, Path(root) / rel, f"{_slug(rname)}/{Path(rel).with_suffix('.jpg')}")
               for i, rel, dmg, root, rname in rows if not dmg]
    return targets, damaged


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ---------------------------------------------------------------- running


def _read_rgb(path: Path) -> np.ndarray | None:
    """The source's pixels (maskkit.images.read_rgb), or None when it cannot be read (the crop records why)."""
    from ..images import read_rgb

    try:
        return read_rgb(path)
    except MaskkitError:
        return None


def _write_jpeg(path: Path, rgb: np.ndarray) -> None:
    import cv2

    from ..files import write_bytes

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise OSError(f"cannot encode {path}")
    write_bytes(path, buf.tobytes(), "derived image")


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Preprocessor:
    """Runs one variant over targets. Models are loaded once and reused for every image."""

    def __init__(self, catalog: Catalog, variant: Variant, *, device: str = "cpu", batch_size: int = 16,
                 workers: int = 2):
        self.catalog = catalog
        self.variant = variant
        self.crop, self.rembg_params = variant_params(variant)
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers)
        self.device = device
        self._detector = None
        self._lenient = None
        self._remover = None
        self.threads: int | None = None  # compute threads of the running pass (run() measures the free cores)
        with catalog.session() as session:
            self.root = Path(session.get(DataRoot, variant.root_id).path)

    @property
    def detector(self):
        if self._detector is None:
            from .detect import FaceDetector

            self._detector = FaceDetector(device=self.device, min_face_px=self.crop.min_face_px)
        return self._detector

    @property
    def lenient(self):
        """A second look at photos where no face passed: lower thresholds, smaller faces (masked faces
        often score just under the first pass's bar)."""
        if self._lenient is None:
            from .detect import FaceDetector

            self._lenient = FaceDetector(device=self.device, min_face_px=max(24.0, self.crop.min_face_px / 2),
                                         thresholds=LENIENT_THRESHOLDS)
        return self._lenient

    @property
    def remover(self) -> BackgroundRemover:
        if self._remover is None:
            self._remover = BackgroundRemover(self.rembg_params, device=self.device, threads=self.threads)
        return self._remover

    def pending(self, targets: list[Target]) -> list[Target]:
        """Targets without a derived row for this variant (or whose file went missing)."""
        with self.catalog.session() as session:
            rows = session.execute(
                select(Derived.id, Derived.image_id, Derived.eval_image_id, Derived.path, Derived.status)
                .where(Derived.variant_id == self.variant.id)).all()
        done_train = {r[1]: r for r in rows if r[1] is not None}
        done_eval = {r[2]: r for r in rows if r[2] is not None}
        out = []
        for t in targets:
            row = done_train.get(t.image_id) if t.image_id is not None else done_eval.get(t.eval_image_id)
            if row is None or (row[4] != "failed" and not (self.root / row[3]).is_file()):
                out.append(t)
        return out

    def run(self, targets: list[Target], *, damaged: int = 0, progress: Progress | None = None) -> PreprocessReport:
        import time

        report = PreprocessReport(self.variant.name, total=len(targets), skipped_damaged=damaged)
        todo = self.pending(targets)
        report.already = len(targets) - len(todo)
        self._inherit = self.parent_faces([t.image_id for t in todo if t.image_id is not None])
        # as many compute and decode threads as there are free cores: on a shared machine more threads than
        # cores make MTCNN's small tensor ops wait on each other (a busy CPU then costs 8x, not 2x)
        report.threads = self.threads = free_cores() if self.device == "cpu" else self.workers
        if todo:  # load the models before the clock starts
            if self.crop is not None:
                self.detector
            if self.rembg_params is not None:
                self.remover
        start = time.perf_counter()
        if progress:
            progress(self.variant.name, 0, len(todo))
        with compute_threads(report.threads) if self.device == "cpu" else nullcontext(), \
                ThreadPoolExecutor(min(self.workers, max(1, report.threads))) as pool:
            for batch, images in self._decoded(todo, pool):
                rows = self._process(batch, images, pool)
                self._commit(rows)
                for row in rows:
                    setattr(report, row["status"], getattr(report, row["status"]) + 1)
                    if row["status"] == "failed":
                        report.failures.append(f"{row['_source']}: {row['error']}")
                report.done += len(rows)
                if progress:
                    progress(self.variant.name, report.done, len(todo))
        if self.crop is not None:  # every fallback of these targets, also those of an interrupted earlier run
            borrowed_before = report.fallback
            report.borrowed = self.borrow_person_boxes([t.image_id for t in targets if t.image_id is not None])
            report.fallback = max(0, borrowed_before - report.borrowed)
        report.seconds = time.perf_counter() - start
        return report

    def _decoded(self, todo: list[Target], pool, ahead: int = 2):
        """(batch, images) with the next `ahead` batches decoding in the background (bounded memory)."""
        from collections import deque

        batches = iter(list(_batches(todo, self.batch_size)))
        queue: deque = deque()

        def submit():
            batch = next(batches, None)
            if batch is not None:
                queue.append((batch, [pool.submit(_read_rgb, t.source) for t in batch]))

        for _ in range(ahead + 1):
            submit()
        while queue:
            batch, futures = queue.popleft()
            submit()
            yield batch, [f.result() for f in futures]

    def _process(self, batch: list[Target], images: list[np.ndarray | None], pool) -> list[dict]:
        rows: list[dict | None] = [None] * len(batch)
        outputs: list[np.ndarray | None] = [None] * len(batch)
        faces_of: dict[int, list] = {}
        if self.crop is not None:  # detect on same-size groups, one batch each
            groups: dict[tuple, list[int]] = {}
            for i, img in enumerate(images):
                if img is not None and batch[i].image_id not in self._inherit:
                    groups.setdefault(img.shape, []).append(i)
            for idx in groups.values():
                for i, faces in zip(idx, self.detector.detect(np.stack([images[i] for i in idx]))):
                    faces_of[i] = faces
        for i, (target, img) in enumerate(zip(batch, images)):
            base = dict(variant_id=self.variant.id, image_id=target.image_id, eval_image_id=target.eval_image_id,
                        _source=str(target.source), box=None, landmarks=None, confidence=None, faces=0, error=None)
            if img is None:
                rows[i] = dict(base, path=None, status="failed", error="cannot decode image")
                continue
            status, out = "ok", img
            if self.rembg_params is not None:  # on the whole photo: the person's outline is clearest there
                img = out = self.remover.remove(img)
            known = self._inherit.get(target.image_id) if target.image_id is not None else None
            if self.crop is not None and known is not None:  # the face of the photo it was made from
                h, w = img.shape[:2]
                status = "inherited"
                base.update(box=known[0], landmarks=known[1], confidence=known[2], faces=1)
                out = cut(img, crop_region(known[0], w, h, self.crop), self.crop.width, self.crop.height)
            elif self.crop is not None:
                faces = faces_of.get(i, [])
                h, w = img.shape[:2]
                face = main_face(faces, w, h, self.crop)
                if face is None:  # a second, lenient look
                    faces = self.lenient.detect(img[None])[0]
                    face = main_face(faces, w, h, replace(self.crop, min_confidence=LENIENT_THRESHOLDS[-1]))
                    status = "relaxed"
                base["faces"] = len(faces)
                if face is None:
                    status, region = "fallback", fallback_region(w, h, self.crop)
                else:
                    region = crop_region(face.box, w, h, self.crop)
                    base.update(box=[round(v, 2) for v in face.box],
                                landmarks=[[round(x, 2), round(y, 2)] for x, y in face.landmarks],
                                confidence=round(face.prob, 5))
                out = cut(img, region, self.crop.width, self.crop.height)
            outputs[i] = out
            rows[i] = dict(base, path=f"{self.variant.folder}/{target.out_rel}", status=status)
        writes = [(self.root / rows[i]["path"], outputs[i]) for i in range(len(batch)) if outputs[i] is not None]
        list(pool.map(lambda pw: _write_jpeg(*pw), writes))
        return rows

    def parent_faces(self, image_ids: list[int]) -> dict[int, tuple]:
        """Synthetic images (a mask put on, a face aged) whose parent photo has a detected face in this variant:
        image id -> (box, landmarks, confidence) of that face. Masks hide faces from MTCNN; the face is where it was."""
        if self.crop is None or not image_ids:
            return {}
        with self.catalog.session() as session:
            parents = dict(session.execute(select(Image.id, Image.parent_image_id).where(
                Image.id.in_(image_ids), Image.origin == "synthetic", Image.parent_image_id.is_not(None))).all())
            if not parents:
                return {}
            found = {i: (box, landmarks, confidence) for i, box, landmarks, confidence in session.execute(
                select(Derived.image_id, Derived.box, Derived.landmarks, Derived.confidence).where(
                    Derived.variant_id == self.variant.id, Derived.status.in_(DERIVED_FOUND),
                    Derived.image_id.in_(set(parents.values())))).all() if box and landmarks}
        return {i: found[p] for i, p in parents.items() if p in found}

    def borrow_person_boxes(self, image_ids: list[int]) -> int:
        """Fallback crops of these train images re-cut around the median face box of the same person's
        other photos of this variant (a person's photos are taken in one sitting); returns how many."""
        if not image_ids:
            return 0
        with self.catalog.session() as session:
            people = dict(session.execute(select(Image.id, Image.profile_id).where(Image.id.in_(image_ids))).all())
            fallbacks = session.execute(
                select(Derived.id, Derived.image_id, Derived.path).where(
                    Derived.variant_id == self.variant.id, Derived.status == "fallback",
                    Derived.image_id.in_(image_ids))).all()
            if not fallbacks:
                return 0
            wanted = {people[i] for _, i, _ in fallbacks}
            boxes: dict[int, list] = {}
            for pid, box in session.execute(
                    select(Image.profile_id, Derived.box).join(Derived, Derived.image_id == Image.id).where(
                        Derived.variant_id == self.variant.id, Derived.status.in_(DERIVED_FOUND),
                        Image.profile_id.in_(wanted))).all():
                if box:
                    boxes.setdefault(pid, []).append(box)
            sources = {i: Path(root) / rel for i, root, rel in session.execute(
                select(Image.id, DataRoot.path, Image.path).join(Profile, Profile.id == Image.profile_id)
                .join(DataRoot, DataRoot.id == Profile.root_id).where(Image.id.in_([i for _, i, _ in fallbacks])))}
        done = 0
        for derived_id, image_id, rel in fallbacks:
            known = boxes.get(people[image_id])
            img = _read_rgb(sources[image_id])
            if not known or img is None:
                continue
            box = [float(v) for v in np.median(np.asarray(known, dtype=np.float64), axis=0)]
            if self.rembg_params is not None:
                img = self.remover.remove(img)
            h, w = img.shape[:2]
            _write_jpeg(self.root / rel, cut(img, crop_region(box, w, h, self.crop), self.crop.width, self.crop.height))
            with self.catalog.session() as session:
                session.execute(Derived.__table__.update().where(Derived.id == derived_id).values(
                    status="borrowed", box=[round(v, 2) for v in box]))
                session.commit()
            done += 1
        return done

    def _commit(self, rows: list[dict]) -> None:
        now = utcnow()
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} | {"created_at": now} for r in rows]
        with self.catalog.session() as session:
            train_ids = [r["image_id"] for r in clean if r["image_id"] is not None]
            eval_ids = [r["eval_image_id"] for r in clean if r["eval_image_id"] is not None]
            # rows of a file that went missing are replaced
            if train_ids:
                session.execute(Derived.__table__.delete().where(
                    Derived.variant_id == self.variant.id, Derived.image_id.in_(train_ids)))
            if eval_ids:
                session.execute(Derived.__table__.delete().where(
                    Derived.variant_id == self.variant.id, Derived.eval_image_id.in_(eval_ids)))
            session.execute(insert(Derived), clean)
            session.commit()


def preprocess(catalog: Catalog, variant: Variant, targets: list[Target], *, damaged: int = 0, device: str = "cpu",
               batch_size: int = 16, workers: int = 2, progress: Progress | None = None) -> PreprocessReport:
    return Preprocessor(catalog, variant, device=device, batch_size=batch_size, workers=workers).run(
        targets, damaged=damaged, progress=progress)


# ---------------------------------------------------------------- reporting


def variant_summary(catalog: Catalog, variant: Variant) -> dict:
    with catalog.session() as session:
        counts = dict(session.execute(
            select(Derived.status, func.count()).where(Derived.variant_id == variant.id).group_by(Derived.status)).all())
        fallbacks = session.execute(
            select(DataRoot.path, Image.path).join(Derived, Derived.image_id == Image.id)
            .join(Profile, Profile.id == Image.profile_id).join(DataRoot, DataRoot.id == Profile.root_id)
            .where(Derived.variant_id == variant.id, Derived.status == "fallback").order_by(Image.path)).all()
        eval_fallbacks = session.execute(
            select(DataRoot.path, EvalImage.path).join(Derived, Derived.eval_image_id == EvalImage.id)
            .join(DataRoot, DataRoot.id == EvalImage.root_id)
            .where(Derived.variant_id == variant.id, Derived.status == "fallback").order_by(EvalImage.path)).all()
        total = sum(counts.values())
    return {
        "variant": variant.name, "kind": variant.kind, "params": variant.params, "total": total,
        "ok": counts.get("ok", 0), "relaxed": counts.get("relaxed", 0), "borrowed": counts.get("borrowed", 0),
        "inherited": counts.get("inherited", 0),
        "fallback": counts.get("fallback", 0), "failed": counts.get("failed", 0),
        "detection_rate": ((counts.get("ok", 0) + counts.get("relaxed", 0)) / (total - counts.get("inherited", 0))
                           if total > counts.get("inherited", 0) else 0.0),
        "fallback_rate": counts.get("fallback", 0) / total if total else 0.0,
        "fallbacks": [str(Path(r) / p) for r, p in fallbacks] + [str(Path(r) / p) for r, p in eval_fallbacks],
    }


def list_variants(catalog: Catalog) -> list[dict]:
    """Every variant's summary (variant_summary), oldest first."""
    with catalog.session() as session:
        variants = list(session.execute(select(Variant).order_by(Variant.id)).scalars())
    return [variant_summary(catalog, v) for v in variants]


def contact_sheet(catalog: Catalog, variant: Variant, out: Path, sample: int = 48, seed: int = 0) -> Path:
    """A grid of a sample of this variant's images (fallbacks first, marked), with their source names."""
    import random

    with catalog.session() as session:
        root = Path(session.get(DataRoot, variant.root_id).path)
        rows = session.execute(select(Derived.path, Derived.status).where(
            Derived.variant_id == variant.id, Derived.path.is_not(None)).order_by(Derived.id)).all()
    if not rows:
        raise NotFound(f"variant {variant.name!r} has no images yet: run maskkit preprocess {variant.kind}")
    rng = random.Random(seed)
    fallbacks = [r for r in rows if r[1] == "fallback"]
    oks = [r for r in rows if r[1] != "fallback"]
    chosen = fallbacks[: sample // 4] + rng.sample(oks, min(len(oks), sample - min(len(fallbacks), sample // 4)))
    from ..sheets import Tile, draw_sheet

    return draw_sheet([Tile(root / path, (Path(path).parent.name[:14] + "/" + Path(path).stem,) +
                            (("fallback",) if status == "fallback" else ("",)), status == "fallback")
                       for path, status in chosen], out, columns=8)
