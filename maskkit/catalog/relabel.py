"""Label changes with full history.

Every change is a `label_event` row (field, old and new value, who, why, when) written in the same
transaction as the current value it changes. Current labels are always the original labels with
every event applied in id order (`replay_labels` recomputes them; a test compares). An undo is itself
an event that restores the old value exactly.

Profile fields: gender, age, race (age_band sets the nearest age inside the band).
Image field: mask (0 wear / 1 incorrect / 2 not wear); `swap` exchanges the mask states of two images.
"""

from __future__ import annotations

import csv
import getpass
import os
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Iterable

from sqlalchemy import or_, select, update
from sqlmodel import Session

from .. import labels
from ..errors import Conflict, InvalidInput, MaskkitError, NotFound
from .engine import Catalog
from .models import Image, LabelEvent, Profile, Review, utcnow

PROFILE_FIELDS = ("gender", "age", "race")
FIX_FIELDS = ("gender", "age", "age_band", "race", "mask", "swap")
BAND_ALIASES = {**{name: b for b, name in enumerate(labels.AGE_BANDS)},
                **{text: b for b, text in enumerate(labels.AGE_BAND_RANGES)},
                **{str(b): b for b in range(len(labels.AGE_BANDS))}, f"{labels.MIDDLE_MAX_AGE + 1}+": len(labels.AGE_BANDS) - 1}


def default_actor() -> str:
    return os.environ.get("MASKKIT_USER") or getpass.getuser() or "unknown"


@dataclass(frozen=True)
class Change:
    """One validated change of one field of one profile (image_id None) or image."""

    profile_id: int
    image_id: int | None
    field: str
    new_value: str
    label: str  # readable target, e.g. 000123 or 000123:normal


# ---------------------------------------------------------------- finding people and images


def find_profile(session: Session, ident: str) -> Profile:
    """A profile by csv id (000123, 001498-1) or folder name; an id shared by folders must be a folder."""
    ident = str(ident).strip()
    found = list(session.execute(
        select(Profile).where(or_(Profile.person_id == ident, Profile.folder == ident)).order_by(Profile.id)
    ).scalars())
    if not found:
        raise NotFound(f"unknown person {ident!r}: no profile has this id or folder", what="person")
    exact = [p for p in found if p.folder == ident]
    if exact:
        return exact[0]
    if len(found) > 1:
        raise InvalidInput(
            f"id {ident!r} is used by {len(found)} folders ({', '.join(p.folder for p in found)}): name the folder"
        )
    return found[0]


def find_image(session: Session, profile: Profile, kind: str) -> Image:
    kind = kind.strip()
    if kind not in labels.IMAGE_KINDS:
        raise InvalidInput(f"unknown image kind {kind!r} (kinds: {', '.join(labels.IMAGE_KINDS)})")
    image = session.execute(
        select(Image).where(Image.profile_id == profile.id, Image.kind == kind)
    ).scalars().first()
    if image is None:
        raise NotFound(f"{profile.folder} has no {kind} image", what="image")
    return image


def parse_image_ref(ref: str) -> tuple[str, str]:
    """'000123:normal' -> ('000123', 'normal')."""
    if ":" not in ref:
        raise InvalidInput(f"image {ref!r} must be written ID:KIND, e.g. 000123:incorrect_mask")
    ident, kind = ref.rsplit(":", 1)
    return ident, kind


# ---------------------------------------------------------------- validating values


def _age(value) -> int:
    try:
        age = int(str(value).strip())
    except ValueError:
        raise InvalidInput(f"age {value!r} is not a whole number") from None
    if not labels.MIN_AGE <= age <= labels.MAX_AGE:
        raise InvalidInput(f"age {age} is out of range {labels.MIN_AGE}..{labels.MAX_AGE}")
    return age


def age_for_band(current_age: int, band: int) -> int:
    """The age nearest to current_age inside the band (the smallest change that moves it there)."""
    low, high = labels.BAND_AGE_RANGES[band]
    return min(max(current_age, low), high)


def _band(value) -> int:
    key = str(value).strip().lower()
    if key not in BAND_ALIASES:
        raise InvalidInput(f"age band {value!r} is not one of young, middle, old")
    return BAND_ALIASES[key]


