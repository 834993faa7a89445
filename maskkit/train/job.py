"""What a run trains on: the job (config, view, split, fold, rows), the device, run names and run status."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Run, Split
from ..errors import Conflict, InvalidInput
from .data import view_samples

EpochCallback = Callable[[dict], None]


@dataclass
class RunResult:
    """What a finished (or resumed) run reports."""

    run: str
    best_epoch: int | None
    best_metric: float | None
    folder: str


@dataclass
class CrossValidation:
    """Every fold's run and the out-of-fold probabilities file."""

    runs: list[RunResult]
    oof: str


@dataclass
class Job:
    cfg: dict
    view: str
    view_id: int
    view_hash: str
    split: str
    split_id: int
    fold: int
    samples: list
    train_rows: list[int]
    val_rows: list[int]
    run_dir: Path | None = None
    run_name: str | None = None
    extra: dict = field(default_factory=dict)


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"train.device={name} but torch sees no CUDA device")
    return torch.device(name)


def default_split(catalog: Catalog, view: str, seed: int) -> str:
    """The view's holdout split (20% of people for validation), made on first use."""
    from ..datasets.splits import make_split

    name = f"{view}-holdout"
    with catalog.session() as session:
        exists = session.execute(select(Split.id).where(Split.name == name)).first()
    if not exists:
        make_split(catalog, name, view, val=0.2, seed=seed)
    return name


def prepare(catalog: Catalog, view: str, split: str | None, fold: int | None, cfg: dict, *,
            make_split: bool = True, allow_stale: bool = False) -> Job:
    """The rows a run trains and validates on. Only training (make_split) may make the default holdout split;
    evaluation reads splits, never writes them."""
    from ..datasets.splits import fold_of, get_split
    from ..datasets.views import get_view

    v = get_view(catalog, view)
    samples, view_hash = view_samples(catalog, view, allow_stale=allow_stale)
    if split is None and not make_split:
        raise InvalidInput(f"no split given for view {view!r}")
    split = split or default_split(catalog, view, cfg["train"]["seed"])
    s = get_split(catalog, split)
    if s.view_id != v.id:
        raise InvalidInput(f"split {split!r} was made for another view; make one for {view!r} (maskkit split)")
    if s.view_hash != view_hash:
        raise Conflict(f"view {view!r} was materialized again after split {split!r} was made: make a split of the "
                       f"view as it is now (maskkit split NEW --view {view} --folds K, or train --view {view} --folds K, "
                       f"which names its own); runs on {split!r} keep theirs")
    if s.kind == "holdout":
        fold = 1 if fold is None else fold
        if fold != 1:
            raise InvalidInput(f"split {split!r} is a holdout: its validation part is fold 1")
    elif fold is None:
        raise InvalidInput(f"split {split!r} has {s.folds} folds: give --fold K (0..{s.folds - 1}) or --fold all")
    elif not 0 <= fold < s.folds:
        raise InvalidInput(f"--fold {fold} is outside 0..{s.folds - 1}")
    folds = fold_of(catalog, split)
    missing = {smp.profile_id for smp in samples if smp.profile_id not in folds}
    if missing:
        raise InvalidInput(f"{len(missing)} people of view {view!r} are in no fold of {split!r}: make the split again")
    val_rows = [i for i, smp in enumerate(samples) if folds[smp.profile_id] == fold]
    train_rows = [i for i, smp in enumerate(samples) if folds[smp.profile_id] != fold]
    val_rows, train_rows = _scored_and_trained(catalog, samples, val_rows, train_rows, cfg)
    if not train_rows or not val_rows:
        raise InvalidInput(f"fold {fold} of {split!r} leaves no training or no validation images")
    return Job(cfg, view, v.id, view_hash, split, s.id, fold, samples, train_rows, val_rows)


def _scored_and_trained(catalog: Catalog, samples: list, val_rows: list[int], train_rows: list[int],
                        cfg: dict) -> tuple[list[int], list[int]]:
    """Validation scores real people only (a synthetic person is a copy or a transform of a real one: it
    trains, it is never scored, unless the view has nothing else); data.train_exclude_ages leaves those ages
    out of training only."""
    from ..catalog.models import Profile
    from .config import excluded_ages

    with catalog.session() as session:
        people = {pid: (age, origin) for pid, age, origin in session.execute(
            select(Profile.id, Profile.age, Profile.origin))}
    real_val = [i for i in val_rows if people[samples[i].profile_id][1] != "synthetic"]
    val_rows = real_val or val_rows
    ages = excluded_ages(cfg["data"]["train_exclude_ages"])
    if ages:
        train_rows = [i for i in train_rows if not ages[0] <= people[samples[i].profile_id][0] <= ages[1]]
    return val_rows, train_rows


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the run is marked interrupted and keeps its last finished epoch."""

    def __init__(self, run: str | None, resumable: bool = True):
        super().__init__(run)
        self.run = run
        self.resumable = resumable  # False: stopped before its first epoch ended (no last.pt)


def names_taken(catalog: Catalog) -> set[str]:
    """Run and ensemble names share one namespace (eval, submit and ensemble take either)."""
    from ..catalog.models import Ensemble

    with catalog.session() as session:
        return set(session.execute(select(Run.name)).scalars()) | set(session.execute(select(Ensemble.name)).scalars())


def check_new_name(catalog: Catalog, name: str, what: str = "--name") -> str:
    """A name for a new run or ensemble: safe as a file name (names.check_name) and not taken yet."""
    from ..errors import Conflict
    from ..names import check_name

    check_name(name, what)
    if name in names_taken(catalog):
        raise Conflict(f"{name!r} already names a run or an ensemble; choose another {what}")
    return name


def next_run_name(catalog: Catalog, runs_dir: Path) -> str:
    names = names_taken(catalog)
    n = 1
    while f"{n:04d}" in names or (runs_dir / f"{n:04d}").exists():
        n += 1
    return f"{n:04d}"


def view_crop_margin(catalog: Catalog, view_id: int) -> float | None:
    """The face-crop margin of the variant a view reads (None: not a face-crop variant)."""
    from ..faces.preprocess import view_crop_params

    crop = view_crop_params(catalog, view_id)
    return crop.margin if crop is not None else None


def effective_status(status: str, folder: str) -> str:
    """A run recorded as running whose process is gone (killed, machine restarted) is interrupted."""
    if status != "running":
        return status
    import json
    import os
    import socket
    from pathlib import Path

    try:
        owner = json.loads((Path(folder) / "owner.json").read_text())
    except (OSError, ValueError):
        return status
    if owner.get("host") != socket.gethostname():
        return status  # another machine's run: cannot tell
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return "interrupted"
    except (PermissionError, KeyError, ValueError, TypeError):
        return status
    return status
