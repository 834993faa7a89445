"""Sharing review work out: `maskkit audit --assign alice,bob,carol` and `maskkit audit --status`."""

from __future__ import annotations

from sqlalchemy import delete, func, insert, select

from ..catalog.engine import Catalog
from ..catalog.models import Assignment, Review, utcnow
from ..errors import InvalidInput
from .queue import DONE, Queue


def _reviewed(session) -> set[int]:
    return set(session.execute(select(Review.profile_id).where(Review.verdict.in_(DONE))).scalars())


def assign(catalog: Catalog, queue: Queue, reviewers: list[str]) -> dict[str, int]:
    """Share the queue's not-yet-reviewed people among reviewers. Stable: existing assignments stay;
    people of reviewers no longer listed, and not reviewed yet, are shared out again; new people go to
    whoever has the least outstanding work (ties in the given order). Returns new people per reviewer."""
    reviewers = [r.strip() for r in reviewers if r.strip()]
    if not reviewers:
        raise InvalidInput("--assign needs reviewer names, e.g. --assign alice,bob,carol")
    if len(set(reviewers)) != len(reviewers):
        raise InvalidInput("a reviewer is named twice in --assign")
    wanted = set(queue.profile_ids)
    with catalog.session() as session:
        reviewed = _reviewed(session)
        current = dict(session.execute(select(Assignment.profile_id, Assignment.reviewer)).all())
        released = [pid for pid, who in current.items() if who not in reviewers and pid not in reviewed and pid in wanted]
        if released:
            session.execute(delete(Assignment).where(Assignment.profile_id.in_(released)))
            for pid in released:
                current.pop(pid)
        load = {r: 0 for r in reviewers}
        for pid, who in current.items():
            if who in load and pid not in reviewed:
                load[who] += 1
        todo = [pid for pid in queue.profile_ids if pid not in reviewed and pid not in current]
        new_rows, added = [], {r: 0 for r in reviewers}
        now = utcnow()
        for pid in todo:
            who = min(reviewers, key=lambda r: (load[r], reviewers.index(r)))
            load[who] += 1
            added[who] += 1
            new_rows.append(dict(profile_id=pid, reviewer=who, assigned_at=now))
        if new_rows:
            session.execute(insert(Assignment), new_rows)
        session.commit()
    return added


def share_of(catalog: Catalog, reviewer: str) -> list[int]:
    with catalog.session() as session:
        return list(session.execute(select(Assignment.profile_id).where(Assignment.reviewer == reviewer)).scalars())


def has_assignments(catalog: Catalog) -> bool:
    with catalog.session() as session:
        return session.execute(select(func.count()).select_from(Assignment)).scalar_one() > 0


def status(catalog: Catalog, queue: Queue | None = None) -> list[dict]:
    """Per reviewer: assigned, reviewed of those, fixes made, people left; plus unassigned people left."""
    with catalog.session() as session:
        reviewed = _reviewed(session)
        assigned = session.execute(select(Assignment.reviewer, Assignment.profile_id)).all()
        fixes = dict(session.execute(select(Review.reviewer, func.count()).where(Review.verdict == "fix")
                                     .group_by(Review.reviewer)).all())
        done_by = dict(session.execute(select(Review.reviewer, func.count(Review.profile_id.distinct()))
                                       .where(Review.verdict.in_(DONE)).group_by(Review.reviewer)).all())
    rows: dict[str, dict] = {}
    for who, pid in assigned:
        row = rows.setdefault(who, {"reviewer": who, "assigned": 0, "reviewed": 0, "left": 0})
        row["assigned"] += 1
        row["reviewed" if pid in reviewed else "left"] += 1
    for who in set(fixes) | set(done_by):
        rows.setdefault(who, {"reviewer": who, "assigned": 0, "reviewed": 0, "left": 0})
    for who, row in rows.items():
        row["fixes"] = fixes.get(who, 0)
        row["people_reviewed_total"] = done_by.get(who, 0)
    out = sorted(rows.values(), key=lambda r: r["reviewer"])
    if queue is not None:
        assigned_ids = {pid for _, pid in assigned}
        out.append({"reviewer": "(unassigned)", "assigned": 0, "reviewed": 0, "fixes": 0, "people_reviewed_total": 0,
                    "left": sum(1 for pid in queue.profile_ids if pid not in reviewed and pid not in assigned_ids)})
    return out