def _mask(value) -> int:
    key = str(value).strip().lower()
    if key in ("0", "1", "2"):
        return int(key)
    try:
        return labels.mask_index(key)
    except ValueError:
        raise InvalidInput(f"mask state {value!r} is not one of wear, incorrect, not_wear (or a kind)") from None


def plan_fix(session: Session, ident: str, field: str, value, kind: str | None = None) -> list[Change]:
    """Validate one requested fix and resolve it to concrete changes (nothing is written)."""
    field = field.strip().lower()
    if field not in FIX_FIELDS:
        raise InvalidInput(f"unknown field {field!r} (fields: {', '.join(FIX_FIELDS)})")
    profile = find_profile(session, ident)
    return plan_for(session, profile, field, value, kind, who=profile.person_id if profile.person_id == ident else None)


def plan_for(session: Session, profile: Profile, field: str, value, kind: str | None = None,
             who: str | None = None) -> list[Change]:
    """Like plan_fix, for a profile already found."""
    who = who or profile.folder
    if field not in FIX_FIELDS:
        raise InvalidInput(f"unknown field {field!r} (fields: {', '.join(FIX_FIELDS)})")
    if field == "gender":
        v = str(value).strip().lower()
        if v == "flip":
            v = "female" if profile.gender == "male" else "male"
        if v not in labels.GENDERS:
            raise InvalidInput(f"gender {value!r} is not one of male, female (or flip)")
        return [Change(profile.id, None, "gender", v, who)]
    if field == "age":
        return [Change(profile.id, None, "age", str(_age(value)), who)]
    if field == "age_band":
        return [Change(profile.id, None, "age", str(age_for_band(profile.age, _band(value))), who)]
    if field == "race":
        v = str(value).strip()
        if not v:
            raise InvalidInput("race must not be empty")
        return [Change(profile.id, None, "race", v, who)]
    if field == "mask":
        if not kind:
            raise InvalidInput("a mask fix needs the image kind (ID:KIND)")
        image = find_image(session, profile, kind)
        return [Change(profile.id, image.id, "mask", str(_mask(value)), f"{who}:{kind}")]
    # swap: value 'kindA/kindB'
    parts = [p.strip() for p in str(value).replace(",", "/").split("/") if p.strip()]
    if len(parts) != 2 or parts[0] == parts[1]:
        raise InvalidInput(f"swap needs two different image kinds, e.g. incorrect_mask/normal, got {value!r}")
    a, b = (find_image(session, profile, k) for k in parts)
    return [Change(profile.id, a.id, "mask", str(b.mask), f"{who}:{a.kind}"),
            Change(profile.id, b.id, "mask", str(a.mask), f"{who}:{b.kind}")]


# ---------------------------------------------------------------- writing


def _current(session: Session, change: Change) -> str:
    """The current value, read after taking the row's write lock (no lost updates between reviewers)."""
    if change.image_id is None:
        column = getattr(Profile, change.field)
        session.execute(update(Profile).where(Profile.id == change.profile_id).values({change.field: column}))
        return str(session.execute(select(column).where(Profile.id == change.profile_id)).scalar_one())
    session.execute(update(Image).where(Image.id == change.image_id).values(mask=Image.mask))
    return str(session.execute(select(Image.mask).where(Image.id == change.image_id)).scalar_one())


def _set(session: Session, change: Change) -> None:
    if change.image_id is None:
        value = int(change.new_value) if change.field == "age" else change.new_value
        session.execute(update(Profile).where(Profile.id == change.profile_id).values({change.field: value}))
    else:
        session.execute(update(Image).where(Image.id == change.image_id).values(mask=int(change.new_value)))


def apply_changes(session: Session, changes: Iterable[Change], *, actor: str | None = None, reason: str | None = None,
                  source: str = "cli") -> tuple[list[LabelEvent], list[Change]]:
    """Write the changes and their events (caller commits). Returns (events written, no-op changes skipped)."""
    actor = actor or default_actor()
    events, unchanged = [], []
    for change in changes:
        old = _current(session, change)
        if old == change.new_value:
            unchanged.append(change)
            continue
        _set(session, change)
        event = LabelEvent(profile_id=change.profile_id, image_id=change.image_id, field=change.field, old_value=old,
                           new_value=change.new_value, reason=reason, actor=actor, source=source, created_at=utcnow())
        session.add(event)
        events.append(event)
    session.flush()
    return events, unchanged


