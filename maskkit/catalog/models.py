"""The catalog's tables (SQLModel). The schema's history lives in Alembic under migrations/;
these classes must always match the latest revision (a test compares them)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import BigInteger, Column, Index, JSON, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class DataRoot(SQLModel, table=True):
    """A folder that image paths are relative to; moving a dataset means updating `path` only."""

    __tablename__ = "data_root"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)
    path: str = Field(max_length=4000)
    created_at: datetime = Field(default_factory=utcnow)


class Profile(SQLModel, table=True):
    """One person: a folder of the train set (or a synthetic person). Current and original labels."""

    __tablename__ = "profile"
    __table_args__ = (UniqueConstraint("root_id", "folder", name="uq_profile_root_folder"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    root_id: int = Field(foreign_key="data_root.id", index=True)
    person_id: str = Field(index=True, max_length=64)  # the csv id, e.g. 000123 or 001498-1
    folder: str = Field(max_length=500)
    gender: str = Field(max_length=16)
    race: str = Field(max_length=64)
    age: int
    orig_gender: str = Field(max_length=16)
    orig_race: str = Field(max_length=64)
    orig_age: int
    origin: str = Field(default="original", max_length=16, index=True)  # original / synthetic
    parent_id: Optional[int] = Field(default=None, foreign_key="profile.id", index=True)
    csv_row: Optional[int] = None
    generator: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))  # synthetic people
    tags: Optional[list] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    # the folder's mtime and odd files at the last full scan: an unchanged folder is re-checked file by file
    dir_mtime_ns: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    scan_notes: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    created_at: datetime = Field(default_factory=utcnow)


class Image(SQLModel, table=True):
    """One photo of a person: kind (mask1..5 / incorrect_mask / normal) and its mask state."""

    __tablename__ = "image"
    __table_args__ = (UniqueConstraint("profile_id", "kind", name="uq_image_profile_kind"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    kind: str = Field(max_length=32)
    mask: int  # current mask state 0 wear / 1 incorrect / 2 not wear
    orig_mask: int
    path: str = Field(max_length=1000)  # relative to the profile's data root
    size: int
    mtime_ns: int = Field(sa_column=Column(BigInteger, nullable=False))  # nanoseconds overflow 32 bits
    sha1: str = Field(max_length=40, index=True)
    width: Optional[int] = None
    height: Optional[int] = None
    damaged: bool = Field(default=False, index=True)
    damage_reason: Optional[str] = Field(default=None, max_length=500)
    # 64-bit dHash (signed) of a normal photo, computed when duplicates are looked for
    phash: Optional[int] = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    origin: str = Field(default="original", max_length=16)
    generator: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    parent_image_id: Optional[int] = Field(default=None, foreign_key="image.id")
    created_at: datetime = Field(default_factory=utcnow)


class EvalImage(SQLModel, table=True):
    """One image of the eval (test) set, in info.csv's order."""

    __tablename__ = "eval_image"
    __table_args__ = (UniqueConstraint("root_id", "image_name", name="uq_eval_root_name"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    root_id: int = Field(foreign_key="data_root.id", index=True)
    image_name: str = Field(max_length=200)  # info.csv's ImageID
    position: int  # 0-based row in info.csv
    path: str = Field(max_length=1000)
    size: int
    mtime_ns: int = Field(sa_column=Column(BigInteger, nullable=False))  # nanoseconds overflow 32 bits
    sha1: str = Field(max_length=40)
    width: Optional[int] = None
    height: Optional[int] = None
    damaged: bool = Field(default=False)
    damage_reason: Optional[str] = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)


class LabelEvent(SQLModel, table=True):
    """One label change: who changed which field of which profile/image from what to what, and why.
    Current labels are the original labels with every non-undone event applied in id order."""

    __tablename__ = "label_event"
    __table_args__ = (Index("ix_label_event_profile_field", "profile_id", "field"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="profile.id")
    image_id: Optional[int] = Field(default=None, foreign_key="image.id", index=True)
    field: str = Field(max_length=32)  # gender / age / race / mask
    old_value: str = Field(max_length=64)
    new_value: str = Field(max_length=64)
    reason: Optional[str] = Field(default=None, max_length=2000)
    actor: str = Field(default="cli", max_length=100)
    source: str = Field(default="cli", max_length=32)  # cli / audit / csv / known-fixes / undo
    undoes_id: Optional[int] = Field(default=None, foreign_key="label_event.id")
    undone_by_id: Optional[int] = Field(default=None, foreign_key="label_event.id")
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Review(SQLModel, table=True):
    """An audit verdict on a person (image_id empty) or one image, by a reviewer."""

    __tablename__ = "review"
    __table_args__ = (Index("ix_review_profile_reviewer", "profile_id", "reviewer"),
                      Index("ix_review_verdict_profile", "verdict", "profile_id"))
    id: Optional[int] = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="profile.id")
    image_id: Optional[int] = Field(default=None, foreign_key="image.id")
    reviewer: str = Field(max_length=100, index=True)
    verdict: str = Field(max_length=32)  # accept / fix / skip / bad / note
    note: Optional[str] = Field(default=None, max_length=4000)
    event_id: Optional[int] = Field(default=None, foreign_key="label_event.id")
    created_at: datetime = Field(default_factory=utcnow)


class IngestRun(SQLModel, table=True):
    """One `maskkit ingest` of a folder: when, from where, and what it found."""

    __tablename__ = "ingest_run"
    id: Optional[int] = Field(default=None, primary_key=True)
    root_id: int = Field(foreign_key="data_root.id", index=True)
    kind: str = Field(max_length=16)  # train / eval
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None
    summary: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))


