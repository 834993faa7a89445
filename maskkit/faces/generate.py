"""`maskkit generate`: synthetic people and images, every one recorded with generator, parameters,
seed and parent.

- person: a whole synthetic person (normal + mask1..5 + incorrect_mask) for an age band: an
  age-transformed face of another person when an age backend is configured ("new-face"), otherwise a
  real person of that band re-masked with new styles and placements ("remask").
- mask / incorrect: put correctly / incorrectly worn masks on people's `normal` images: a real person
  becomes a new synthetic "remask" person (normal + the new images); a synthetic person lacking those
  images gets them.
- age: age-transformed faces (normal image only) through a user-supplied backend; `mask` and
  `incorrect` then complete them.
Faces without landmarks are skipped and counted. Everything is deterministic for a given --seed.
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy import insert, select

from .. import labels
from ..catalog.engine import Catalog
from ..catalog.models import DERIVED_FOUND, DataRoot, Derived, Image, Profile, Review, utcnow
from ..catalog.roots import work_root
from ..errors import InvalidInput, NotFound
from ..progress import Progress
from .masks import MaskTemplate, builtin_templates, load_masktheface_templates, put_mask

BAND_AGES = dict(enumerate(labels.BAND_TYPICAL_AGES))
SYNTHETIC_PREFIX = "s"


class AgeBackend(Protocol):
    """What an age-transformation model must offer maskkit (see README: plugging in an age backend)."""

    name: str

    def transform(self, rgb: np.ndarray, box, landmarks, target_age: int) -> np.ndarray:
        """The same photo with the person looking target_age years old (same size, RGB uint8).

        Optional: after a call, `last` (a dict recorded in the image's lineage) and `moved` ((box, 5 landmarks)
        of the face in the new image; without it the face is detected again to place the masks)."""


BUILTIN_AGE_BACKEND = "prototype"


def load_age_backend(spec: str | None, checkpoint: str | None = None, device: str = "cpu", *,
                     catalog: Catalog | None = None, strength: float | None = None,
                     progress: Progress | None = None) -> AgeBackend:
    """`prototype` (built in: age prototypes learnt from the catalog's faces, faces/ageing.py) or
    `module.path:factory`, called with checkpoint= and device=, returning an AgeBackend. No spec:
    $MASKKIT_AGE_BACKEND, else the built-in one."""
    spec = spec or os.environ.get("MASKKIT_AGE_BACKEND") or BUILTIN_AGE_BACKEND
    if spec == BUILTIN_AGE_BACKEND:
        from . import ageing

        return ageing.load(checkpoint, device, catalog=catalog, progress=progress,
                           strength=ageing.DEFAULT_STRENGTH if strength is None else strength)
    if strength is not None:
        raise InvalidInput(f"--age-strength is an option of the built-in {BUILTIN_AGE_BACKEND!r} backend, "
                           f"not of {spec!r}")
    factory = _registered_factory(spec)
    if checkpoint and not Path(checkpoint).exists():
        raise NotFound(f"age checkpoint {checkpoint} does not exist")
    backend = factory(checkpoint=checkpoint, device=device)
    if not callable(getattr(backend, "transform", None)):
        raise InvalidInput(f"age backend {spec!r} returned {type(backend).__name__}, which has no transform()")
    return backend


AGE_BACKEND_GROUP = "maskkit.age_backends"  # entry points: name = "module:factory"


def age_backend(factory):
    """Marks a factory `(checkpoint=None, device="cpu") -> backend` as a maskkit age backend, so that
    `--age-backend module:factory` may load it. Nothing unmarked is ever called (`os:system` is refused)."""
    factory.maskkit_age_backend = True
    return factory


def _registered_factory(spec: str):
    """The factory `spec` names: an installed plugin's entry point (group maskkit.age_backends) by its name, or
    `module:factory` whose factory is marked with @age_backend."""
    from importlib.metadata import entry_points

    from ..errors import InvalidInput

    registered = {ep.name: ep for ep in entry_points(group=AGE_BACKEND_GROUP)}
    if spec in registered:
        try:
            return registered[spec].load()
        except Exception as exc:  # a broken plugin is the plugin's fault: one line naming it
            raise InvalidInput(f"age backend {spec!r} cannot be loaded: {type(exc).__name__}: {exc}") from None
    module_name, _, attr = spec.partition(":")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")) \
            or not (attr or "load").isidentifier():
        raise InvalidInput(f"age backend {spec!r} must be {BUILTIN_AGE_BACKEND!r}, an installed plugin "
                           f"({', '.join(registered) or 'none installed'}) or module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), attr or "load")
    except (ImportError, AttributeError) as exc:
        raise InvalidInput(f"age backend {spec!r} cannot be loaded: {exc}") from None
    if not callable(factory) or not getattr(factory, "maskkit_age_backend", False):
        raise InvalidInput(f"age backend {spec!r} is not registered as one: decorate its factory with "
                           "@maskkit.faces.generate.age_backend (or install it under the entry-point group "
                           f"{AGE_BACKEND_GROUP!r})")
    return factory


def load_templates(directory=None) -> list[MaskTemplate]:
    return load_masktheface_templates(directory) if directory else builtin_templates()


@dataclass
class GenerateReport:
    what: str
    people_created: int = 0
    people_completed: int = 0
    images: int = 0
    skipped_no_face: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    sources: int = 0
    profile_ids: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return 1 - self.skipped_no_face / self.sources if self.sources else 0.0


@dataclass
class Donor:
    profile_id: int
    person_id: str
    gender: str
    race: str
    age: int
    origin: str
    normal_id: int
    normal_path: Path
    kinds: set[str]


# ---------------------------------------------------------------- reading the catalog


def _bad_people(session) -> set[int]:
    return set(session.execute(select(Review.profile_id).where(Review.verdict == "bad")).scalars())


def sources(catalog: Catalog, *, band: int | None = None, profiles: list[str] | None = None,
            origin: str | None = "original") -> list[Donor]:
    """People with a usable normal image (not damaged, not reviewed as bad), in id order."""
    with catalog.session() as session:
        stmt = (select(Profile, Image.id, Image.path, DataRoot.path)
                .join(Image, (Image.profile_id == Profile.id) & (Image.kind == "normal"))
                .join(DataRoot, DataRoot.id == Profile.root_id)
                .where(Image.damaged.is_(False)).order_by(Profile.person_id, Profile.folder))
        if origin:
            stmt = stmt.where(Profile.origin == origin)
        if profiles:
            stmt = stmt.where(Profile.person_id.in_(profiles) | Profile.folder.in_(profiles))
        rows = session.execute(stmt).all()
        kinds: dict[int, set[str]] = {}
        for pid, kind in session.execute(select(Image.profile_id, Image.kind)):
            kinds.setdefault(pid, set()).add(kind)
        bad = _bad_people(session)
    out = []
    for p, image_id, rel, root in rows:
        if p.id in bad or (band is not None and labels.age_band(p.age) != band):
            continue
        out.append(Donor(p.id, p.person_id, p.gender, p.race, p.age, p.origin, image_id, Path(root) / rel,
                          kinds.get(p.id, set())))
    if profiles:
        found = {s.person_id for s in out} | {str(s.normal_path.parent.name) for s in out}
        missing = [p for p in profiles if p not in found]
        if missing:
            raise InvalidInput(f"no usable normal image for: {', '.join(missing)} (unknown, damaged or reviewed bad)")
    return out


class Geometry:
    """Face box + landmarks per image: from the catalog (any crop variant) or detected now."""

    def __init__(self, catalog: Catalog, device: str = "cpu", min_face_px: float = 40.0):
        self.catalog = catalog
        self.device = device
        self.min_face_px = min_face_px
        self._detector = None
        self.cache: dict[int, tuple | None] = {}

    def load_known(self, image_ids: list[int]) -> None:
        with self.catalog.session() as session:
            for image_id, box, landmarks in session.execute(
                select(Derived.image_id, Derived.box, Derived.landmarks)
                .where(Derived.image_id.in_(image_ids), Derived.status.in_(DERIVED_FOUND)).order_by(Derived.id)
            ):
                self.cache[image_id] = (box, landmarks)

    def detect(self, rgb: np.ndarray):
        if self._detector is None:
            from .detect import FaceDetector

            self._detector = FaceDetector(device=self.device, min_face_px=self.min_face_px)
        from .crop import CropParams

        faces = [f for f in self._detector.detect(rgb[None])[0] if f.prob >= CropParams().min_confidence]
        if not faces:
            return None
        face = max(faces, key=lambda f: f.area)
        return list(face.box), [list(p) for p in face.landmarks]

    def of(self, image_id: int | None, rgb: np.ndarray):
        if image_id is not None and image_id in self.cache:
            return self.cache[image_id]
        found = self.detect(rgb)
        if image_id is not None:
            self.cache[image_id] = found
        return found


def read_rgb(path: Path) -> np.ndarray:
    from ..images import read_rgb as read

    return read(path)


# ---------------------------------------------------------------- writing synthetic people


class SyntheticWriter:
    """Creates synthetic people and images under the work root, one transaction per person."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        with catalog.session() as session:
            root = work_root(catalog, session)
            session.commit()
            self.root_id, self.root = root.id, Path(root.path)
            self.next_number = 1 + max(
                [int(pid[len(SYNTHETIC_PREFIX):]) for pid in session.execute(
                    select(Profile.person_id).where(Profile.origin == "synthetic")).scalars()
                 if pid[len(SYNTHETIC_PREFIX):].isdigit()] or [0])

    def _write(self, rel: str, rgb: np.ndarray | None = None, copy_from: Path | None = None) -> tuple[int, str]:
        import hashlib

        from ..files import atomic_path

        path = self.root / rel
        with atomic_path(path, "generated image") as tmp:
            if copy_from is not None:
                shutil.copyfile(copy_from, tmp)
            else:
                from PIL import Image as PILImage

                PILImage.fromarray(rgb).save(tmp, format="JPEG", quality=92)
        data = path.read_bytes()
        return len(data), hashlib.sha1(data).hexdigest()

    def _image_row(self, profile_id: int, kind: str, rel: str, size: int, sha1: str, generator: dict,
                   parent_image_id: int | None, shape) -> dict:
        stat = (self.root / rel).stat()
        mask = labels.KIND_MASK[kind]
        return dict(profile_id=profile_id, kind=kind, mask=mask, orig_mask=mask, path=rel, size=size,
                    mtime_ns=stat.st_mtime_ns, sha1=sha1, width=shape[1], height=shape[0], damaged=False,
                    origin="synthetic", generator=generator, parent_image_id=parent_image_id, created_at=utcnow())

    def new_person(self, parent: Donor, age: int, generator: dict,
                   images: dict[str, tuple[np.ndarray | None, Path | None, int | None, dict]],
                   tags: list[str] | None = None) -> int:
        """images: kind -> (rgb or None, file to copy or None, parent image id, per-image generator record)."""
        number = self.next_number
        self.next_number += 1
        person_id = f"{SYNTHETIC_PREFIX}{number:06d}"
        folder = f"synthetic/{person_id}_{parent.gender}_{parent.race}_{age}"
        with self.catalog.session() as session:
            session.execute(insert(Profile), [dict(
                root_id=self.root_id, person_id=person_id, folder=folder, gender=parent.gender, race=parent.race,
                age=age, orig_gender=parent.gender, orig_race=parent.race, orig_age=age, origin="synthetic",
                parent_id=parent.profile_id, generator=generator, tags=tags or None, created_at=utcnow())])
            profile_id = session.execute(select(Profile.id).where(Profile.root_id == self.root_id,
                                                                  Profile.folder == folder)).scalar_one()
            rows = self._files(profile_id, folder, images)
            session.execute(insert(Image), rows)
            session.commit()
        return profile_id

    def add_images(self, person: Donor, folder: str, images) -> int:
        with self.catalog.session() as session:
            rows = self._files(person.profile_id, folder, images)
            session.execute(insert(Image), rows)
            session.commit()
        return len(rows)

    def _files(self, profile_id: int, folder: str, images) -> list[dict]:
        rows = []
        for kind, (rgb, copy_from, parent_image_id, record) in images.items():
            rel = f"{folder}/{kind}.jpg"
            size, sha1 = self._write(rel, rgb, copy_from)
            shape = rgb.shape if rgb is not None else read_rgb(self.root / rel).shape
            rows.append(self._image_row(profile_id, kind, rel, size, sha1, record, parent_image_id, shape))
        return rows


# ---------------------------------------------------------------- generators


def _masked_images(rgb: np.ndarray, geometry, rng: random.Random, templates: list[MaskTemplate], kinds: list[str],
                   base: dict) -> dict:
    """kind -> (image, None, None, record) for mask1..5 (distinct styles) and/or incorrect_mask."""
    box, landmarks = geometry
    out = {}
    wear_kinds = [k for k in kinds if k.startswith("mask")]
    styles = rng.sample(templates, k=min(len(wear_kinds), len(templates)))
    while len(styles) < len(wear_kinds):
        styles.append(rng.choice(templates))
    for kind, template in zip(wear_kinds, styles):
        out[kind] = (put_mask(rgb, box, landmarks, template, "wear"), None, None,
                     dict(base, style=template.name, placement="wear"))
    if "incorrect_mask" in kinds:
        template = rng.choice(templates)
        placement = rng.choice(("under_nose", "chin"))
        out["incorrect_mask"] = (put_mask(rgb, box, landmarks, template, placement), None, None,
                                 dict(base, style=template.name, placement=placement))
    return out


def generate_people(catalog: Catalog, band: int, count: int, *, seed: int = 0, templates_dir=None,
                    age_backend: AgeBackend | None = None, device: str = "cpu", parents: set[int] | None = None,
                    tags: list[str] | None = None, progress: Progress | None = None) -> GenerateReport:
    """`count` new synthetic people of an age band, 7 images each. `parents`: only these people (profile ids)
    are made over (e.g. the training side of a split, so nothing of a held-out person reaches training)."""
    if band not in (0, 1, 2):
        raise InvalidInput(f"age band must be 0..2, got {band}")
    if count < 1:
        raise InvalidInput(f"--count must be at least 1, got {count}")
    pool = sources(catalog, band=None if age_backend else band)
    if parents is not None:
        pool = [d for d in pool if d.profile_id in parents]
    if age_backend is not None:  # new faces of this band are made from people of the other bands
        pool = [d for d in pool if labels.age_band(d.age) != band] or pool
    if not pool:
        raise InvalidInput(f"no {labels.AGE_BANDS[band]} people with a usable normal image to start from")
    templates = load_templates(templates_dir)
    rng = random.Random(seed)
    order = pool[:]
    rng.shuffle(order)
    geometry = Geometry(catalog, device)
    geometry.load_known([s.normal_id for s in order])
    writer = SyntheticWriter(catalog)
    report = GenerateReport("person", sources=0)
    kind_name = "new-face" if age_backend else "remask"
    attempts, k = 0, 0
    while report.people_created < count:
        if attempts >= len(order) and report.people_created == 0:
            raise InvalidInput(f"no face with landmarks among {len(order)} {labels.AGE_BANDS[band]} people: "
                               "nothing could be generated")
        parent = order[k % len(order)]
        k += 1
        attempts += 1
        person_rng = random.Random(f"{seed}:{kind_name}:{parent.profile_id}:{k}")
        rgb = read_rgb(parent.normal_path)
        geo = geometry.of(parent.normal_id, rgb)
        report.sources += 1
        if geo is None:
            report.skipped_no_face += 1
            if len(report.skipped_examples) < 20:
                report.skipped_examples.append(str(parent.normal_path))
            if attempts > 3 * len(order):
                break
            continue
        base = dict(generator=kind_name, seed=seed, index=k, parent=parent.person_id)
        age = parent.age
        normal: tuple = (None, parent.normal_path, parent.normal_id, dict(base, copy_of=parent.person_id))
        if age_backend is not None:
            age = person_rng.randint(*BAND_AGES[band])
            rgb = np.ascontiguousarray(age_backend.transform(rgb, geo[0], geo[1], age), dtype=np.uint8)
            geo = getattr(age_backend, "moved", None) or geometry.of(None, rgb)
            if geo is None:
                report.skipped_no_face += 1
                continue
            normal = (rgb, None, parent.normal_id, dict(base, age_backend=getattr(age_backend, "name", "?"),
                                                        **{**getattr(age_backend, "last", {}), "target_age": age}))
        images = {"normal": normal}
        masked = _masked_images(rgb, geo, person_rng, templates, [f"mask{i}" for i in range(1, 6)] + ["incorrect_mask"],
                                base)
        images.update({k: (v[0], None, parent.normal_id, v[3]) for k, v in masked.items()})  # made from that photo
        profile_id = writer.new_person(parent, age, dict(base, kind=kind_name, band=labels.AGE_BANDS[band],
                                                          templates=str(templates_dir) if templates_dir else "builtin"),
                                       images, tags)
        report.people_created += 1
        report.images += len(images)
        report.profile_ids.append(profile_id)
        if progress:
            progress("people", report.people_created, count)
    return report


def generate_masks(catalog: Catalog, what: str, *, profiles: list[str] | None = None, band: int | None = None,
                   seed: int = 0, templates_dir=None, device: str = "cpu", synthetic_only: bool = False,
                   progress: Progress | None = None) -> GenerateReport:
    """what='mask': mask1..5; what='incorrect': incorrect_mask. Real people -> new remask people;
    synthetic people lacking those images -> completed."""
    kinds = [f"mask{i}" for i in range(1, 6)] if what == "mask" else ["incorrect_mask"]
    templates = load_templates(templates_dir)
    pool = sources(catalog, band=band, profiles=profiles, origin=None)
    pool = [s for s in pool if s.origin == "synthetic" or not synthetic_only]
    pool = [s for s in pool if s.origin == "original" or not set(kinds) <= s.kinds]
    if not pool:
        raise NotFound("no people to put masks on (no usable normal images, or every synthetic person "
                           "already has these images)")
    geometry = Geometry(catalog, device)
    geometry.load_known([s.normal_id for s in pool])
    writer = SyntheticWriter(catalog)
    report = GenerateReport(what, sources=len(pool))
    with catalog.session() as session:
        folders = dict(session.execute(select(Profile.id, Profile.folder)).all())
    for n, src in enumerate(pool, 1):
        rng = random.Random(f"{seed}:{what}:{src.profile_id}")
        rgb = read_rgb(src.normal_path)
        geo = geometry.of(src.normal_id, rgb)
        if geo is None:
            report.skipped_no_face += 1
            if len(report.skipped_examples) < 20:
                report.skipped_examples.append(str(src.normal_path))
            continue
        base = dict(generator=f"{what}", seed=seed, parent=src.person_id)
        todo = [k for k in kinds if k not in src.kinds] if src.origin == "synthetic" else kinds
        images = _masked_images(rgb, geo, rng, templates, todo, base)
        if src.origin == "synthetic":
            for record in images.values():
                record[3]["parent_image"] = src.normal_id
            images = {k: (v[0], None, src.normal_id, v[3]) for k, v in images.items()}
            report.images += writer.add_images(src, folders[src.profile_id], images)
            report.people_completed += 1
            report.profile_ids.append(src.profile_id)
        else:
            images = {k: (v[0], None, src.normal_id, v[3]) for k, v in images.items()}
            images["normal"] = (None, src.normal_path, src.normal_id, dict(base, copy_of=src.person_id))
            pid = writer.new_person(src, src.age, dict(base, kind="remask", only=kinds), images)
            report.people_created += 1
            report.images += len(images)
            report.profile_ids.append(pid)
        if progress:
            progress(what, n, len(pool))
    return report


def generate_aged(catalog: Catalog, backend: AgeBackend, *, band: int, profiles: list[str] | None = None,
                  count: int | None = None, seed: int = 0, device: str = "cpu",
                  progress: Progress | None = None) -> GenerateReport:
    """New-face synthetic people (normal image only) aged into `band` from other people's faces: people
    already in `band` are never parents (an old person "aged" to old is the same old person again)."""
    everyone = sources(catalog, profiles=profiles)
    pool = [s for s in everyone if labels.age_band(s.age) != band]
    if not pool:
        raise InvalidInput(f"no parents outside the {labels.AGE_BANDS[band]} band to age into it"
                           + (f" (all {len(everyone)} named people are {labels.AGE_BANDS[band]} already)"
                              if profiles else ""))
    rng = random.Random(seed)
    rng.shuffle(pool)
    pool = pool[:count] if count else pool
    geometry = Geometry(catalog, device)
    geometry.load_known([s.normal_id for s in pool])
    writer = SyntheticWriter(catalog)
    report = GenerateReport("age", sources=len(pool))
    for n, src in enumerate(pool, 1):
        rgb = read_rgb(src.normal_path)
        geo = geometry.of(src.normal_id, rgb)
        if geo is None:
            report.skipped_no_face += 1
            continue
        age = random.Random(f"{seed}:age:{src.profile_id}").randint(*BAND_AGES[band])
        aged = np.ascontiguousarray(backend.transform(rgb, geo[0], geo[1], age), dtype=np.uint8)
        base = dict(generator="age", backend=getattr(backend, "name", "?"), seed=seed, parent=src.person_id,
                    **{**getattr(backend, "last", {}), "target_age": age})
        pid = writer.new_person(src, age, dict(base, kind="new-face"), {"normal": (aged, None, src.normal_id, base)})
        report.people_created += 1
        report.images += 1
        report.profile_ids.append(pid)
        if progress:
            progress("age", n, len(pool))
    return report


def synthetic_counts(catalog: Catalog) -> dict[str, dict[str, int]]:
    """Synthetic people per band and kind (remask / new-face)."""
    out: dict[str, dict[str, int]] = {}
    with catalog.session() as session:
        for age, generator in session.execute(select(Profile.age, Profile.generator).where(Profile.origin == "synthetic")):
            band = labels.AGE_BANDS[labels.age_band(age)]
            kind = (generator or {}).get("kind", "?")
            out.setdefault(band, {}).setdefault(kind, 0)
            out[band][kind] += 1
    return out


def contact_sheet(catalog: Catalog, profile_ids: list[int], out: Path, people: int = 8) -> Path:
    """Rows of generated people: their images side by side."""
    from ..sheets import Tile, draw_sheet

    tiles = []
    with catalog.session() as session:
        for pid in profile_ids[:people]:
            imgs = dict((kind, Path(root) / rel) for kind, rel, root in session.execute(
                select(Image.kind, Image.path, DataRoot.path).join(Profile, Profile.id == Image.profile_id)
                .join(DataRoot, DataRoot.id == Profile.root_id).where(Image.profile_id == pid)).all())
            tiles += [Tile(imgs.get(kind, ""), (kind,)) for kind in labels.IMAGE_KINDS]
    if not tiles:
        raise InvalidInput("nothing was generated to show")
    return draw_sheet(tiles, out, columns=len(labels.IMAGE_KINDS), tile=(96, 128))
