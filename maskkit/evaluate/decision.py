"""Decisions for macro F1: offsets added to the log-probabilities before the argmax, tuned on out-of-fold
probabilities. Macro F1 weighs every class alike, so a rare class (old people, incorrect masks) is worth
predicting more often than its probability alone says.

Two kinds of offsets (`train.offsets`), both kept as one offset per class (18 numbers) for applying:
- `classes` (the default): a free offset per class;
- `fields`: one offset per level of each field (mask 3, gender 2, age band 3; the first level of each fixed
  at 0, so 5 free numbers), a class's offset the sum of its three: "old" gets the same push whatever the mask
  and gender. Fewer numbers fit the tuning people less: on facebench out of fold, cross-fitted, fields lift
  macro F1 by +0.023 [+0.011, +0.034] where classes lose 0.018 (and are not kept); but on 984 facebench-large
  people held out they gain +0.002 [-0.010, +0.013] and on the dev eval they lose 0.056, so they are not the
  default (README, "How far to trust a figure");
- `none`: the argmax.

Tuning is coordinate ascent over a coarse grid of offsets, a few rounds, keeping a change only when it
lifts macro F1 by more than `min_gain` (fewer, larger steps overfit less than a fine search).
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..train.metrics import apply_bias  # noqa: F401  (re-exported: decisions and validation share it)
from ..train.schema import BY_NAME

GRID = np.round(np.arange(-1.5, 1.51, 0.25), 2)


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    """Macro F1 over all 18 classes (a class neither present nor predicted scores 0), as scikit-learn's
    f1_score(labels=range(18), average="macro", zero_division=0), from one bincount: the offset search calls it
    thousands of times."""
    k = L.NUM_CLASSES
    matrix = np.bincount(np.asarray(labels, np.int64) * k + np.asarray(pred, np.int64), minlength=k * k)
    matrix = matrix.reshape(k, k)
    tp = np.diag(matrix).astype(float)
    denominator = matrix.sum(0) + matrix.sum(1)  # 2 tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    return float(f1.mean())


DEFAULT_OFFSETS = BY_NAME["train.offsets"].default
LEGACY_OFFSETS = "classes"  # what a decision recorded before train.offsets tuned


def _levels(kind: str, classes: int) -> np.ndarray:
    """(free offsets, classes) 0/1: which free offsets add up to each class's offset (none: no free offset)."""
    if kind == "classes":
        return np.eye(classes)
    if kind == "none":
        return np.zeros((0, classes))
    if kind != "fields" or classes != L.NUM_CLASSES:
        raise ValueError(f"offsets by {kind!r} for {classes} classes")
    fields = np.array([L.fields(c) for c in range(classes)])
    rows = [fields[:, k] == level for k in range(fields.shape[1]) for level in range(1, fields[:, k].max() + 1)]
    return np.array(rows, dtype=float)


def tune_bias(probs: np.ndarray, labels: np.ndarray, rounds: int = 3, min_gain: float = 1e-3,
              by: str = DEFAULT_OFFSETS) -> tuple[list[float], float, float]:
    """(per-class bias, macro F1 before, macro F1 after) on these probabilities and labels; `by`: fields or
    classes (see the module's text)."""
    logp = np.log(np.clip(probs, 1e-12, None))
    levels = _levels(by, probs.shape[1])
    free = np.zeros(len(levels))
    before = best = macro_f1(labels, logp.argmax(1))
    for _ in range(rounds):
        changed = False
        for c in range(len(free)):
            keep = free[c]
            for value in GRID:
                free[c] = value
                score = macro_f1(labels, (logp + free @ levels).argmax(1))
                if score > best + min_gain:
                    best, keep, changed = score, value, True
            free[c] = keep
        if not changed:
            break
    return [float(b) for b in free @ levels], before, best


def person_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold: people dealt at random (seeded) into `folds` folds, a person's rows together."""
    people = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(people))
    fold_of = dict(zip(people[order].tolist(), (np.arange(len(people)) % folds).tolist()))
    return np.array([fold_of[g] for g in np.asarray(groups).tolist()])


CROSS_FIT_FOLDS = 5  # person folds of the cross-fitted decision


