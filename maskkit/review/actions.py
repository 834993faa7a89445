"""What a reviewer can do to one person, each saved at once: a label fix writes its label_event and
review row in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from .. import labels
from ..catalog.engine import Catalog
from ..catalog.models import DataRoot, Image, LabelEvent, Profile, Review
from ..catalog.relabel import apply_changes, plan_for, record_review
from ..errors import InvalidInput, NotFound

ACTIONS = ("accept", "skip", "bad", "note", "gender", "age", "age_band", "mask", "swap")


def person_view(catalog: Catalog, profile_id: int, reviewer: str | None = None) -> dict:
    """Everything the review page shows for one person."""
    with catalog.session() as session:
        profile = session.get(Profile, profile_id)
        if profile is None:
            raise NotFound(f"unknown profile {profile_id}")
        root = session.get(DataRoot, profile.root_id)
        images = list(session.execute(select(Image).where(Image.profile_id == profile_id)).scalars())
        images.sort(key=lambda i: labels.IMAGE_KINDS.index(i.kind) if i.kind in labels.IMAGE_KINDS else 99)
        reviews = list(session.execute(
            select(Review).where(Review.profile_id == profile_id).order_by(Review.id)).scalars())
        events = session.execute(
            select(LabelEvent).where(LabelEvent.profile_id == profile_id).order_by(LabelEvent.id)).scalars().all()
    band = labels.age_band(profile.age)
    return {
        "profile_id": profile.id,
        "person_id": profile.person_id,
        "folder": profile.folder,
        "gender": profile.gender,
        "age": profile.age,
        "age_band": labels.AGE_BANDS[band],
        "age_band_range": labels.AGE_BAND_RANGES[band],
        "race": profile.race,
        "original": {"gender": profile.orig_gender, "age": profile.orig_age},
        "root": root.path,
        "images": [
            {"id": i.id, "kind": i.kind, "mask": labels.MASK_STATES[i.mask], "orig_mask": labels.MASK_STATES[i.orig_mask],
             "damaged": i.damaged, "url": f"/img/{i.id}/{i.sha1[:16]}.jpg", "path": str(Path(root.path) / i.path)}
            for i in images
        ],
        "reviews": [{"reviewer": r.reviewer, "verdict": r.verdict, "note": r.note, "image_id": r.image_id,
                     "at": r.created_at.isoformat()} for r in reviews],
        "mine": [r.verdict for r in reviews if reviewer and r.reviewer == reviewer],
        "events": len(events),
    }


def act(catalog: Catalog, profile_id: int, reviewer: str, action: str, *, value=None, kind: str | None = None,
        note: str | None = None) -> dict:
    """Apply one reviewer action to a person; returns {'events': [...], 'review': id}."""
    if action not in ACTIONS:
        raise InvalidInput(f"unknown action {action!r} (actions: {', '.join(ACTIONS)})")
    if not reviewer:
        raise InvalidInput("a reviewer name is needed")
    from ..catalog.engine import retry_when_busy

    return retry_when_busy(lambda: _act(catalog, profile_id, reviewer, action, value=value, kind=kind, note=note))


def _act(catalog: Catalog, profile_id: int, reviewer: str, action: str, *, value=None, kind: str | None = None,
         note: str | None = None) -> dict:
    with catalog.session() as session:
        profile = session.get(Profile, profile_id)
        if profile is None:
            raise NotFound(f"unknown profile {profile_id}")
        event_ids: list[int] = []
        image_id = None
        if action in ("accept", "skip", "bad", "note"):
            if action == "note" and not (note or "").strip():
                raise InvalidInput("a note needs text")
            review = record_review(session, profile_id, reviewer, action, note=note)
        else:
            changes = plan_for(session, profile, action, value, kind)
            events, _unchanged = apply_changes(session, changes, actor=reviewer, reason=note or "audit",
                                               source="audit")
            event_ids = [e.id for e in events]
            image_id = changes[0].image_id if len(changes) == 1 else None
            review = record_review(session, profile_id, reviewer, "fix", image_id=image_id, note=note or action,
                                   event_id=event_ids[-1] if event_ids else None)
        session.commit()
        return {"events": event_ids, "review": review.id}


MAX_BODY = 64 * 1024
MAX_TEXT = 1000


@dataclass
class ActionRequest:
    profile_id: int
    action: str
    reviewer: str | None
    value: str | int | None
    kind: str | None
    note: str | None


def parse_action_request(body: bytes) -> ActionRequest:
    """A review page's POST body, checked field by field; InvalidInput names what is wrong."""
    import json

    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput("request body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    pid = data.get("profile_id")
    if isinstance(pid, str) and pid.strip().isdigit():
        pid = int(pid)
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        raise InvalidInput(f"profile_id must be a positive whole number, got {pid!r}")
    action = data.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    out = {}
    for name, types in (("reviewer", (str,)), ("kind", (str,)), ("note", (str,)), ("value", (str, int))):
        v = data.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, types)):
            raise InvalidInput(f"{name} must be {' or '.join(t.__name__ for t in types)}, got {type(v).__name__}")
        if isinstance(v, str) and len(v) > MAX_TEXT:
            raise InvalidInput(f"{name} is longer than {MAX_TEXT} characters")
        out[name] = v
    if out["reviewer"] is not None and not out["reviewer"].strip():
        out["reviewer"] = None
    return ActionRequest(pid, action, out["reviewer"], out["value"], out["kind"], out["note"])


def public_view(view: dict) -> dict:
    """What the browser may see of a person: no absolute paths."""
    clean = {k: v for k, v in view.items() if k != "root"}
    clean["images"] = [{k: v for k, v in im.items() if k != "path"} for im in view["images"]]
    return clean
