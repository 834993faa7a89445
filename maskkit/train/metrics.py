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
    present = sorted(set(np.asarray(y).tolist()))  # classes with images here: a view without old people has 12
    out["classes_present"] = len(present)
    out["macro_f1_present"] = float(np.mean([out["class_f1"][c] for c in present])) if present else 0.0
    (ym, yg, ya), (pm, pg, pa) = L.fields(y), L.fields(pred)
    parts = {"mask": (ym, pm, len(L.MASK_STATES)), "gender": (yg, pg, len(L.GENDERS)), "age": (ya, pa, len(L.AGE_BANDS))}
    for name, (t, p, n) in parts.items():
        out[f"{name}_f1"] = float(f1_score(t, p, labels=list(range(n)), average="macro", zero_division=0))
    for m, state in enumerate(L.MASK_STATES):
        sel = ym == m
        out[f"age_f1_{state}"] = float(f1_score(ya[sel], pa[sel], labels=[0, 1, 2], average="macro",
                                                zero_division=0)) if sel.any() else 0.0
    return out


def apply_bias(probs: np.ndarray, bias) -> np.ndarray:
    """Probabilities re-weighted by exp(bias) per class and renormalised (argmax = argmax(log p + bias))."""
    if bias is None:
        return probs
    adjusted = np.log(np.clip(probs, 1e-12, None)) + np.asarray(bias, dtype=np.float64)
    adjusted -= adjusted.max(1, keepdims=True)
    out = np.exp(adjusted)
    return out / out.sum(1, keepdims=True)
