"""`maskkit train --view V --folds K`: a K-fold person-level split (made once, then reused), every fold
trained, the fold models recorded as one ensemble, out-of-fold macro F1 reported, and the ensemble's
decision offsets tuned on the out-of-fold probabilities (see evaluate/decision.py)."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Evaluation, Split, utcnow
from ..files import output_dir
from ..errors import Conflict, InvalidInput
from .config import load_config
from .loop import EpochCallback, Progress, cross_validate
from .metrics import evaluate


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


def kfold_split(catalog: Catalog, view: str, folds: int, seed: int) -> str:
    """The view's K-fold split for this seed: reused when it fits the view as it is, else made."""
    from ..datasets.splits import get_split, make_split
    from .data import view_samples

    if folds < 2:
        raise InvalidInput(f"--folds must be at least 2, got {folds}")
    from ..datasets.splits import runs_of_split

    name = f"{view}-{folds}fold" + (f"-s{seed}" if seed else "")
    with catalog.session() as session:
        exists = session.execute(select(Split.id).where(Split.name == name)).first()
    if exists:
        _, view_hash = view_samples(catalog, view)
        if get_split(catalog, name).view_hash == view_hash:
            return name
        if runs_of_split(catalog, name):  # the view changed under runs: theirs stays, this one gets its own name
            name = f"{name}-{view_hash[:8]}"
            with catalog.session() as session:
                exists = session.execute(select(Split.id).where(Split.name == name)).first()
            if exists and get_split(catalog, name).view_hash == view_hash:
                return name
    make_split(catalog, name, view, folds=folds, seed=seed, replace=bool(exists))
    return name


@contextmanager
def name_lock(runs_dir, name: str | None):
    """Reserve an ensemble name for the length of a k-fold job (a lock file under RUNS/.names/). A lock left by a
    process that is gone (kill -9, a restart) is taken over; a live one is a Conflict at once."""
    if not name:
        yield
        return
    folder = output_dir(Path(runs_dir) / ".names", "runs folder")
    lock = folder / f"{name}.lock"
    me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            if _alive(owner):
                raise Conflict(f"{name!r} is being trained right now (process {owner.get('pid')} on "
                               f"{owner.get('host')}): choose another --name") from None
            lock.unlink(missing_ok=True)  # its owner is gone: take it over
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    else:
        raise Conflict(f"cannot reserve the name {name!r} (lock {lock} keeps coming back)")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(owner: dict) -> bool:
    if not owner or owner.get("host") != socket.gethostname():
        return bool(owner)  # another machine's lock: assume it is alive
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def train_folds(catalog: Catalog, *, view: str, folds: int, config_file=None, overrides=None, runs_dir="runs",
                name: str | None = None, progress: Progress | None = None,
                on_epoch: EpochCallback | None = None, devices: list[str] | None = None) -> KFoldResult:
    cfg = load_config(config_file, overrides)  # fails on a bad key before any split or run is made
    from .loop import check_new_name

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
    from ..evaluate.decision import apply_bias, cross_checked_bias

    data = np.load(out.oof)
    probs, labels = data["probs"], data["labels"]
    decision = cross_checked_bias(probs, labels, data["profile_ids"], seed=cfg["train"]["seed"])
    bias = decision["bias"]
    before = evaluate(probs, labels)
    after = evaluate(apply_bias(probs, bias), labels)
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
