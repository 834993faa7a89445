"""`maskkit train --view V --folds K`: a K-fold person-level split (made once, then reused), every fold
trained (train/folds.py), then recorded here: the fold models as one ensemble, out-of-fold macro F1, and the
ensemble's decision offsets tuned on the out-of-fold probabilities (decision.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Evaluation, utcnow
from ..progress import Progress
from ..train.config import load_config
from ..train.folds import cross_validate, kfold_split, name_lock
from ..train.job import EpochCallback, check_new_name
from ..train.metrics import evaluate
from .decision import cross_checked


@dataclass
class KFoldResult:
    ensemble: str
    split: str
    runs: list  # RunResult of each fold
    oof_file: str
    oof: dict  # metrics of the out-of-fold probabilities as they are
    tuned: dict  # ... and after the decision offsets
    bias: list[float]
    decision: dict  # applied?, the gain they showed on held-out people


def train_folds(catalog: Catalog, *, view: str, folds: int, config_file=None, overrides=None, runs_dir="runs",
                name: str | None = None, progress: Progress | None = None,
                on_epoch: EpochCallback | None = None, devices: list[str] | None = None) -> KFoldResult:
    cfg = load_config(config_file, overrides)  # fails on a bad key before any split or run is made
    if name:
        check_new_name(catalog, name)
    with name_lock(runs_dir, name):  # two `train --folds --name same` at once: the second stops here, not at the end
        if name:
            check_new_name(catalog, name)  # taken while we waited for the lock
        split = kfold_split(catalog, view, folds, cfg["train"]["seed"])
        out = cross_validate(catalog, view=view, split=split, config_file=config_file, overrides=overrides,
                             runs_dir=runs_dir, progress=progress, on_epoch=on_epoch, devices=devices)
        return _record(catalog, name, view, split, out, cfg)


def _record(catalog: Catalog, name: str | None, view: str, split: str, out, cfg: dict) -> KFoldResult:
    data = np.load(out.oof)
    probs, labels = data["probs"], data["labels"]
    decision, honest = cross_checked(probs, labels, data["profile_ids"], seed=cfg["train"]["seed"],
                                     by=cfg["train"]["offsets"])
    bias = decision["bias"]
    before = evaluate(probs, labels)
    after = evaluate(honest, labels)  # kept offsets cross-fitted
    runs = [r.run for r in out.runs]
    name = name or f"{split}-{runs[0]}"
    summary = {k: v for k, v in after.items() if k != "class_f1"} | {
        "images": int(len(labels)), "on": "out-of-fold", "oof_macro_f1_raw": before["macro_f1"]}
    with catalog.session() as session:
        existing = session.execute(select(Ensemble).where(Ensemble.name == name)).scalars().first()
        if existing is not None and existing.members == runs:  # a rerun that reused every finished fold
            return KFoldResult(name, split, out.runs, out.oof, before, after, bias, decision)
        session.add(Ensemble(name=name, members=runs, weights=[1.0] * len(runs), vote="soft", tta=None,
                             metrics=summary, decision=decision | {"tuned_on": str(Path(out.oof).resolve())},
                             created_at=utcnow()))
        session.add(Evaluation(source=name, view=view, images=int(len(labels)), metrics=after, created_at=utcnow()))
        session.commit()
    return KFoldResult(name, split, out.runs, out.oof, before, after, bias, decision)
