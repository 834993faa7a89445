"""Losses over the model's outputs: cross-entropy, label smoothing, focal (per sample, alpha and gamma),
soft macro-F1; with optional class weights. Multi-task heads get the loss of each task, summed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import labels as L
from ..errors import InvalidInput
from .models import TASKS

LOSSES = ("ce", "label_smoothing", "focal", "f1")


def focal_loss(logits, target, gamma: float, alpha: float | None, weight=None, sample_weight=None):
    """Per-sample focal loss on soft or hard targets (target: (N,) indices or (N,C) probabilities), averaged
    (weighted by `sample_weight` (N,) when given)."""
    logp = logits.float().log_softmax(1)
    if target.dim() == 1:
        target = F.one_hot(target, logits.shape[1]).float()
    p = logp.exp()
    modulation = (1 - p).pow(gamma)
    per_class = -target * modulation * logp
    if alpha is not None:
        per_class = per_class * alpha
    if weight is not None:
        per_class = per_class * weight[None, :]
    return _mean(per_class.sum(1), sample_weight)


def _mean(per_sample: torch.Tensor, sample_weight=None) -> torch.Tensor:
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight).sum() / sample_weight.sum()


def f1_loss(logits, target, eps: float = 1e-7, sample_weight=None):
    """1 - soft macro F1 over the batch (probabilities against one-hot targets); each sample's counts weighted
    by `sample_weight` (N,) when given."""
    n = logits.shape[1]
    p = logits.float().softmax(1)
    y = F.one_hot(target, n).float() if target.dim() == 1 else target
    w = torch.ones(len(p), 1, device=p.device) if sample_weight is None else sample_weight[:, None].float()
    tp = (w * p * y).sum(0)
    fp = (w * p * (1 - y)).sum(0)
    fn = (w * (1 - p) * y).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn + eps)
    return 1 - f1.mean()


def _one(logits, target, cfg: dict, weight=None, sample_weight=None):
    name = cfg["name"]
    if name in ("ce", "label_smoothing"):
        smoothing = cfg["label_smoothing"] if name == "label_smoothing" else 0.0
        if sample_weight is None:
            return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing)
        per_sample = F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing,
                                     reduction="none")
        return _mean(per_sample, sample_weight)
    if name == "focal":
        return focal_loss(logits, target, cfg["focal_gamma"], cfg["focal_alpha"], weight, sample_weight)
    if name == "f1":
        return f1_loss(logits, target, sample_weight=sample_weight)
    raise InvalidInput(f"unknown loss {name!r} (losses: {', '.join(LOSSES)})")


def task_targets(labels18: torch.Tensor) -> dict[str, torch.Tensor]:
    """18-class targets (indices or (N,18) mixtures) -> per-task targets."""
    if labels18.dim() == 1:
        mask, gender, age = L.fields(labels18)
    else:
        mask, gender, age = L.marginals(labels18)
    return {"class": labels18, "mask": mask, "gender": gender, "age": age}


class Criterion:
    def __init__(self, cfg: dict, class_weights: dict[str, torch.Tensor] | None = None):
        if cfg["name"] not in LOSSES:
            raise InvalidInput(f"unknown loss {cfg['name']!r} (losses: {', '.join(LOSSES)})")
        self.cfg = cfg
        self.weights = class_weights or {}

    def __call__(self, outputs: dict, labels18: torch.Tensor, sample_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The summed loss of every output; `sample_weight` (N,): each sample's share of the mean (class weights,
        if any, still apply inside each sample's loss)."""
        targets = task_targets(labels18)
        total = 0.0
        for key, logits in outputs.items():
            w = self.weights.get(key)
            total = total + _one(logits, targets[key], self.cfg, None if w is None else w.to(logits.device),
                                 sample_weight)
        return total


def balanced_weights(labels: list[int], head: str) -> dict[str, torch.Tensor]:
    """Inverse-frequency class weights (mean 1) from training labels, per output."""
    t = torch.tensor(labels)
    out = {}
    mask, gender, age = L.fields(t)
    groups = {"class": (t, L.NUM_CLASSES)} if head == "single" else {
        "mask": (mask, len(L.MASK_STATES)), "gender": (gender, len(L.GENDERS)), "age": (age, len(L.AGE_BANDS))}
    for key, (values, n) in groups.items():
        counts = torch.bincount(values, minlength=n).float().clamp(min=1)
        w = counts.sum() / (n * counts)
        out[key] = w / w.mean()
    return out


__all__ = ["Criterion", "balanced_weights", "focal_loss", "f1_loss", "task_targets", "TASKS"]
