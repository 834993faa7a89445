"""Validation metrics over the whole validation set (one macro F1, never a mean of batch F1s)."""

from __future__ import annotations

import numpy as np

from .. import labels as L


def evaluate(probs: np.ndarray, y: np.ndarray) -> dict:
    """probs: (N,18) class probabilities; y: (N,) true classes."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    all18 = list(range(L.NUM_CLASSES))
    out = {
        "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, pred, labels=all18, average="macro", zero_division=0)),
        "class_f1": [float(v) for v in f1_score(y, pred, labels=all18, average=None, zero_division=0)],
    }
    parts = {"mask": (y // 6, pred // 6, 3), "gender": ((y // 3) % 2, (pred // 3) % 2, 2), "age": (y % 3, pred % 3, 3)}
    for name, (t, p, n) in parts.items():
        out[f"{name}_f1"] = float(f1_score(t, p, labels=list(range(n)), average="macro", zero_division=0))
    for m, state in enumerate(L.MASK_STATES):
        sel = (y // 6) == m
        out[f"age_f1_{state}"] = float(f1_score(y[sel] % 3, pred[sel] % 3, labels=[0, 1, 2], average="macro",
                                                zero_division=0)) if sel.any() else 0.0
    return out
