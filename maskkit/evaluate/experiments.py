"""The experiment table (`maskkit runs`) and "the latest" run or ensemble for commands given no name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import select

from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Run, Split, Submission, View
from ..errors import NotFound
from ..train.job import effective_status


@dataclass
class Experiment:
    name: str
    kind: str  # run / ensemble
    view: str | None
    view_hash: str | None
    split: str | None
    fold: int | None
    status: str
    changed: dict = field(default_factory=dict)  # config keys that differ from the default
    best_epoch: int | None = None
    metric: str | None = None
    best_metric: float | None = None
    oof_macro_f1: float | None = None
    members: list[str] = field(default_factory=list)
    submissions: list[dict] = field(default_factory=list)
    seconds: float | None = None
    created_at: str = ""
    resumable: bool | None = None  # runs: a last.pt to continue from (train --resume)

    def as_dict(self) -> dict:
        return asdict(self)


def config_changes(cfg: dict) -> dict:
    """The keys of a run's config that differ from the current default (dotted names)."""
    from ..train.config import default_config

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    base, own = flat(default_config()), flat(cfg or {})
    return {k: v for k, v in own.items() if base.get(k, object()) != v}


def experiments(catalog: Catalog) -> list[Experiment]:
    """Every run and ensemble, oldest first, with what it trained on and how it scored."""
    with catalog.session() as session:
        views = {v.id: v.name for v in session.execute(select(View)).scalars()}
        splits = {s.id: s.name for s in session.execute(select(Split)).scalars()}
        subs: dict[str, list[dict]] = {}
        for sub in session.execute(select(Submission).order_by(Submission.id)).scalars():
            subs.setdefault(sub.source, []).append({"file": sub.file, "scores": sub.scores})
        rows = []
        for run in session.execute(select(Run).order_by(Run.id)).scalars():
            seconds = (run.finished_at - run.created_at).total_seconds() if run.finished_at else None
            rows.append((run.created_at, Experiment(
                run.name, "run", views.get(run.view_id), (run.view_hash or "")[:12] or None, splits.get(run.split_id),
                run.fold, effective_status(run.status, run.folder), config_changes(run.config), run.best_epoch, run.metric_name, run.best_metric,
                submissions=subs.get(run.name, []), seconds=seconds, created_at=run.created_at.isoformat(),
                resumable=(Path(run.folder) / "last.pt").is_file())))
        by_name = {e.name: e for _, e in rows}
        for ens in session.execute(select(Ensemble).order_by(Ensemble.id)).scalars():
            first = by_name.get(ens.members[0]) if ens.members else None
            member_seconds = [by_name[m].seconds for m in ens.members if m in by_name]
            metrics = ens.metrics or {}
            rows.append((ens.created_at, Experiment(
                ens.name, "ensemble", first.view if first else None, first.view_hash if first else None,
                first.split if first else None, None, "finished", first.changed if first else {},
                metric="val_macro_f1" if metrics.get("on") != "out-of-fold" else "oof_macro_f1",
                best_metric=metrics.get("macro_f1"),
                oof_macro_f1=metrics.get("macro_f1") if metrics.get("on") == "out-of-fold" else None,
                members=list(ens.members), submissions=subs.get(ens.name, []),
                seconds=sum(s for s in member_seconds if s) or None, created_at=ens.created_at.isoformat())))
    rows.sort(key=lambda r: r[0])
    return [e for _, e in rows]


def latest_source(catalog: Catalog) -> str:
    """The newest ensemble or finished run (ensembles win a tie: they are made after their runs)."""
    from pathlib import Path

    with catalog.session() as session:
        ens = session.execute(select(Ensemble).order_by(Ensemble.created_at.desc(), Ensemble.id.desc())).scalars().first()
        run = session.execute(select(Run).where(Run.status == "finished").order_by(
            Run.created_at.desc(), Run.id.desc())).scalars().first()
    if run is not None and not (Path(run.folder) / "best.pt").is_file():
        run = None
    if ens is None and run is None:
        raise NotFound("no finished run or ensemble yet: maskkit train --view VIEW (--folds K)")
    if ens is not None and (run is None or ens.created_at >= run.created_at):
        return ens.name
    return run.name