class Variant(SQLModel, table=True):
    """A named kind of derived image (face crop, background removed, both) with its parameters.
    Other parameters make another variant (crop, crop-v2, ...), never a silent overwrite."""

    __tablename__ = "variant"
    __table_args__ = (UniqueConstraint("kind", "params_hash", name="uq_variant_kind_params"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    kind: str = Field(max_length=32)  # crop / rembg / crop+rembg
    params: dict = Field(sa_column=Column(JSON, nullable=False))
    params_hash: str = Field(max_length=64)
    root_id: int = Field(foreign_key="data_root.id")  # outputs live under this root
    folder: str = Field(max_length=500)  # relative to the root
    created_at: datetime = Field(default_factory=utcnow)


#: derived-image statuses: a face found (first look, lenient second look, or for a synthetic image the face of the
#: photo it was made from: inherited); a box borrowed from the same person's other photos; a centre crop; no output
DERIVED_FOUND = ("ok", "relaxed", "inherited")
DERIVED_USABLE = ("ok", "relaxed", "inherited", "borrowed", "fallback")


class Derived(SQLModel, table=True):
    """One derived image of a train image (image_id) or eval image (eval_image_id) for a variant, with
    the face found (box, landmarks, confidence, in the source image's pixels) and how it went."""

    __tablename__ = "derived"
    __table_args__ = (
        UniqueConstraint("variant_id", "image_id", name="uq_derived_variant_image"),
        UniqueConstraint("variant_id", "eval_image_id", name="uq_derived_variant_eval"),
    )
    id: Optional[int] = Field(default=None, primary_key=True)
    variant_id: int = Field(foreign_key="variant.id", index=True)
    image_id: Optional[int] = Field(default=None, foreign_key="image.id", index=True)
    eval_image_id: Optional[int] = Field(default=None, foreign_key="eval_image.id", index=True)
    path: Optional[str] = Field(default=None, max_length=1000)  # relative to the variant's root
    status: str = Field(max_length=16)  # ok / fallback / failed
    box: Optional[list] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    landmarks: Optional[list] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    confidence: Optional[float] = None
    faces: int = 0  # faces found in the image
    error: Optional[str] = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow)


class View(SQLModel, table=True):
    """A named dataset definition (spec) and the hash of its materialized snapshot."""

    __tablename__ = "view"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    spec: dict = Field(sa_column=Column(JSON, nullable=False))
    content_hash: Optional[str] = Field(default=None, max_length=64)
    people: int = 0
    images: int = 0
    materialized_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)