def relabel_many(catalog: Catalog, fixes: list[tuple[str, str, object, str | None]], *, actor: str | None = None,
                 reason: str | None = None, source: str = "cli") -> tuple[list, list]:
    """Several (person, field, value, image kind) fixes in one transaction: all or none. Returns (events, unchanged)."""
    from .engine import retry_when_busy

    def write():
        with catalog.session() as session:
            changes = [c for ident, field, value, kind in fixes for c in plan_fix(session, ident, field, value, kind)]
            events, unchanged = apply_changes(session, changes, actor=actor, reason=reason, source=source)
            session.commit()
        return events, unchanged

    return retry_when_busy(write)


def relabel(catalog: Catalog, ident: str, field: str, value, *, kind: str | None = None, reason: str | None = None,
            actor: str | None = None, source: str = "cli") -> tuple[list[LabelEvent], list[Change]]:
    """Validate and apply one fix in one transaction."""
    return relabel_many(catalog, [(ident, field, value, kind)], actor=actor, reason=reason, source=source)


def undo(catalog: Catalog, event_id: int, *, actor: str | None = None, reason: str | None = None) -> LabelEvent:
    """Restore the value an event replaced; recorded as an event of its own."""
    with catalog.session() as session:
        event = session.get(LabelEvent, event_id)
        if event is None:
            raise NotFound(f"unknown label event {event_id}")
        if event.undone_by_id is not None:
            raise Conflict(f"event {event_id} was already undone by event {event.undone_by_id}")
        change = Change(event.profile_id, event.image_id, event.field, event.old_value, "")
        current = _current(session, change)
        if current != event.new_value:
            later = session.execute(
                select(LabelEvent.id).where(LabelEvent.profile_id == event.profile_id, LabelEvent.field == event.field,
                                            LabelEvent.image_id.is_(None) if event.image_id is None
                                            else LabelEvent.image_id == event.image_id,
                                            LabelEvent.id > event.id).order_by(LabelEvent.id.desc())
            ).scalars().first()
            raise Conflict(f"event {event_id}'s {event.field} was changed again since (event {later}); undo that first")
        _set(session, change)
        new = LabelEvent(profile_id=event.profile_id, image_id=event.image_id, field=event.field, old_value=current,
                         new_value=event.old_value, reason=reason or f"undo of event {event_id}",
                         actor=actor or default_actor(), source="undo", undoes_id=event.id, created_at=utcnow())
        session.add(new)
        session.flush()
        event.undone_by_id = new.id
        session.add(event)
        session.commit()
        return new


# ---------------------------------------------------------------- bulk fixes


@dataclass
class BulkResult:
    events: list[LabelEvent]
    unchanged: list[Change]
    skipped: list[str]  # ids not in the catalog (known fixes only)


def _read_fix_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    from ..files import read_csv

    header, body = read_csv(path, "fixes file")
    missing = [c for c in ("id", "field", "value") if c not in header]
    if missing:
        raise InvalidInput(f"{path}: wrong header {','.join(header)!r}: missing column(s) {', '.join(missing)} "
                           "(expected id,field,value[,kind][,reason])")
    rows = []
    for line, values in body:
        if len(values) > len(header):
            raise InvalidInput(f"{path}: row {line}: more fields than the header has")
        rows.append((line, {h: (v or "").strip() for h, v in zip(header, values + [""] * (len(header) - len(values)))}))
    return rows


def apply_fix_rows(catalog: Catalog, path: Path, rows, *, actor: str | None, source: str, skip_unknown: bool,
                   reason: str | None = None, once: bool = False) -> BulkResult:
    """Validate every row first, then apply all of them in one transaction (all or nothing).
    `once`: a field that already has a (not undone) event from this source is left alone, so that
    relative fixes such as a gender flip are not applied twice."""
    with catalog.session() as session:
        planned: list[tuple[list[Change], str | None]] = []
        skipped = []
        done = set()
        if once:
            done = {tuple(row) for row in session.execute(
                select(LabelEvent.profile_id, LabelEvent.image_id, LabelEvent.field)
                .where(LabelEvent.source == source, LabelEvent.undone_by_id.is_(None)))}
        for line, row in rows:
            field_name = row.get("field", "")
            kind = row.get("kind") or None
            ident = row.get("id", "")
            if field_name == "mask" and not kind and ":" in ident:
                ident, kind = parse_image_ref(ident)
            try:
                changes = plan_fix(session, ident, field_name, row.get("value", ""), kind)
            except MaskkitError as exc:
                if skip_unknown and isinstance(exc, NotFound) and exc.what == "person":
                    skipped.append(ident)
                    continue
                raise InvalidInput(f"{path}: row {line}: {exc}") from None
            kept = [c for c in changes if (c.profile_id, c.image_id, c.field) not in done]
            planned.append((kept, row.get("reason") or reason))
        events, unchanged = [], []
        for changes, why in planned:
            e, u = apply_changes(session, changes, actor=actor, reason=why, source=source)
            events += e
            unchanged += u
        session.commit()
        return BulkResult(events, unchanged, skipped)