def cross_fit(decide, groups: np.ndarray, folds: int = CROSS_FIT_FOLDS, seed: int = 0) -> np.ndarray:
    """Each person's rows as `decide(fit)` gives them when it may tune only on `fit`, the rows of the other people
    (`folds` person folds); `decide` returns (N, C) probabilities for every row. With a single person the fit is
    their own rows."""
    fold = person_folds(groups, folds, seed)
    out = None
    for k in np.unique(fold):
        test = fold == k
        decided_rows = decide(~test if not test.all() else test)
        out = np.array(decided_rows, dtype=float, copy=True) if out is None else out
        out[test] = decided_rows[test]
    return out


def cross_fitted(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = CROSS_FIT_FOLDS,
                 seed: int = 0, by: str = DEFAULT_OFFSETS) -> np.ndarray:
    """The probabilities with offsets applied as for new people: each person's rows get offsets tuned on the
    other people only. Their macro F1 is what tuned offsets are worth on people they were not tuned on; offsets
    tuned on everyone and scored on everyone read higher by their fit to those people."""
    return cross_fit(lambda fit: apply_bias(probs, tune_bias(probs[fit], labels[fit], by=by)[0]), groups, folds, seed)


def cross_checked(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0,
                  min_gain: float = 0.005, folds: int = CROSS_FIT_FOLDS,
                  by: str = DEFAULT_OFFSETS) -> tuple[dict, np.ndarray]:
    """Offsets only where they generalise: (the decision's record, the out-of-fold probabilities as it decides
    them, honestly). Cross-fitted (every person decided by offsets tuned on the other people), their macro F1 is
    the honest figure of the tuned decision (`oof_macro_f1_after`); they are kept (tuned on everyone, for new
    images) when it beats the argmax by more than `min_gain`, else all zeros. Offsets tuned on out-of-fold
    probabilities fit those very people (and with a train.metric other than last, so did each fold's kept
    epoch), so offsets that only fit them must not reach the ensemble's decisions, and their fit must not reach
    its figure (`oof_macro_f1_in_sample` keeps that optimistic one). `by`: classes, fields or none (no free
    offset: the argmax, never kept)."""
    before = macro_f1(labels, probs.argmax(1))
    honest = cross_fitted(probs, labels, groups, folds, seed, by)
    after = macro_f1(labels, honest.argmax(1))
    gain = after - before
    record = {"offsets": by, "cross_checked_gain": gain, "oof_macro_f1_before": before,
              "cross_fit": {"folds": folds, "seed": seed}}
    if gain <= min_gain:
        return record | {"bias": [0.0] * probs.shape[1], "applied": False, "oof_macro_f1_after": before}, probs
    bias, _, in_sample = tune_bias(probs, labels, by=by)
    return record | {"bias": bias, "applied": True, "oof_macro_f1_after": after,
                     "oof_macro_f1_in_sample": in_sample}, honest


def cross_checked_bias(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0,
                       min_gain: float = 0.005, folds: int = CROSS_FIT_FOLDS, by: str = DEFAULT_OFFSETS) -> dict:
    """The record of `cross_checked` alone."""
    return cross_checked(probs, labels, groups, seed, min_gain, folds, by)[0]


def offsets_of(decision: dict) -> str:
    """The kind of offsets a recorded decision tuned (records made before `train.offsets`: classes)."""
    return decision.get("offsets", LEGACY_OFFSETS)


def honest_oof(data, decision: dict) -> np.ndarray:
    """An ensemble's out-of-fold file (`np.load`ed) decided honestly: a blend's saved cross-fitted probabilities,
    else `decided`."""
    if "cross_fitted" in data:
        return data["cross_fitted"]
    return decided(data["probs"], data["labels"], data["profile_ids"], decision)


def decided(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, decision: dict) -> np.ndarray:
    """Out-of-fold probabilities as an ensemble's recorded decision decides them, honestly: unchanged when its
    offsets were not kept, else cross-fitted the way `cross_checked_bias` scored them. Records made before
    cross-fitting (their offsets tuned on these same people) are cross-fitted too, seed 0: their recorded
    figure was the offsets' fit to everyone, and `eval` shows the honest one."""
    applied = decision.get("applied", any(decision.get("bias") or []))
    if not applied:
        return probs
    return cross_fitted(probs, labels, groups, **(decision.get("cross_fit") or {"folds": CROSS_FIT_FOLDS, "seed": 0}),
                        by=offsets_of(decision))
