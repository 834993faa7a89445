"""Profile-level splits of a view, stratified on gender x age band: a holdout (fold 1 is validation)
or k folds. People are split as identities: a synthetic person lands in the fold of the real person it
was made from, and people whose photos are byte-identical (the same person ingested twice, from two
folders or two copies of a dataset) land in one fold, so no validation face leaks into training."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
from sqlalchemy import delete, insert, select

from .. import labels
from ..catalog.engine import Catalog
from ..catalog.similar import near_pairs, normal_hashes
from ..catalog.models import Profile, Split, SplitMember, View, utcnow
from ..errors import Conflict, InvalidInput, NotFound
from ..names import check_name
from .views import _did_you_mean, get_view, snapshot, staleness, view_people


def _lineage(session) -> dict[int, tuple[int | None, int, str, str]]:
    return {pid: (parent, age, gender, origin) for pid, parent, age, gender, origin in session.connection().execute(
        select(Profile.id, Profile.parent_id, Profile.age, Profile.gender, Profile.origin))}


def root_of(pid: int, lineage: dict) -> int:
    seen = set()
    while lineage[pid][0] is not None and pid not in seen:
        seen.add(pid)
        pid = lineage[pid][0]
    return pid


def _shared_content(session, people: list[int]) -> list[tuple[int, int]]:
    """Pairs of these people with at least one byte-identical image (same sha1)."""
    from sqlalchemy.orm import aliased

    from ..catalog.models import Image

    a, b = aliased(Image), aliased(Image)
    wanted = set(people)
    rows = session.connection().execute(
        select(a.profile_id, b.profile_id).join(b, (a.sha1 == b.sha1) & (a.profile_id < b.profile_id))
        .where(a.damaged.is_(False), b.damaged.is_(False)).distinct()).all()
    return [(x, y) for x, y in rows if x in wanted and y in wanted]


def identity_groups(session, people: list[int], lineage: dict) -> dict[int, int]:
    """person -> one representative of their identity: the real ancestor of synthetic people, merged with
    everyone sharing byte-identical photos or a near-identical normal photo (perceptual hash; union-find)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(x: int, y: int) -> None:
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)

    for p in people:
        union(p, root_of(p, lineage))
    for x, y in _shared_content(session, people):
        union(x, y)
    for x, y, _ in near_pairs(normal_hashes(session, [p for p in people if lineage[p][3] == "original"])):
        union(x, y)
    session.commit()  # perceptual hashes computed on the way are kept
    return {p: find(p) for p in people}


def _strata(roots: list[int], lineage: dict, min_count: int) -> list[str]:
    """gender x age band per person; groups too small to stratify fall back to the band, then to one
    'rare' group, which joins the largest group if it is still too small."""
    out = [f"{lineage[r][2]}/{labels.age_band(lineage[r][1])}" for r in roots]
    bands = [f"band{labels.age_band(lineage[r][1])}" for r in roots]
    for fallback in (bands, ["rare"] * len(roots)):
        counts = Counter(out)
        out = [label if counts[label] >= min_count else fb for label, fb in zip(out, fallback)]
    counts = Counter(out)
    if counts.get("rare", min_count) < min_count:
        largest = max((c, label) for label, c in counts.items() if label != "rare")[1] if len(counts) > 1 else "rare"
        out = [largest if label == "rare" else label for label in out]
    return out


