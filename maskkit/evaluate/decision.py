"""Decisions for macro F1: per-class offsets added to the log-probabilities before the argmax, tuned on
out-of-fold probabilities. Macro F1 weighs every class alike, so a rare class (old people, incorrect masks)
is worth predicting more often than its probability alone says.

Tuning is coordinate ascent over a coarse grid of offsets, a few rounds, keeping a change only when it
lifts macro F1 by more than `min_gain` (fewer, larger steps overfit less than a fine search).
"""

from __future__ import annotations

import numpy as np

from .. import labels as L
from ..train.metrics import apply_bias  # noqa: F401  (re-exported: decisions and validation share it)

GRID = np.round(np.arange(-1.5, 1.51, 0.25), 2)


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred, labels=list(range(L.NUM_CLASSES)), average="macro", zero_division=0))


def tune_bias(probs: np.ndarray, labels: np.ndarray, rounds: int = 3, min_gain: float = 1e-3) -> tuple[list[float], float, float]:
    """(bias, macro F1 before, macro F1 after) on these probabilities and labels."""
    logp = np.log(np.clip(probs, 1e-12, None))
    bias = np.zeros(probs.shape[1])
    before = best = macro_f1(labels, logp.argmax(1))
    for _ in range(rounds):
        changed = False
        for c in range(probs.shape[1]):
            keep = bias[c]
            for value in GRID:
                bias[c] = value
                score = macro_f1(labels, (logp + bias).argmax(1))
                if score > best + min_gain:
                    best, keep, changed = score, value, True
            bias[c] = keep
        if not changed:
            break
    return [float(b) for b in bias], before, best


def cross_checked_bias(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0,
                       min_gain: float = 0.005) -> dict:
    """Offsets only where they generalise: tuned on one half of the people and scored on the other (both
    ways); kept (tuned on everyone) when that held-out gain averages above `min_gain`, else all zeros.
    Offsets tuned on out-of-fold probabilities fit those very people (and with a train.metric other than
    last, so did each fold's kept epoch), so offsets that only fit them must not reach the ensemble's decisions."""
    people = np.unique(groups)
    rng = np.random.default_rng(seed)
    half = set(rng.permutation(people)[: len(people) // 2].tolist())
    first = np.array([g in half for g in groups])
    gains = []
    for fit, test in ((first, ~first), (~first, first)):
        if fit.sum() == 0 or test.sum() == 0:
            continue
        bias, _, _ = tune_bias(probs[fit], labels[fit])
        gains.append(macro_f1(labels[test], apply_bias(probs[test], bias).argmax(1))
                     - macro_f1(labels[test], probs[test].argmax(1)))
    gain = float(np.mean(gains)) if gains else 0.0
    before = macro_f1(labels, probs.argmax(1))
    if gain <= min_gain:
        return {"bias": [0.0] * probs.shape[1], "applied": False, "cross_checked_gain": gain,
                "oof_macro_f1_before": before, "oof_macro_f1_after": before}
    bias, before, after = tune_bias(probs, labels)
    return {"bias": bias, "applied": True, "cross_checked_gain": gain, "oof_macro_f1_before": before,
            "oof_macro_f1_after": after}
