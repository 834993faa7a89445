"""`maskkit train --view V --folds K`: a K-fold person-level split (made once, then reused), every fold
trained (train/folds.py), then recorded here: the fold models as one ensemble, out-of-fold macro F1, and the
ensemble's decision offsets tuned on the out-of-fold probabilities (decision.py).

With `model.blend_backbones` (auto: EfficientNet-Lite1 beside Lite0 in the features recipe), every backbone is
its own k-fold ensemble on the same split (named NAME-BACKBONE-SIZE), and the job's name goes to their blend
(evaluate/blend.py: weights and offsets tuned out of fold, its figure cross-fitted), which eval, submit and
`latest` then take."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from .. import labels as L
from ..catalog.engine import Catalog
from ..catalog.models import Ensemble, Evaluation, utcnow
from ..progress import Progress
from ..train.config import blend_backbones, load_config
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
    members: list = field(default_factory=list)  # a blend's: the KFoldResult of each backbone


def train_folds(catalog: Catalog, *, view: str, folds: int, config_file=None, overrides=None, runs_dir="runs",
                name: str | None = None, progress: Progress | None = None,
                on_epoch: EpochCallback | None = None, devices: list[str] | None = None) -> KFoldResult:
    cfg = load_config(config_file, overrides)  # fails on a bad key before any split or run is made
    extra = blend_backbones(cfg)
    if name:
        check_new_name(catalog, name)
    with name_lock(runs_dir, name):  # two `train --folds --name same` at once: the second stops here, not at the end
        if name:
            check_new_name(catalog, name)  # taken while we waited for the lock
        split = kfold_split(catalog, view, folds, cfg["train"]["seed"])
        if not extra:
            out = cross_validate(catalog, view=view, split=split, config_file=config_file, overrides=overrides,
                                 runs_dir=runs_dir, progress=progress, on_epoch=on_epoch, devices=devices)
            return _record(catalog, name, view, split, out, cfg)
        return _train_blend(catalog, name, view, split, cfg, extra, config_file, list(overrides or []), runs_dir,
                            progress, on_epoch, devices)


def _train_blend(catalog: Catalog, name, view, split, cfg, extra, config_file, overrides, runs_dir, progress,
                 on_epoch, devices) -> KFoldResult:
    """Each backbone's folds on the one split, recorded as its own k-fold ensemble, then their blend under `name`.
    A rerun reuses every finished fold and recorded member (train/folds.py), so an interrupted job goes on."""
    from ..names import check_name
    from .blend import blend

    backbones = [(cfg["model"]["backbone"], cfg["data"]["image_size"], [])] + [
        (b, size, [f"model.backbone={b}", f"data.image_size={size}", "model.pool_blocks=auto"]) for b, size in extra]
    if name:  # the members' names must be good before anything trains
        for backbone, size, _own in backbones:
            check_name(f"{name}-{backbone}-{size}", "a blend member's name (--name-BACKBONE-SIZE)")
    members: list[KFoldResult] = []
    for backbone, size, own in backbones:
        member_overrides = overrides + own + ["model.blend_backbones=none"]
        out = cross_validate(catalog, view=view, split=split, config_file=config_file, overrides=member_overrides,
                             runs_dir=runs_dir, progress=progress, on_epoch=on_epoch, devices=devices)
        if not members:  # the members are named after the job: NAME-BACKBONE-SIZE, or SPLIT-FIRSTRUN-BACKBONE-SIZE
            base = name or f"{split}-{out.runs[0].run}"
        members.append(_record(catalog, f"{base}-{backbone}-{size}", view, split, out,
                               load_config(config_file, member_overrides)))
    blend_name = name or f"{base}-blend"
    with catalog.session() as session:
        done = session.execute(select(Ensemble).where(Ensemble.name == blend_name)).scalars().first()
        rows = {e.name: e for e in session.execute(
            select(Ensemble).where(Ensemble.name.in_([m.ensemble for m in members]))).scalars()}
    if done is None or (done.decision or {}).get("blend_of") != [m.ensemble for m in members]:
        blend(catalog, blend_name, [rows[m.ensemble] for m in members], seed=cfg["train"]["seed"],
              offsets=cfg["train"]["offsets"])  # else recorded by an earlier run of this job: read back below
    with catalog.session() as session:
        ens = session.execute(select(Ensemble).where(Ensemble.name == blend_name)).scalars().one()
        decision = dict(ens.decision)
    data = np.load(decision["tuned_on"])
    before, after = evaluate(data["probs"], data["labels"]), evaluate(data["cross_fitted"], data["labels"])
    runs = [r for m in members for r in m.runs]
    return KFoldResult(blend_name, split, runs, decision["tuned_on"], before, after, decision["bias"], decision,
                       members=members)


def _pooled_oof(catalog: Catalog, oof: str, masks: bool) -> tuple[str, dict]:
    """train.pool_people: the out-of-fold probabilities with each person's photos (grouped by evaluate/people.py,
    the threshold learnt on these labelled people) sharing their least-masked photo's gender and age, saved beside
    the raw ones (which stay as probs_raw, with the groups): (that file, the grouping's record). `masks`
    (train.pool_masks): a group of one full set's size also gets its mask states by the people's composition."""
    from ..files import atomic_path
    from .people import grouped, pool

    path = Path(oof).with_name(Path(oof).stem + "_people.npz")
    data = np.load(oof)
    grouping, groups = grouped(catalog, data["image_ids"], data["profile_ids"],
                               data["labels"] // (len(L.GENDERS) * len(L.AGE_BANDS)) if masks else None)
    with atomic_path(path, "out-of-fold file") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, probs=pool(data["probs"], groups, grouping.composition), probs_raw=data["probs"], groups=groups,
                 labels=data["labels"], image_ids=data["image_ids"], profile_ids=data["profile_ids"])
    return str(path), grouping.as_record()


def pooling_pays(pooled: float, alone: float) -> bool:
    """Whether people pooling is kept: its honest out-of-fold macro F1 must beat every photo decided alone's
    (both with their offsets cross-fitted). A model near chance, or photos that do not group, fail it."""
    return pooled > alone


def _record(catalog: Catalog, name: str | None, view: str, split: str, out, cfg: dict) -> KFoldResult:
    data = np.load(out.oof)
    labels, seed, by = data["labels"], cfg["train"]["seed"], cfg["train"]["offsets"]
    decision, honest = cross_checked(data["probs"], labels, data["profile_ids"], seed=seed, by=by)
    if cfg["train"]["pool_people"]:  # kept only where it beats every photo alone, both decided honestly
        path, people = _pooled_oof(catalog, out.oof, cfg["train"]["pool_masks"])
        pooled = np.load(path)
        pooled_decision, pooled_honest = cross_checked(pooled["probs"], labels, pooled["profile_ids"], seed=seed, by=by)
        alone = decision["oof_macro_f1_after"]
        if pooling_pays(pooled_decision["oof_macro_f1_after"], alone):
            decision = pooled_decision | {"people": people, "oof_macro_f1_unpooled": alone}
            honest, data, out.oof = pooled_honest, pooled, path
        else:
            decision["people_not_kept"] = people | {"oof_macro_f1_pooled": pooled_decision["oof_macro_f1_after"]}
    probs = data["probs"]
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
        if existing is not None:
            from ..errors import Conflict

            raise Conflict(f"ensemble {name!r} exists with other runs: give the job another --name")
        session.add(Ensemble(name=name, members=runs, weights=[1.0] * len(runs), vote="soft", tta=None,
                             metrics=summary, decision=decision | {"tuned_on": str(Path(out.oof).resolve())},
                             created_at=utcnow()))
        session.add(Evaluation(source=name, view=view, images=int(len(labels)), metrics=after, created_at=utcnow()))
        session.commit()
    return KFoldResult(name, split, out.runs, out.oof, before, after, bias, decision)
