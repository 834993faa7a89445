"""Blending k-fold ensembles (`maskkit ensemble ENS1 ENS2 ...` where each was made by `train --folds K`):
their out-of-fold probabilities cover the same people, so the blend's weights can be tuned on them
(macro F1 over a grid of the simplex), and then its decision offsets (see decision.py). Its figure is
cross-fitted like a k-fold ensemble's: each person's blend from weights and offsets tuned on the other people
(saved as `cross_fitted` in its out-of-fold file). The blend is recorded as one ensemble of all the member
ensembles' fold runs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Evaluation, utcnow
from ..errors import Conflict, InvalidInput, NotFound
from ..train.metrics import evaluate
from .decision import (CROSS_FIT_FOLDS, DEFAULT_OFFSETS, apply_bias, cross_checked, cross_fit, macro_f1, offsets_of,
                       tune_bias)
from .people import pool

WEIGHT_STEP = 0.1


def kfold_ensembles(catalog: Catalog, names: list[str]) -> list[Ensemble] | None:
    """The named k-fold ensembles (with out-of-fold probabilities); None when none of the names is one."""
    with catalog.session() as session:
        found = {e.name: e for e in session.execute(select(Ensemble).where(Ensemble.name.in_(names))).scalars()}
    kfold = [found.get(n) for n in names]
    with_oof = [e is not None and bool((e.decision or {}).get("tuned_on")) for e in kfold]
    if not any(with_oof):
        return None
    if not all(with_oof):
        odd = [n for n, ok in zip(names, with_oof) if not ok]
        raise InvalidInput(f"blend k-fold ensembles (made by train --folds K) with each other, not with runs or other "
                           f"ensembles: {', '.join(odd)}")
    return kfold


def _aligned(members: list[Ensemble]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                                               np.ndarray | None]:
    """The members' out-of-fold probabilities on their common images (before people pooling, which the blend does
    once on its own probabilities), labels, image and person ids, and the people groups when every member pooled."""
    parts = []
    for e in members:
        path = Path(e.decision["tuned_on"])
        if not path.is_file():
            raise NotFound(f"ensemble {e.name}: its out-of-fold file {path} is gone", what="file")
        parts.append(np.load(path))
    common = set(parts[0]["image_ids"].tolist())
    for p in parts[1:]:
        common &= set(p["image_ids"].tolist())
    if len(common) < 0.9 * max(len(p["image_ids"]) for p in parts):
        raise Conflict("these ensembles' out-of-fold predictions cover different images (other views?): "
                       "blend ensembles trained on the same view")
    ids = np.array(sorted(common))
    probs = []
    for p in parts:
        order = {int(i): k for k, i in enumerate(p["image_ids"])}
        probs.append(p["probs_raw" if "probs_raw" in p else "probs"][[order[int(i)] for i in ids]])
    first = parts[0]
    order = {int(i): k for k, i in enumerate(first["image_ids"])}
    rows = [order[int(i)] for i in ids]
    pooled = all("people" in (e.decision or {}) for e in members) and "groups" in first
    return probs, first["labels"][rows], ids, first["profile_ids"][rows], first["groups"][rows] if pooled else None


def mixed(weights: list[float], probs: list[np.ndarray], people: np.ndarray | None = None,
          composition: list[int] | None = None) -> np.ndarray:
    """The weighted mean of the members' probabilities, then people pooling when `people` (groups) is given (with
    mask states assigned by `composition` when given: evaluate/people.py)."""
    blended = sum(w * p for w, p in zip(weights, probs))
    return blended if people is None else pool(blended, people, composition)


def tune_weights(probs: list[np.ndarray], labels: np.ndarray, step: float = WEIGHT_STEP,
                 people: np.ndarray | None = None, composition: list[int] | None = None) -> tuple[list[float], float]:
    """Weights on the simplex (multiples of `step`) that maximise macro F1 of the weighted mean (people-pooled when
    `people` groups are given); equal weights win ties."""
    n = len(probs)
    equal = [1.0 / n] * n
    best_w, best = equal, macro_f1(labels, mixed(equal, probs, people, composition).argmax(1))
    units = int(round(1 / step))
    for combo in itertools.product(range(units + 1), repeat=n - 1):
        if sum(combo) > units:
            continue
        w = [c / units for c in combo] + [(units - sum(combo)) / units]
        score = macro_f1(labels, mixed(w, probs, people, composition).argmax(1))
        if score > best + 1e-9:
            best_w, best = w, score
    return [float(w) for w in best_w], float(best)


def cross_fitted_blend(probs: list[np.ndarray], labels: np.ndarray, groups: np.ndarray, offsets: bool,
                       seed: int = 0, folds: int = CROSS_FIT_FOLDS, by: str = DEFAULT_OFFSETS,
                       people: np.ndarray | None = None, composition: list[int] | None = None) -> np.ndarray:
    """The blend's out-of-fold probabilities as for new people: each person's from weights (and, when the blend
    keeps offsets, offsets by `by`) tuned on the other people only, so that its figure is not its fit to the
    people it scores."""
    def decide(fit: np.ndarray) -> np.ndarray:
        weights, _ = tune_weights([p[fit] for p in probs], labels[fit],
                                  people=None if people is None else people[fit], composition=composition)
        blended = mixed(weights, probs, people, composition)
        return apply_bias(blended, tune_bias(blended[fit], labels[fit], by=by)[0]) if offsets else blended

    return cross_fit(decide, groups, folds, seed)


@dataclass
class BlendResult:
    name: str
    weights: dict[str, float]  # member ensemble -> weight
    members_oof: dict[str, float]  # member ensemble -> its own out-of-fold macro F1
    oof_raw: float  # the blend's out-of-fold macro F1 (argmax)
    oof: float  # ... with its decisions
    decision: dict
    runs: int


def members_offsets(members: list[Ensemble]) -> str:
    """The offsets a blend tunes: the kind its members' decisions tuned when they agree, else today's default."""
    kinds = {offsets_of(e.decision or {}) for e in members}
    return kinds.pop() if len(kinds) == 1 else DEFAULT_OFFSETS


def blend(catalog: Catalog, name: str, members: list[Ensemble], *, weights: list[float] | None = None,
          seed: int = 0, offsets: str | None = None) -> BlendResult:
    """`offsets`: fields, classes or none (decision.py); default: as the members tuned theirs."""
    from ..train.job import check_new_name

    check_new_name(catalog, name)
    if len(members) > 6 and weights is None:
        raise InvalidInput("weights are tuned for up to 6 k-fold ensembles: give --weights for more")
    probs, labels, image_ids, profile_ids, people = _aligned(members)
    full = members[0].decision["people"].get("composition") if people is not None else None
    tuned = weights is None
    if tuned:
        weights, _ = tune_weights(probs, labels, people=people, composition=full)
    elif len(weights) != len(members):
        raise InvalidInput(f"{len(weights)} weights for {len(members)} ensembles")
    total = sum(weights)
    if total <= 0 or min(weights) < 0:
        raise InvalidInput("ensemble weights must be non-negative and not all zero")
    weights = [w / total for w in weights]
    blended = mixed(weights, probs, people, full)
    by = offsets or members_offsets(members)
    decision, honest = cross_checked(blended, labels, profile_ids, seed=seed, by=by)  # offsets cross-fitted
    if tuned:  # and the weights too
        honest = cross_fitted_blend(probs, labels, profile_ids, decision["applied"], seed=seed, by=by, people=people,
                                    composition=full)
    if people is not None:
        decision["people"] = members[0].decision["people"]
    oof = Path(members[0].decision["tuned_on"]).with_name(f"oof_blend_{name}.npz")
    raw = {} if people is None else {"probs_raw": mixed(weights, probs)}  # before pooling: what suspects read
    np.savez(oof, probs=blended, labels=labels, image_ids=image_ids, profile_ids=profile_ids, cross_fitted=honest, **raw)
    runs, run_weights = [], []
    for w, e in zip(weights, members):
        own = np.asarray(e.weights, dtype=float)
        for run, rw in zip(e.members, own / own.sum()):
            runs.append(run)
            run_weights.append(float(w * rw))
    members_before = {e.name: macro_f1(labels, mixed([1.0], [p], people, full).argmax(1)) for e, p in zip(members, probs)}
    after = evaluate(honest, labels)  # weights and offsets cross-fitted
    summary = {k: v for k, v in after.items() if k != "class_f1"} | {
        "images": int(len(labels)), "on": "out-of-fold", "oof_macro_f1_raw": macro_f1(labels, blended.argmax(1))}
    with catalog.session() as session:
        session.add(Ensemble(name=name, members=runs, weights=run_weights, vote="soft", tta=None, metrics=summary,
                             decision=decision | {"tuned_on": str(oof.resolve()), "blend_of": [e.name for e in members],
                                                  "blend_weights": weights, "weights_tuned": tuned},
                             created_at=utcnow()))
        session.add(Evaluation(source=name, view=None, images=int(len(labels)), metrics=after, created_at=utcnow()))
        session.commit()
    return BlendResult(name, dict(zip([e.name for e in members], weights)), members_before,
                       summary["oof_macro_f1_raw"], after["macro_f1"], decision, len(runs))
