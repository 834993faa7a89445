"""Runs: start one (a new folder, args.yaml with the resolved config, a catalog row, then the recipe's
trainer) or resume an interrupted one exactly from its last.pt."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Run, Split, View, utcnow
from ..errors import Conflict, NotFound
from ..files import output_dir
from ..progress import Progress
from .config import complete, load_config, save_config, validate
from .distributed import broadcast, dist_info
from .job import (EpochCallback, Job, RunResult, check_new_name, choose_device, next_run_name, prepare,
                  view_crop_margin)


def make_trainer(catalog: Catalog, job: Job, runs_dir: Path, progress: Progress | None = None,
                 on_epoch: EpochCallback | None = None, callbacks: list | None = None):
    from .feature_trainer import FeatureTrainer
    from .finetune import FineTuneTrainer
    from .recipes import recipe_of

    cls = FeatureTrainer if recipe_of(job.cfg) == "features" else FineTuneTrainer
    return cls(catalog, job, runs_dir, progress, on_epoch, callbacks)


def start_run(catalog: Catalog, *, view: str, split: str | None = None, fold: int | None = None,
              config_file=None, overrides=None, runs_dir="runs", progress: Progress | None = None,
              on_epoch: EpochCallback | None = None, callbacks: list | None = None,
              name: str | None = None, allow_stale: bool = False) -> RunResult:
    """Train one run (named `name`, else the next free serial). `callbacks` (train.callbacks.Callback) replace the
    loggers the config asks for."""
    cfg = load_config(config_file, overrides)
    if name is not None:
        check_new_name(catalog, name)
    job = prepare(catalog, view, split, fold, cfg, allow_stale=allow_stale)
    job.cfg = cfg = resolved(catalog, cfg, job.view_id)  # every auto made concrete, once: args.yaml holds no auto
    rank, world, _ = dist_info()
    runs_dir = Path(runs_dir)
    if rank == 0:
        output_dir(runs_dir, "runs folder")
        name = name or next_run_name(catalog, runs_dir)
        run_dir = runs_dir / name
        if run_dir.exists():
            raise Conflict(f"{run_dir} exists already (a run folder no catalog row names): move it or choose another --name")
        run_dir.mkdir(parents=True)
        save_config(cfg, run_dir / "args.yaml")
        (run_dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        with catalog.session() as session:
            session.add(Run(name=name, view_id=job.view_id, view_hash=job.view_hash, split_id=job.split_id,
                            fold=job.fold, status="running", config=cfg, folder=str(run_dir.resolve()),
                            metric_name=cfg["train"]["metric"], created_at=utcnow()))
            session.commit()
    try:
        trainer = make_trainer(catalog, job, runs_dir, progress, on_epoch, callbacks)  # process group under torchrun
    except BaseException:
        if rank == 0:
            _mark(catalog, name, "failed")
        raise
    name = broadcast(name, rank, world)
    job.run_name, job.run_dir = name, runs_dir / name
    return trainer.run()


def resolved(catalog: Catalog, cfg: dict, view_id: int) -> dict:
    """`config.resolve` for a run on this view, on the device the config chooses here."""
    from .config import resolve

    return resolve(cfg, device=str(choose_device(cfg["train"]["device"])),
                   crop_margin=view_crop_margin(catalog, view_id))


def _mark(catalog: Catalog, name: str, status: str) -> None:
    with catalog.session() as session:
        run = session.execute(select(Run).where(Run.name == name)).scalars().first()
        if run is not None:
            run.status, run.finished_at = status, utcnow()
            session.add(run)
            session.commit()


def resume_run(catalog: Catalog, name: str, runs_dir="runs", progress: Progress | None = None,
               on_epoch: EpochCallback | None = None, allow_stale: bool = False) -> RunResult:
    with catalog.session() as session:
        run = session.execute(select(Run).where(Run.name == name)).scalars().first()
        if run is None:
            raise NotFound(f"unknown run {name!r}")
        view = session.get(View, run.view_id)
        split = session.get(Split, run.split_id)
    run_dir = Path(run.folder)
    if not (run_dir / "last.pt").is_file():
        raise NotFound(f"run {name} has no last.pt to resume from (it stopped before its first epoch ended)")
    if run.status == "finished":
        raise Conflict(f"run {name} finished already")
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    cfg = validate(complete(state["config"]))
    job = prepare(catalog, view.name, split.name, run.fold, cfg, allow_stale=allow_stale)
    job.run_name, job.run_dir = name, run_dir
    (run_dir / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return make_trainer(catalog, job, Path(runs_dir), progress, on_epoch).run(resume=state)