class ViewMember(SQLModel, table=True):
    """One image of a view's snapshot: the file to read and its labels at materialization time."""

    __tablename__ = "view_member"
    __table_args__ = (UniqueConstraint("view_id", "image_id", name="uq_view_member_image"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    view_id: int = Field(foreign_key="view.id", index=True)
    image_id: int = Field(foreign_key="image.id", index=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    root_id: int = Field(foreign_key="data_root.id")
    path: str = Field(max_length=1000)  # relative to the root: the variant's file or the original
    mask: int
    gender: int
    age: int
    age_band: int
    label: int  # the 18-class index


class Split(SQLModel, table=True):
    """A profile-level split of a view's people: holdout (fold 1 = validation) or k folds."""

    __tablename__ = "split"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    view_id: Optional[int] = Field(default=None, foreign_key="view.id")
    view_hash: Optional[str] = Field(default=None, max_length=64)
    kind: str = Field(max_length=16)  # holdout / kfold
    folds: int
    val_fraction: Optional[float] = None
    seed: int
    stratify: str = Field(default="gender_x_age_band", max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class SplitMember(SQLModel, table=True):
    __tablename__ = "split_member"
    __table_args__ = (UniqueConstraint("split_id", "profile_id", name="uq_split_member_profile"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    split_id: int = Field(foreign_key="split.id", index=True)
    profile_id: int = Field(foreign_key="profile.id", index=True)
    fold: int


class Assignment(SQLModel, table=True):
    """Which reviewer is to review which person (`maskkit audit --assign`)."""

    __tablename__ = "assignment"
    id: Optional[int] = Field(default=None, primary_key=True)
    profile_id: int = Field(foreign_key="profile.id", unique=True)
    reviewer: str = Field(max_length=100, index=True)
    assigned_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    """A training run: what it trained on (view + snapshot hash, split, fold), with which config, and how it went."""

    __tablename__ = "run"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)  # the runs/<name>/ folder
    kind: str = Field(default="train", max_length=16)
    view_id: Optional[int] = Field(default=None, foreign_key="view.id")
    view_hash: Optional[str] = Field(default=None, max_length=64)
    split_id: Optional[int] = Field(default=None, foreign_key="split.id")
    fold: Optional[int] = None
    status: str = Field(default="running", max_length=16)  # running / finished / interrupted / failed
    config: dict = Field(sa_column=Column(JSON, nullable=False))
    folder: str = Field(max_length=1000)
    epochs_done: int = 0
    best_epoch: Optional[int] = None
    best_metric: Optional[float] = None
    metric_name: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class Ensemble(SQLModel, table=True):
    """Runs voted together; eval and submit accept its name like a run's."""

    __tablename__ = "ensemble"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    members: list = Field(sa_column=Column(JSON, nullable=False))  # run names
    weights: list = Field(sa_column=Column(JSON, nullable=False))
    vote: str = Field(max_length=8)  # soft / hard
    tta: Optional[str] = Field(default=None, max_length=16)  # hflip
    metrics: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    # {"offsets": fields|classes|none (absent: classes), "bias": [18 log-probability offsets], "applied": bool,
    #  "oof_macro_f1_before": x, "oof_macro_f1_after": y (cross-fitted), "cross_fit": {"folds", "seed"}, ...}
    decision: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    created_at: datetime = Field(default_factory=utcnow)


class Evaluation(SQLModel, table=True):
    """Metrics of a run or ensemble on a set of images (a view's validation fold, or a whole view)."""

    __tablename__ = "evaluation"
    id: Optional[int] = Field(default=None, primary_key=True)
    source: str = Field(max_length=100, index=True)  # run or ensemble name
    view: Optional[str] = Field(default=None, max_length=100)
    images: int
    metrics: dict = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Submission(SQLModel, table=True):
    """A submission file made from a run or ensemble."""

    __tablename__ = "submission"
    id: Optional[int] = Field(default=None, primary_key=True)
    source: str = Field(max_length=100)
    runs: list = Field(sa_column=Column(JSON, nullable=False))
    file: str = Field(max_length=1000)
    sha256: str = Field(max_length=64)
    rows: int
    scores: Optional[dict] = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    created_at: datetime = Field(default_factory=utcnow)
