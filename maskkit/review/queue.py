"""Which people a reviewer sees, in which order, and how far each reviewer has got."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select

from ..errors import InvalidInput
from ..catalog.engine import Catalog
from ..catalog.models import LabelEvent, Profile, Review

QUEUE_ORDERS = ("id", "unreviewed", "suspects")
VISITED = ("accept", "fix", "bad", "skip")  # a verdict that moves the reviewer on
DONE = ("accept", "fix", "bad")  # a verdict that counts as reviewed


@dataclass
class Queue:
    profile_ids: list[int]
    start: str | None
    order: str
    hints: dict = field(default_factory=dict)  # profile id -> what ranked them (suspects queue)

    def __len__(self) -> int:
        return len(self.profile_ids)

    def only(self, keep: set[int]) -> "Queue":
        """The same queue (order, hints) narrowed to the people in `keep` (a reviewer's assigned share)."""
        ids = [pid for pid in self.profile_ids if pid in keep]
        return Queue(ids, self.start, self.order, {pid: self.hints[pid] for pid in ids if pid in self.hints})


def build_queue(catalog: Catalog, *, start: str | None = None, count: int | None = None, order: str = "id",
                ranked: list[dict] | None = None) -> Queue:
    """People from `start` (a person id, inclusive) in id order; `unreviewed` drops those anyone reviewed."""
    if order not in QUEUE_ORDERS:
        raise InvalidInput(f"unknown queue {order!r} (queues: {', '.join(QUEUE_ORDERS)})")
    if order == "suspects":
        if ranked is None:  # the ranking comes from the evaluate layer (evaluate.suspects.suspects), passed in
            raise InvalidInput("the suspects queue ranks people by out-of-fold probabilities or the face prior: "
                               "give --run RUN (an oof .npz from `maskkit train --folds K`) or --run prior")
        rows = ranked[:count] if count else ranked
        return Queue([r["profile_id"] for r in rows], start, order, {r["profile_id"]: r.get("hint") for r in rows})
    if count is not None and count < 1:
        raise InvalidInput(f"--count must be at least 1, got {count}")
    with catalog.session() as session:
        stmt = select(Profile.id).where(Profile.origin == "original").order_by(Profile.person_id, Profile.folder)
        if start:
            stmt = stmt.where(Profile.person_id >= start)
        ids = list(session.execute(stmt).scalars())
        if order == "unreviewed":
            done = set(session.execute(select(Review.profile_id).where(Review.verdict.in_(DONE))).scalars())
            ids = [i for i in ids if i not in done]
    if count is not None:
        ids = ids[:count]
    if not ids:
        where = f" from id {start}" if start else ""
        raise InvalidInput(f"no people to review{where} (queue {order!r}): the catalog has none there; run ingest?")
    return Queue(ids, start, order)


def settled_people(catalog: Catalog) -> set[int]:
    """People whose labels, as they are now, a reviewer has settled: a done verdict (accept, fix, bad) at least as
    new as every change to their labels (a fix's own change is made just before its verdict). A change after it
    (a relabel, an undo, a bulk fix) unsettles them: the verdict was on other labels."""
    with catalog.session() as session:
        reviewed = dict(session.execute(select(Review.profile_id, func.max(Review.created_at))
                                        .where(Review.verdict.in_(DONE)).group_by(Review.profile_id)).all())
        changed = dict(session.execute(select(LabelEvent.profile_id, func.max(LabelEvent.created_at))
                                       .group_by(LabelEvent.profile_id)).all())
    return {pid for pid, at in reviewed.items() if pid not in changed or changed[pid] <= at}


def progress(catalog: Catalog, queue: Queue) -> dict:
    """Reviewed people of this queue per reviewer: {'total': n, 'reviewers': {name: reviewed}}."""
    wanted = set(queue.profile_ids)
    per: dict[str, set[int]] = {}
    with catalog.session() as session:
        for reviewer, pid in session.execute(
            select(Review.reviewer, Review.profile_id).where(Review.verdict.in_(DONE)).distinct()
        ):
            if pid in wanted:
                per.setdefault(reviewer, set()).add(pid)
    any_done = set().union(*per.values()) if per else set()
    return {"total": len(queue), "reviewed": len(any_done),
            "reviewers": {name: len(pids) for name, pids in sorted(per.items())}}


def resume_index(catalog: Catalog, queue: Queue, reviewer: str) -> int:
    """Index of the first person in the queue this reviewer has not moved past yet."""
    with catalog.session() as session:
        visited = set(session.execute(
            select(Review.profile_id).where(Review.reviewer == reviewer, Review.verdict.in_(VISITED))
        ).scalars())
    for i, pid in enumerate(queue.profile_ids):
        if pid not in visited:
            return i
    return len(queue) - 1