def make_split(catalog: Catalog, name: str, view_name: str, *, folds: int | None = None, val: float | None = None,
               seed: int = 0, replace: bool = False, like: str | None = None) -> Split:
    """A holdout (val) or k-fold (folds) split of a view's people, stratified on gender x age band, identities
    kept together. `like`: the same assignment as another split (every person in the fold of their identity
    there), so that runs on different views of the same people are scored on the same people."""
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    check_name(name, "split name")
    if like is not None:
        if folds is not None or val is not None:
            raise InvalidInput("--like copies another split's folds: give it without --folds or --val")
        reference = get_split(catalog, like)
        folds, val, seed = (reference.folds if reference.kind == "kfold" else None), reference.val_fraction, reference.seed
        if reference.kind == "holdout" and val is None:
            val = 0.2
    if (folds is None) == (val is None):
        raise InvalidInput("give either --folds K (k-fold) or --val FRACTION (holdout)")
    if folds is not None and folds < 2:
        raise InvalidInput(f"--folds must be at least 2, got {folds}")
    if val is not None and not 0 < val < 1:
        raise InvalidInput(f"--val must be between 0 and 1, got {val}")
    view = get_view(catalog, view_name)
    state = staleness(catalog, view_name)
    if state["stale"]:
        raise Conflict(f"view {view_name!r} is stale ({state.get('reason') or str(state['changed_labels']) + ' labels changed'}):"
                           f" maskkit group --refresh {view_name} first")
    with catalog.session() as session:
        lineage = _lineage(session)
        if session.execute(select(Split.id).where(Split.name == name)).first() and not replace:
            raise Conflict(f"split {name!r} exists (--replace to make it again)")
    used = runs_of_split(catalog, name)
    if used:
        raise Conflict(f"split {name!r} cannot be made again: runs {', '.join(used[:5])}{' ...' if len(used) > 5 else ''} "
                       "were trained on it; give the new split another name")
    people = sorted(view_people(catalog, view_name))
    with catalog.session() as session:
        group = identity_groups(session, people, lineage)
    roots = sorted(set(group.values()))
    n_splits = folds or 2
    if len(roots) < n_splits:
        raise InvalidInput(f"{len(roots)} independent people cannot be split into {n_splits} parts")
    fine = _strata(roots, lineage, n_splits if folds else 2)
    coarse = [f"band{labels.age_band(lineage[r][1])}" for r in roots]
    fold_of_root: dict[int, int] = {}
    if like is not None:
        fold_of_root = _folds_like(catalog, like, people, group, lineage)
    # stratify as finely as the numbers allow: gender x band, else band, else not at all (tiny views)
    for y in ((fine, coarse, ["all"] * len(roots)) if like is None else ()):
        try:
            if folds:
                splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
                for k, (_, test) in enumerate(splitter.split(np.zeros(len(roots)), y)):
                    for i in test:
                        fold_of_root[roots[i]] = k
            else:
                splitter = StratifiedShuffleSplit(n_splits=1, test_size=val, random_state=seed)
                train, test = next(splitter.split(np.zeros(len(roots)), y))
                fold_of_root.update({roots[i]: 0 for i in train})
                fold_of_root.update({roots[i]: 1 for i in test})
            break
        except ValueError:
            fold_of_root.clear()
    if not fold_of_root:
        raise InvalidInput(f"{len(roots)} people cannot be split this way (--val {val}, --folds {folds})")
    with catalog.session() as session:
        old = session.execute(select(Split).where(Split.name == name)).scalars().first()
        if old is not None:
            session.execute(delete(SplitMember).where(SplitMember.split_id == old.id))
            session.delete(old)
            session.flush()
        split = Split(name=name, view_id=view.id, view_hash=view.content_hash, kind="kfold" if folds else "holdout",
                      folds=folds or 2, val_fraction=val, seed=seed, created_at=utcnow())
        session.add(split)
        session.flush()
        session.execute(insert(SplitMember), [dict(split_id=split.id, profile_id=p, fold=fold_of_root[group[p]])
                                              for p in people])
        session.commit()
        return split


def _folds_like(catalog: Catalog, like: str, people: list[int], group: dict[int, int], lineage: dict) -> dict[int, int]:
    """identity -> its fold in another split (a person there, or their real ancestor)."""
    reference = fold_of(catalog, like)
    out: dict[int, int] = {}
    missing = []
    for p in people:
        known = next((reference[q] for q in (p, root_of(p, lineage), group[p]) if q in reference), None)
        if known is None:
            missing.append(p)
        else:
            out.setdefault(group[p], known)
    if missing:
        raise InvalidInput(f"{len(missing)} people of this view (and their real ancestors) are not in split {like!r}: "
                           "it cannot be copied; make the split from the view")
    return out


def runs_of_split(catalog: Catalog, name: str) -> list[str]:
    """Names of the runs trained on a split (a split with runs is never made again: they say what they saw)."""
    from ..catalog.models import Run

    with catalog.session() as session:
        return list(session.execute(select(Run.name).join(Split, Split.id == Run.split_id)
                                    .where(Split.name == name).order_by(Run.id)).scalars())


