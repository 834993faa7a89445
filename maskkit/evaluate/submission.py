"""`maskkit submit`: predict every eval image with the preprocessing its runs trained on, write
ImageID,ans in info.csv's order, validate it, record it, and optionally score it against answers."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
import os
from pathlib import Path

import numpy as np
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import DataRoot, Derived, EvalImage, Submission, utcnow
from .. import labels as L
from ..names import safe_file_part
from ..errors import Conflict, InvalidInput, NotFound
from .predict import decide, load_model, predict_paths, resolve, run_variant


def _eval_root(catalog: Catalog, eval_dir) -> tuple[int, Path]:
    with catalog.session() as session:
        if eval_dir is not None:
            path = str(Path(eval_dir).expanduser().resolve())
            root = session.execute(select(DataRoot).where(DataRoot.path == path)).scalars().first()
            if root is None or not session.execute(select(EvalImage.id).where(EvalImage.root_id == root.id)).first():
                return -1, Path(path)
            return root.id, Path(root.path)
        roots = session.execute(select(DataRoot.id, DataRoot.path).join(EvalImage, EvalImage.root_id == DataRoot.id)
                                .distinct()).all()
    if not roots:
        raise NotFound("the catalog has no eval images: maskkit submit RUN --eval EVAL_DIR")
    if len(roots) > 1:
        raise InvalidInput(f"the catalog has {len(roots)} eval sets ({', '.join(str(p) for _, p in roots)}): "
                           "name one with --eval DIR")
    return roots[0][0], Path(roots[0][1])


def eval_paths(catalog: Catalog, root_id: int, variant: str, *, device: str = "cpu", progress=None) -> list[str]:
    """The file each eval image is read from for a variant; the variant is made for eval images if missing."""
    with catalog.session() as session:
        rows = session.execute(select(EvalImage.id, EvalImage.path, EvalImage.damaged).where(
            EvalImage.root_id == root_id).order_by(EvalImage.position)).all()
        root = Path(session.get(DataRoot, root_id).path)
    if variant == "original":
        return [str(root / p) for _, p, _ in rows]
    from ..faces.preprocess import Preprocessor, Target, get_variant

    v = get_variant(catalog, variant)
    targets = [Target(None, i, root / p, f"eval/{Path(p).with_suffix('.jpg')}") for i, p, dmg in rows]
    Preprocessor(catalog, v, device=device).run(targets, progress=progress)
    with catalog.session() as session:
        vroot = Path(session.get(DataRoot, v.root_id).path)
        derived = dict(session.execute(select(Derived.eval_image_id, Derived.path).where(
            Derived.variant_id == v.id, Derived.eval_image_id.is_not(None))).all())
    return [str(vroot / derived[i]) if derived.get(i) else str(root / p) for i, p, _ in rows]


def read_info(path: Path) -> list[str]:
    from ..files import read_csv

    if not path.is_file():
        raise NotFound(f"{path}: file not found (an eval folder holds info.csv and images/)")
    header, body = read_csv(path, "info.csv")
    if header[:1] != ["ImageID"]:
        raise InvalidInput(f"{path}: header must start with ImageID, got {','.join(header)!r}")
    if not body:
        raise InvalidInput(f"{path}: no rows, only a header (info.csv lists the eval images, one per row)")
    return [row[0].strip() for _, row in body]


def _check_listed_images(root: Path, info: list[str]) -> None:
    """Every image info.csv lists is in images/ (a submission needs one row per listed image)."""
    images = root / "images"
    if not images.is_dir():
        raise NotFound(f"{images}: folder not found (an eval folder holds info.csv and images/)")
    present = {e.name for e in os.scandir(images)}
    missing = [n for n in info if n not in present]
    if missing:
        raise NotFound(f"{len(missing):,} of {len(info):,} images listed in {root / 'info.csv'} are missing from "
                       f"{images} (e.g. {missing[0]}): put them back, a submission needs one row per listed image")


def validate_submission(path: Path, info: list[str]) -> None:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if rows[:1] != [["ImageID", "ans"]]:
        raise InvalidInput(f"{path}: header must be ImageID,ans")
    body = rows[1:]
    if len(body) != len(info):
        raise InvalidInput(f"{path}: {len(body)} rows, info.csv has {len(info)}")
    for n, (row, expected) in enumerate(zip(body, info), 2):
        if row[0] != expected:
            raise InvalidInput(f"{path}: row {n}: ImageID {row[0]!r}, info.csv has {expected!r} there")
        if not row[1].isdigit() or not 0 <= int(row[1]) < L.NUM_CLASSES:
            raise InvalidInput(f"{path}: row {n}: ans {row[1]!r} is not a class 0..17")


def score(submission: Path, answers: Path) -> dict:
    from sklearn.metrics import f1_score

    from ..files import read_csv

    header, body = read_csv(answers, "answers file")
    if "ImageID" not in header or "ans" not in header:
        raise InvalidInput(f"{answers}: needs columns ImageID,ans")
    key, ans = header.index("ImageID"), header.index("ans")
    truth = {}
    for line, row in body:
        try:
            truth[row[key].strip()] = int(row[ans])
        except (IndexError, ValueError):
            raise InvalidInput(f"{answers}: row {line}, field 'ans': not a class number") from None
    with open(submission, newline="") as handle:
        pred = {row["ImageID"]: int(row["ans"]) for row in csv.DictReader(handle)}
    missing = [k for k in pred if k not in truth]
    if missing:
        raise InvalidInput(f"{answers}: no answer for {len(missing)} image(s), e.g. {missing[0]}")
    ids = list(pred)
    y, p = np.array([truth[k] for k in ids]), np.array([pred[k] for k in ids])
    return {"accuracy": float((y == p).mean()),
            "macro_f1": float(f1_score(y, p, labels=list(range(L.NUM_CLASSES)), average="macro", zero_division=0)),
            "images": len(ids)}


@dataclass
class SubmissionResult:
    file: str
    rows: int
    sha256: str
    scores: dict | None  # accuracy, macro_f1, images (with answers)
    variants: list[str]  # the preprocessing variants its runs read
    people: int | None = None  # groups of two or more photos pooled as one person (None: the source does not pool)


def submit(catalog: Catalog, name: str, *, eval_dir=None, out=None, answers=None, device: str = "cpu",
           tta: str | None = None, progress=None) -> SubmissionResult:
    from ..files import output_file

    if out is not None:  # checked before minutes of prediction, not after
        output_file(out, "submission file")
    if answers is not None and not Path(answers).is_file():
        raise NotFound(f"{answers}: answers file not found")
    source = resolve(catalog, name)
    root_id, root_path = _eval_root(catalog, eval_dir)
    info = read_info(root_path / "info.csv")
    _check_listed_images(root_path, info)  # before anything is ingested: a set with holes is never recorded
    if root_id == -1:
        from ..catalog.ingest import ingest_eval

        ingest_eval(catalog, root_path)
        root_id, root_path = _eval_root(catalog, root_path)
    with catalog.session() as session:
        names = list(session.execute(select(EvalImage.image_name).where(EvalImage.root_id == root_id)
                                     .order_by(EvalImage.position)).scalars())
    if names != info:
        raise Conflict(f"{root_path / 'info.csv'} lists other images than were ingested from it "
                       f"({len(info):,} listed, {len(names):,} ingested): maskkit ingest --eval {root_path} "
                       "brings the catalog up to date")
    groups: dict[str, list[int]] = {}
    for k, run in enumerate(source.runs):
        groups.setdefault(run_variant(catalog, run), []).append(k)
    probs = [None] * len(source.runs)
    for variant, members in groups.items():
        paths = eval_paths(catalog, root_id, variant, device=device, progress=progress)
        models = [load_model(source.runs[k], device) for k in members]
        for k, p in zip(members, predict_paths(models, paths, tta=tta or source.tta, progress=progress)):
            probs[k] = p
    people = None
    if source.people is not None:  # the ensemble pools people: the eval photos grouped as it learnt to
        from .people import groups_for

        people = groups_for(source.people, eval_paths(catalog, root_id, "original"), progress)
    final = decide(source, probs, people)
    out = Path(out or Path(source.runs[0].folder).parent / f"submission_{safe_file_part(name)}.csv")  # beside the runs
    from ..files import atomic_path

    with atomic_path(out, "submission file") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ImageID", "ans"])
            writer.writerows(zip(info, final.argmax(1).tolist()))
        validate_submission(tmp, info)
    scores = score(out, Path(answers)) if answers else None
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    with catalog.session() as session:
        session.add(Submission(source=name, runs=[r.name for r in source.runs], file=str(out.resolve()), sha256=digest,
                               rows=len(info), scores=scores, created_at=utcnow()))
        session.commit()
    pooled = None if people is None else int((np.bincount(people) > 1).sum())
    return SubmissionResult(str(out), len(info), digest, scores, list(groups), pooled)

