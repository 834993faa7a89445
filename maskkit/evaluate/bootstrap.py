"""How far to trust a macro F1: person-level bootstrap intervals and paired differences.

A person's photos are not independent (they share gender and age), so resampling images would make intervals
far too narrow. Here the people are resampled with replacement (all of a person's photos together) and the
macro F1 is recomputed on each resample; the interval is the resamples' percentile range. Paired: every
variant is scored on the *same* resampled people, so a difference's interval reflects how the two recipes
disagree on people, not the luck of which people were drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000


@dataclass
class Interval:
    estimate: float  # on every person once (the plain figure)
    low: float
    high: float

    def clears_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass
class Comparison:
    names: list[str]
    level: float
    people: int
    images: int
    scores: dict[str, Interval]  # each variant's macro F1 with its interval
    differences: dict[str, Interval]  # each variant minus the first, paired


def _macro_f1(labels: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """Macro F1 over the classes present in `labels` or `pred` (sklearn's average='macro' rule), vectorised."""
    tp = np.bincount(labels[labels == pred], minlength=classes).astype(np.float64)
    true = np.bincount(labels, minlength=classes).astype(np.float64)
    said = np.bincount(pred, minlength=classes).astype(np.float64)
    present = (true + said) > 0
    f1 = np.divide(2 * tp, true + said, out=np.zeros(classes), where=present)
    return float(f1[present].mean()) if present.any() else 0.0


def macro_f1(labels, pred, classes: int = 18) -> float:
    return _macro_f1(np.asarray(labels, dtype=np.int64), np.asarray(pred, dtype=np.int64), classes)


def compare(labels, predictions: dict[str, np.ndarray] | list[np.ndarray], people, *, level: float = 0.90,
            resamples: int = RESAMPLES, seed: int = 0, classes: int = 18) -> Comparison:
    """Macro F1 of each variant's predictions with a `level` person-bootstrap interval, and each variant's
    paired difference to the first. `predictions`: class indices per image (or (N, C) probabilities)."""
    if not isinstance(predictions, dict):
        predictions = {str(i): p for i, p in enumerate(predictions)}
    if not predictions:
        raise ValueError("nothing to compare")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    labels = np.asarray(labels, dtype=np.int64)
    people = np.asarray(people)
    names = list(predictions)
    preds = []
    for name in names:
        p = np.asarray(predictions[name])
        p = p.argmax(1) if p.ndim == 2 else p
        if p.shape != labels.shape:
            raise ValueError(f"{name}: {p.shape[0]} predictions for {labels.shape[0]} labels")
        preds.append(p.astype(np.int64))
    if people.shape != labels.shape:
        raise ValueError(f"{people.shape[0]} person ids for {labels.shape[0]} labels")
    _, index = np.unique(people, return_inverse=True)
    order = np.argsort(index, kind="stable")
    starts = np.searchsorted(index[order], np.arange(index.max() + 1))
    counts = np.bincount(index)
    n_people = len(counts)
    rng = np.random.default_rng(seed)
    scores = np.zeros((resamples, len(names)))
    for b in range(resamples):
        drawn = rng.integers(0, n_people, n_people)
        take = order[np.concatenate([np.arange(starts[k], starts[k] + counts[k]) for k in drawn])]
        y = labels[take]
        scores[b] = [_macro_f1(y, p[take], classes) for p in preds]
    tail = (1 - level) / 2 * 100
    plain = np.array([_macro_f1(labels, p, classes) for p in preds])
    lo, hi = np.percentile(scores, [tail, 100 - tail], axis=0)
    diffs = scores - scores[:, :1]
    dlo, dhi = np.percentile(diffs, [tail, 100 - tail], axis=0)
    return Comparison(
        names=names, level=level, people=n_people, images=int(len(labels)),
        scores={n: Interval(float(plain[i]), float(lo[i]), float(hi[i])) for i, n in enumerate(names)},
        differences={n: Interval(float(plain[i] - plain[0]), float(dlo[i]), float(dhi[i]))
                     for i, n in enumerate(names)},
    )