def get_split(catalog: Catalog, name: str) -> Split:
    with catalog.session() as session:
        split = session.execute(select(Split).where(Split.name == name)).scalars().first()
        if split is None:
            names = list(session.execute(select(Split.name)).scalars())
            raise NotFound(f"unknown split {name!r}{_did_you_mean(name, names)} "
                               f"(splits: {', '.join(names) or 'none yet: maskkit split NAME --view VIEW'})")
        return split


def fold_of(catalog: Catalog, name: str) -> dict[int, int]:
    split = get_split(catalog, name)
    with catalog.session() as session:
        return dict(session.execute(select(SplitMember.profile_id, SplitMember.fold)
                                    .where(SplitMember.split_id == split.id)).all())


@dataclass
class SplitCheck:
    split: str
    kind: str
    folds: int
    seed: int
    view: str | None
    view_hash_matches: bool
    leaks: list[str]  # empty: no person, ancestor or photo on two sides
    per_fold: dict[int, dict]
    content_checked: int  # photos compared by content

    def as_dict(self) -> dict:
        return asdict(self)


def check_split(catalog: Catalog, name: str) -> SplitCheck:
    """Proof of no leakage (every person, and every synthetic person's real ancestor, on one side only)
    and the class balance of each fold."""
    split = get_split(catalog, name)
    folds = fold_of(catalog, name)
    with catalog.session() as session:
        lineage = _lineage(session)
        view = session.get(View, split.view_id) if split.view_id else None
    problems = []
    root_fold: dict[int, int] = {}
    for pid, fold in folds.items():
        root = root_of(pid, lineage)
        if root in root_fold and root_fold[root] != fold:
            problems.append(f"profile {pid} is in fold {fold} but its real person {root} is in fold {root_fold[root]}")
        root_fold.setdefault(root, fold)
    members = snapshot(catalog, view.name) if view else []
    # by content: no photo (sha1) of any fold's person may appear in another fold
    from ..catalog.models import Image

    with catalog.session() as session:
        photos = session.connection().execute(select(Image.sha1, Image.profile_id).where(
            Image.profile_id.in_(list(folds)), Image.damaged.is_(False))).all() if folds else []
    fold_of_content: dict[str, int] = {}
    shared = 0
    for digest, owner in photos:
        fold = folds[owner]
        if digest in fold_of_content and fold_of_content[digest] != fold:
            shared += 1
            if shared <= 5:
                problems.append(f"image content {digest[:12]} is in fold {fold_of_content[digest]} and fold {fold}")
        fold_of_content.setdefault(digest, fold)
    if shared > 5:
        problems.append(f"... {shared} images in all share content across folds")
    with catalog.session() as session:
        originals = [p for p in folds if lineage[p][3] == "original"]
        for a, b, bits in near_pairs(normal_hashes(session, originals)):
            if folds[a] != folds[b]:
                problems.append(f"profiles {a} and {b} have near-identical normal photos ({bits} bits apart) "
                                f"in folds {folds[a]} and {folds[b]}")
        session.commit()
    per_fold: dict[int, dict] = {}
    for k in range(split.folds):
        fm = [m for m in members if folds.get(m["profile_id"]) == k]
        people = {m["profile_id"] for m in fm}
        per_fold[k] = {
            "people": len(people),
            "synthetic_people": sum(1 for p in people if lineage[p][3] == "synthetic"),
            "images": len(fm),
            "people_by_band": [len({m["profile_id"] for m in fm if m["age_band"] == b}) for b in range(3)],
            "people_by_gender": [len({m["profile_id"] for m in fm if m["gender"] == g}) for g in range(2)],
            "classes": [sum(1 for m in fm if m["label"] == c) for c in range(labels.NUM_CLASSES)],
        }
    outside = [m["profile_id"] for m in members if m["profile_id"] not in folds]
    if outside:
        problems.append(f"{len(set(outside))} people of the view are in no fold (the view changed since the split)")
    return SplitCheck(split.name, split.kind, split.folds, split.seed, view.name if view else None,
                      bool(view and view.content_hash == split.view_hash), problems, per_fold, len(photos))