def relabel_from_csv(catalog: Catalog, path, *, actor: str | None = None, reason: str | None = None) -> BulkResult:
    path = Path(path)
    return apply_fix_rows(catalog, path, _read_fix_rows(path), actor=actor, source="csv", skip_unknown=False,
                          reason=reason)


def known_fixes_path() -> Path:
    return Path(str(files("maskkit.resources") / "known_fixes.csv"))


def apply_known_fixes(catalog: Catalog, *, include_less_agreed: bool = False, actor: str | None = None) -> BulkResult:
    """The label errors several teams agreed on for the real competition data (ids absent here are skipped)."""
    path = known_fixes_path()
    rows = [(line, row) for line, row in _read_fix_rows(path)
            if include_less_agreed or row.get("agreement") == "agreed"]
    return apply_fix_rows(catalog, path, rows, actor=actor, source="known-fixes", skip_unknown=True, once=True)


# ---------------------------------------------------------------- history, replay, export


def history(catalog: Catalog, ident: str | None = None, limit: int | None = None) -> list[dict]:
    with catalog.session() as session:
        stmt = (select(LabelEvent, Profile.person_id, Profile.folder, Image.kind)
                .join(Profile, Profile.id == LabelEvent.profile_id)
                .outerjoin(Image, Image.id == LabelEvent.image_id).order_by(LabelEvent.id))
        if ident:
            stmt = stmt.where(LabelEvent.profile_id == find_profile(session, ident).id)
        rows = session.execute(stmt).all()
    if limit:
        rows = rows[-limit:]
    return [dict(id=e.id, person=pid, folder=folder, image=kind, field=e.field, old=e.old_value, new=e.new_value,
                 actor=e.actor, source=e.source, reason=e.reason, at=e.created_at, undoes=e.undoes_id,
                 undone_by=e.undone_by_id) for e, pid, folder, kind in rows]


def replay_labels(session: Session) -> tuple[dict[int, dict], dict[int, int]]:
    """Labels recomputed from the originals and the events: ({profile_id: {gender, age, race}}, {image_id: mask})."""
    people = {p.id: {"gender": p.orig_gender, "age": p.orig_age, "race": p.orig_race}
              for p in session.execute(select(Profile)).scalars()}
    masks = {i: m for i, m in session.execute(select(Image.id, Image.orig_mask))}
    for e in session.execute(select(LabelEvent).order_by(LabelEvent.id)).scalars():
        if e.image_id is None:
            people[e.profile_id][e.field] = int(e.new_value) if e.field == "age" else e.new_value
        else:
            masks[e.image_id] = int(e.new_value)
    return people, masks


def export_train_csv(catalog: Catalog, out: Path) -> int:
    """Write a train.csv (id,gender,race,age,path) with the current labels of original people."""
    from ..files import atomic_path

    with catalog.session() as session:
        rows = session.execute(
            select(Profile.person_id, Profile.gender, Profile.race, Profile.age, Profile.folder)
            .where(Profile.origin == "original").order_by(Profile.csv_row, Profile.id)
        ).all()
    with atomic_path(out, "--export file") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "gender", "race", "age", "path"])
        writer.writerows(rows)
    return len(rows)


def record_review(session: Session, profile_id: int, reviewer: str, verdict: str, *, image_id: int | None = None,
                  note: str | None = None, event_id: int | None = None) -> Review:
    review = Review(profile_id=profile_id, image_id=image_id, reviewer=reviewer, verdict=verdict, note=note,
                    event_id=event_id, created_at=utcnow())
    session.add(review)
    return review
