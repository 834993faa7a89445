"""Every fold of a k-fold split trained (`train --folds K`): the K-fold split made once and reused, the name of
the job's ensemble reserved while it runs, finished folds reused and interrupted ones resumed after a kill,
folds spread over devices, and the out-of-fold probabilities written. Recording the ensemble and its
evaluation belongs to evaluate (evaluate/kfold.py)."""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Run, Split
from ..errors import Conflict, InvalidInput
from ..files import output_dir
from ..progress import Progress
from .config import load_config
from .job import CrossValidation, EpochCallback, RunResult, effective_status, names_taken, prepare
from .runs import _mark, resolved, resume_run, start_run


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


def _fold_runs(catalog: Catalog, split_id: int, fold: int, cfg: dict, status: set[str]) -> list[Run]:
    with catalog.session() as session:
        rows = session.execute(select(Run).where(Run.split_id == split_id, Run.fold == fold)
                               .order_by(Run.id.desc())).scalars().all()
    return [r for r in rows if _same_recipe(r.config, cfg) and effective_status(r.status, r.folder) in status]


def _same_recipe(a: dict, b: dict) -> bool:
    """Two configs that train the same fold alike: equal but for where it ran (train.device; folds spread
    over devices run with their own)."""
    def strip(cfg: dict) -> dict:
        return {**cfg, "train": {k: v for k, v in cfg.get("train", {}).items() if k != "device"}}

    return strip(a) == strip(b)


def _finished_fold(catalog: Catalog, split_id: int, fold: int, cfg: dict) -> RunResult | None:
    """A run of this fold with exactly this config that finished (and still has its files): reused."""
    for run in _fold_runs(catalog, split_id, fold, cfg, {"finished"}):
        folder = Path(run.folder)
        if (folder / "val_probs.npz").is_file() and (folder / "best.pt").is_file():
            return RunResult(run.name, run.best_epoch, run.best_metric, str(folder))
    return None


def _interrupted_fold(catalog: Catalog, split_id: int, fold: int, cfg: dict) -> str | None:
    """An interrupted (or killed) run of this fold with this config that kept an epoch: resumed. One that died
    before its first epoch is marked failed, and the fold is trained anew."""
    for run in _fold_runs(catalog, split_id, fold, cfg, {"interrupted"}):
        if (Path(run.folder) / "last.pt").is_file():
            return run.name
        _mark(catalog, run.name, "failed")
    return None


def _folds_on_devices(catalog: Catalog, s, view: str, split: str, cfg: dict, devices: list[str], config_file,
                      overrides, runs_dir, progress) -> None:
    """The folds not finished yet (nor resumable), trained in parallel over `devices`; names reserved here."""
    from .devices import run_folds

    pending = [k for k in range(s.folds) if _finished_fold(catalog, s.id, k, cfg) is None
               and _interrupted_fold(catalog, s.id, k, cfg) is None]
    if not pending:
        return
    taken = names_taken(catalog)
    names, n = {}, 1
    for k in pending:
        while f"{n:04d}" in taken or (Path(runs_dir) / f"{n:04d}").exists():
            n += 1
        names[k] = f"{n:04d}"
        n += 1
    run_folds(catalog.url, view=view, split=split, folds=pending, names=names, devices=devices,
              config_file=config_file, overrides=list(overrides or []), runs_dir=runs_dir, progress=progress)


def cross_validate(catalog: Catalog, *, view: str, split: str, config_file=None, overrides=None, runs_dir="runs",
                   progress: Progress | None = None, on_epoch: EpochCallback | None = None,
                   devices: list[str] | None = None) -> CrossValidation:
    """Train every fold of a k-fold split; out-of-fold probabilities for every person into oof_<split>.npz.
    `devices` (two or more): the folds still to train run in parallel, one process per device (train/devices.py)."""
    from ..datasets.splits import get_split

    s = get_split(catalog, split)
    if s.kind != "kfold":
        raise InvalidInput(f"--fold all needs a k-fold split; {split!r} is a holdout")
    cfg = load_config(config_file, overrides)
    first = prepare(catalog, view, split, 0, cfg)  # the view must be fresh when the job starts; its later folds read
    cfg = resolved(catalog, cfg, first.view_id)  # fold runs record resolved configs: compare like with like
    results = []                           # that snapshot even if labels change meanwhile (relabel, audit)
    if devices and len(devices) > 1:
        _folds_on_devices(catalog, s, view, split, cfg, devices, config_file, overrides, runs_dir, progress)
    for k in range(s.folds):
        done = _finished_fold(catalog, s.id, k, cfg)
        if done is not None:  # a rerun after a kill continues from the folds that finished
            results.append(done)
            continue
        interrupted = _interrupted_fold(catalog, s.id, k, cfg)
        if interrupted is not None:
            results.append(resume_run(catalog, interrupted, runs_dir, progress, on_epoch, allow_stale=True))
            continue
        results.append(start_run(catalog, view=view, split=split, fold=k, config_file=config_file,
                                 overrides=overrides, runs_dir=runs_dir, progress=progress, on_epoch=on_epoch,
                                 allow_stale=True))
    parts = [np.load(Path(r.folder) / "val_probs.npz") for r in results]
    oof = Path(runs_dir) / f"oof_{split}_{results[0].run}.npz"
    np.savez(oof, probs=np.concatenate([p["probs"] for p in parts]), labels=np.concatenate([p["labels"] for p in parts]),
             image_ids=np.concatenate([p["image_ids"] for p in parts]),
             profile_ids=np.concatenate([p["profile_ids"] for p in parts]),
             runs=np.array([r.run for r in results]))
    return CrossValidation(results, str(oof))
