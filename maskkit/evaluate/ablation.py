"""`maskkit ablate`: the remedies for class imbalance side by side, on one fixed person-level holdout.

Every remedy trains the same model (the training config plus the remedy's keys) and is scored on the same
held-out real people: macro F1, F1 per age band, old-band recall, wall time. The remedies:

- none, weighted-sampler, class-weights, focal, logit-adjust: the loss and sampling options of `train`;
- stage1-remask / stage1-aged: the training side topped up per age band to its largest band with synthetic
  people made from training-side people only (re-masked real people, or new faces from the age backend), in
  views of their own whose splits copy the base holdout (`split --like`);
- exclude-57-59: `data.train_exclude_ages=57-59` (the ages nearest the old band's edge left out of training;
  the holdout keeps them).

Everything is recorded in the catalog (views, splits, tagged synthetic people, runs) and reused when the command
runs again, so an interrupted ablation resumes where it stopped. The table is written as CSV, JSON and a PNG.
On a CPU the default is the fast mode (`train.recipe=features`: cached frozen features, heads fitted in
seconds) with the face prior off and 160-pixel inputs; on a GPU pass `train.recipe=finetune
data.image_size=224` to ablate the fine-tuned model the same way.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from .. import labels as L
from ..catalog.engine import Catalog
from ..catalog.models import Image, Profile, Run, Split, View
from ..errors import Conflict, InvalidInput
from ..progress import Progress


@dataclass(frozen=True)
class Remedy:
    name: str
    help: str
    overrides: tuple[str, ...] = ()
    synthetic: str | None = None  # "remask" | "new-face": trains on a view topped up with these synthetic people


PLAIN = ("loss.class_weights=none", "data.weighted_sampler=false")  # every remedy alone, on top of none
REMEDIES: tuple[Remedy, ...] = (
    Remedy("none", "plain cross-entropy, no remedy", PLAIN),
    Remedy("weighted-sampler", "training images drawn inversely to their class frequency",
           (*PLAIN, "data.weighted_sampler=true")),
    Remedy("class-weights", "cross-entropy weighted by inverse class frequency", (*PLAIN, "loss.class_weights=balanced")),
    Remedy("focal", "focal loss (gamma 2)", (*PLAIN, "loss.name=focal")),
    Remedy("logit-adjust", "logit adjustment at decision time (tau 1)", (*PLAIN, "loss.logit_adjust=1")),
    Remedy("stage1-remask", "age bands topped up with re-masked real people", PLAIN, "remask"),
    Remedy("stage1-aged", "age bands topped up with new faces from the age backend", PLAIN, "new-face"),
    Remedy("exclude-57-59", "ages 57-59 left out of training", (*PLAIN, "data.train_exclude_ages=57-59")),
)
BY_NAME = {r.name: r for r in REMEDIES}
# the CPU budget: frozen features (the training default), no face prior (its dlib descriptor costs ~80 ms per image
# on a CPU), 160-pixel inputs; any of them can be overridden (key=value)
FAST_DEFAULTS = ("model.prior=none", "data.image_size=160")
CSV_COLUMNS = ("remedy", "macro_f1", "macro_f1_low", "macro_f1_high", "gain", "gain_low", "gain_high", "young_f1",
               "middle_f1", "old_f1", "old_recall", "age_f1", "mask_f1", "gender_f1", "train_images", "synthetic_people",
               "seconds", "run")
BOOTSTRAP = 300  # resamples of the held-out people for the 95% intervals


@dataclass
class AblationRow:
    remedy: str
    macro_f1: float
    young_f1: float
    middle_f1: float
    old_f1: float
    old_recall: float
    age_f1: float
    mask_f1: float
    gender_f1: float
    train_images: int
    synthetic_people: int
    seconds: float  # the run's wall time (its first feature pass included) plus its synthetic people's making
    run: str
    reused: bool = False
    macro_f1_low: float = float("nan")  # 95% interval of macro F1 over resampled held-out people
    macro_f1_high: float = float("nan")
    gain: float = float("nan")  # macro F1 minus the first remedy's (none), on the same resampled people
    gain_low: float = float("nan")
    gain_high: float = float("nan")


@dataclass
class AblationResult:
    view: str
    split: str
    holdout_people: int
    holdout_images: int
    rows: list[AblationRow]
    csv: str
    json: str
    chart: str
    seconds: float
    setup_seconds: dict = field(default_factory=dict)  # making synthetic people and their crops, per kind

    def best(self) -> AblationRow:
        return max(self.rows, key=lambda r: r.macro_f1)


def choose_remedies(names: list[str] | None) -> list[Remedy]:
    """None: every remedy; otherwise the named ones (an empty list or a repeated name is an error)."""
    if names is None:
        return list(REMEDIES)
    if not names:
        raise InvalidInput(f"--remedies names none; give some of: {', '.join(BY_NAME)} (or leave it out for all)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"--remedies lists {', '.join(map(repr, repeated))} more than once")
    out = []
    for name in names:
        if name not in BY_NAME:
            from difflib import get_close_matches

            close = get_close_matches(name, BY_NAME, n=1)
            raise InvalidInput(f"unknown remedy {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                               + f"; remedies: {', '.join(BY_NAME)}")
        out.append(BY_NAME[name])
    return out


def bootstrap(predictions: list[np.ndarray], labels: np.ndarray, people: np.ndarray, *, resamples: int = BOOTSTRAP,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% intervals of each remedy's macro F1, and of its gain over the first remedy, resampling held-out
    people (all of a person's photos together) with replacement; the same resamples for every remedy (paired).
    Returns ((R, 2) intervals, (R, 2) gain intervals)."""
    from .decision import macro_f1

    rng = np.random.default_rng(seed)
    ids, index = np.unique(people, return_inverse=True)
    rows_of = [np.flatnonzero(index == k) for k in range(len(ids))]
    scores = np.zeros((resamples, len(predictions)))
    for b in range(resamples):
        take = np.concatenate([rows_of[k] for k in rng.integers(0, len(ids), len(ids))])
        scores[b] = [macro_f1(labels[take], pred[take]) for pred in predictions]
    gains = scores - scores[:, :1]
    return np.percentile(scores, [2.5, 97.5], axis=0).T, np.percentile(gains, [2.5, 97.5], axis=0).T


def band_scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    """F1 of each age band (young, middle, old) and the old band's recall, from 18-class probabilities."""
    from sklearn.metrics import f1_score, recall_score

    _, _, true_band = L.fields(labels)
    _, _, pred_band = L.fields(probs.argmax(1))
    f1 = f1_score(true_band, pred_band, labels=[0, 1, 2], average=None, zero_division=0)
    recall = recall_score(true_band, pred_band, labels=[2], average=None, zero_division=0)
    return {"young_f1": float(f1[0]), "middle_f1": float(f1[1]), "old_f1": float(f1[2]), "old_recall": float(recall[0])}


# ---------------------------------------------------------------- views, splits, synthetic people


def _ensure_view(catalog: Catalog, name: str, spec: dict) -> None:
    """The view with this spec, materialized now (new synthetic people may have joined since)."""
    from ..datasets.views import define_view, normalize_spec, refresh_view

    with catalog.session() as session:
        view = session.execute(select(View).where(View.name == name)).scalars().first()
    if view is not None and view.spec == normalize_spec(spec):
        refresh_view(catalog, name)
    else:
        define_view(catalog, name, spec, replace=view is not None)


def _ensure_split(catalog: Catalog, view: str, *, val: float, seed: int, like: str | None = None) -> str:
    """The holdout of this view's materialization (copied from `like`), named after both: made once, reused after,
    never made again over runs trained on an older one."""

    from ..datasets.splits import make_split
    from ..datasets.views import get_view

    current = get_view(catalog, view)
    key = hashlib.sha1(f"{current.content_hash}|{like}|{seed}|{val}".encode()).hexdigest()[:8]
    name = f"{view}-s{seed}-{key}"
    with catalog.session() as session:
        existing = session.execute(select(Split).where(Split.name == name)).scalars().first()
    if existing is not None and existing.view_id == current.id and existing.view_hash == current.content_hash:
        return name
    if like is not None:
        make_split(catalog, name, view, like=like, replace=existing is not None)
    else:
        make_split(catalog, name, view, val=val, seed=seed, replace=existing is not None)
    return name


def _tag(view: str, seed: int, kind: str, backend=None, checkpoint: str | None = None) -> str:
    """The tag of an ablation's synthetic people: new faces also name the backend that made them (another
    backend, strength or checkpoint makes other people, never reuses these)."""
    tag = f"ablate:{view}:s{seed}:{kind}"
    if kind == "new-face" and backend is not None:
        tag += f":{getattr(backend, 'name', '?')}"
        if getattr(backend, "strength", None) is not None:
            tag += f"-x{backend.strength:g}"
        if checkpoint:
        
            tag += "-" + hashlib.sha1(str(Path(checkpoint).resolve()).encode()).hexdigest()[:8]
    return tag


def _tagged_people(catalog: Catalog, tag: str) -> dict[int, int]:
    """band -> how many synthetic people carry this tag."""


    counts = {0: 0, 1: 0, 2: 0}
    with catalog.session() as session:
        for age, tags in session.execute(select(Profile.age, Profile.tags).where(Profile.origin == "synthetic")):
            if tags and tag in tags:
                counts[L.age_band(age)] += 1
    return counts


def _make_synthetic(catalog: Catalog, *, kind: str, tag: str, train_side: set[int], need: dict[int, int], seed: int,
                    variant: str, backend, device: str, progress: Progress | None) -> int:
    """Synthetic people (re-masked or aged) from training-side parents up to `need` per band, with their crops."""
    from ..faces.generate import generate_people

    have = _tagged_people(catalog, tag)
    for band, wanted in need.items():
        missing = wanted - have[band]
        if missing > 0:
            generate_people(catalog, band, missing, seed=seed * 1000 + have[band], parents=train_side, tags=[tag],
                            age_backend=backend if kind == "new-face" else None, device=device, progress=progress)
    if variant != "original":
        _derive(catalog, tag, variant, device, progress)
    return sum(_tagged_people(catalog, tag).values())


def _derive(catalog: Catalog, tag: str, variant_name: str, device: str, progress: Progress | None) -> None:

    from ..faces.preprocess import Preprocessor, get_variant, train_targets

    with catalog.session() as session:
        ids = [i for i, tags in session.execute(select(Image.id, Profile.tags).join(Profile, Profile.id == Image.profile_id)
                                                .where(Profile.origin == "synthetic")) if tags and tag in tags]
    targets, damaged = train_targets(catalog, image_ids=ids)
    Preprocessor(catalog, get_variant(catalog, variant_name), device=device).run(targets, damaged=damaged,
                                                                               progress=progress)


# ---------------------------------------------------------------- runs


def _finished_run(catalog: Catalog, view: str, split: str, cfg: dict):
    """A finished run of this view snapshot, split and effective config (so a re-run resumes, not repeats); runs
    record their config resolved (no auto), so the asked config is resolved the same way first."""
    from ..train.folds import _same_recipe
    from ..train.runs import resolved


    with catalog.session() as session:
        v = session.execute(select(View).where(View.name == view)).scalars().one()
        s = session.execute(select(Split).where(Split.name == split)).scalars().one()
        for run in session.execute(select(Run).where(Run.view_id == v.id, Run.split_id == s.id, Run.fold == 1,
                                                     Run.status == "finished").order_by(Run.id.desc())).scalars():
            if run.view_hash == v.content_hash and _same_recipe(run.config, resolved(catalog, cfg, v.id)) \
                    and (Path(run.folder) / "val_probs.npz").is_file():
                return run
    return None


def ablate(catalog: Catalog, view: str, *, remedies: list[str] | None = None, seed: int = 0, val: float = 0.2,
           config_file=None, overrides: list[str] | None = None, runs_dir="runs", out_dir=None,
           synthetic_cap: int | None = None, age_backend: str | None = None, age_checkpoint: str | None = None,
           age_strength: float | None = None, device: str = "cpu", progress: Progress | None = None,
           log=None) -> AblationResult:
    from ..datasets.splits import fold_of
    from ..datasets.views import get_view
    from ..train.config import load_config
    from ..train.runs import start_run

    started = time.perf_counter()
    chosen = choose_remedies(remedies)
    if not 0 < val < 1:
        raise InvalidInput(f"--val must be between 0 and 1, got {val}")
    if synthetic_cap is not None and synthetic_cap < 0:
        raise InvalidInput(f"--synthetic-cap must be >= 0, got {synthetic_cap}")
    base_overrides = list(FAST_DEFAULTS) + list(overrides or [])
    configs = {r.name: load_config(config_file, base_overrides + list(r.overrides)) for r in chosen}  # all checked first
    get_view(catalog, view)  # an unknown view fails before anything is made
    from ..files import output_dir

    subset = "" if len(chosen) == len(REMEDIES) else "-" + "+".join(r.name for r in chosen)  # a subset never
    out = output_dir(Path(out_dir) if out_dir else Path(runs_dir) / f"ablate-{view}-s{seed}{subset}",  # overwrites
                     "--out folder")                                                               # the full table
    say = log or (lambda message: None)
    spec = dict(get_view(catalog, view).spec)
    variant = spec.get("variant", "original")
    people = dict(spec.get("people") or {})
    base_view = f"ablate-{view}"
    _ensure_view(catalog, base_view, {**spec, "people": {**people, "origin": "original"}, "balance": "none"})
    split = _ensure_split(catalog, base_view, val=val, seed=seed)
    folds = fold_of(catalog, split)
    with catalog.session() as session:
    
    
        ages = dict(session.execute(select(Profile.id, Profile.age)).all())
    train_side = {p for p, f in folds.items() if f == 0}
    have = {b: sum(1 for p in train_side if L.age_band(ages[p]) == b) for b in range(3)}
    top = max(have.values())
    need = {b: top - n if synthetic_cap is None else min(top - n, synthetic_cap) for b, n in have.items()}
    say(f"holdout: {sum(1 for f in folds.values() if f == 1):,} people; training side per band "
        f"{', '.join(f'{L.AGE_BANDS[b]} {n:,}' for b, n in have.items())}; synthetic people per kind: "
        f"{', '.join(f'{L.AGE_BANDS[b]} +{n:,}' for b, n in need.items() if n)}")

    arms: dict[str, tuple[str, str, int]] = {}  # remedy -> (view, split, synthetic people)
    setup: dict[str, float] = {}
    backend = None
    for kind in sorted({r.synthetic for r in chosen if r.synthetic}):
        t0 = time.perf_counter()
        if kind == "new-face" and backend is None:
            from ..faces.generate import load_age_backend

            backend = load_age_backend(age_backend, age_checkpoint, device, catalog=catalog, strength=age_strength,
                                       progress=progress)
        tag = _tag(view, seed, kind, backend, age_checkpoint)
        made = _make_synthetic(catalog, kind=kind, tag=tag, train_side=train_side, need=need, seed=seed,
                               variant=variant, backend=backend, device=device, progress=progress)
        arm_view = f"{base_view}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", tag.split(":", 3)[3])  # ablate-fc-new-face-prototype-x2
        _ensure_view(catalog, arm_view, {**spec, "people": {**people, "origin": "any", "synthetic_kinds": [kind],
                                                            "synthetic_tags": [tag]}, "balance": "none"})
        arm_split = _ensure_split(catalog, arm_view, val=val, seed=seed, like=split)
        setup[kind] = time.perf_counter() - t0
        say(f"{kind}: {made:,} synthetic people from training-side parents ({setup[kind]:.0f} s with their crops)")
        for r in chosen:
            if r.synthetic == kind:
                arms[r.name] = (arm_view, arm_split, made)

    rows: list[AblationRow] = []
    holdout_ids = None
    scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (predictions, labels, people) in image order
    for remedy in chosen:
        arm_view, arm_split, made = arms.get(remedy.name, (base_view, split, 0))
        cfg = configs[remedy.name]
        t0 = time.perf_counter()
        run = _finished_run(catalog, arm_view, arm_split, cfg)
        reused = run is not None
        if run is None:
            result = start_run(catalog, view=arm_view, split=arm_split, fold=1, config_file=config_file,
                               overrides=base_overrides + list(remedy.overrides), runs_dir=runs_dir, progress=progress)
            run_name, folder = result.run, Path(result.folder)
        else:
            run_name, folder = run.name, Path(run.folder)
        seconds = time.perf_counter() - t0 + (setup.get(remedy.synthetic, 0.0) if remedy.synthetic else 0.0)
        data = np.load(folder / "val_probs.npz")
        probs, labels, image_ids = data["probs"], data["labels"], data["image_ids"]
        if holdout_ids is None:
            holdout_ids = image_ids
        elif not np.array_equal(np.sort(holdout_ids), np.sort(image_ids)):
            raise Conflict(f"remedy {remedy.name} was scored on other images than the first remedy: the holdout "
                               "is not fixed (a view changed under the ablation; run it again)")
        from ..train.metrics import evaluate

        order = np.argsort(image_ids)
        scored.append((probs[order].argmax(1), labels[order], data["profile_ids"][order]))
        m = evaluate(probs, labels)
        train_images = _train_images(catalog, arm_view, arm_split, cfg)
        rows.append(AblationRow(remedy.name, m["macro_f1"], **band_scores(probs, labels), age_f1=m["age_f1"],
                                mask_f1=m["mask_f1"], gender_f1=m["gender_f1"], train_images=train_images,
                                synthetic_people=made, seconds=seconds, run=run_name, reused=reused))
        say(f"{remedy.name}: macro F1 {m['macro_f1']:.4f}, old F1 {rows[-1].old_f1:.3f}, old recall "
            f"{rows[-1].old_recall:.3f} ({'reused run ' + run_name if reused else f'run {run_name}, {seconds:.0f} s'})")
    if rows:
        intervals, gains = bootstrap([p for p, _, _ in scored], scored[0][1], scored[0][2], seed=seed)
        for row, (low, high), (gain_low, gain_high) in zip(rows, intervals, gains):
            row.macro_f1_low, row.macro_f1_high = float(low), float(high)
            row.gain, row.gain_low, row.gain_high = row.macro_f1 - rows[0].macro_f1, float(gain_low), float(gain_high)
    result = AblationResult(view, split, sum(1 for f in folds.values() if f == 1), int(len(holdout_ids)), rows,
                            str(out / "ablation.csv"), str(out / "ablation.json"), str(out / "ablation.png"),
                            time.perf_counter() - started, setup)
    write_outputs(result, settings={"overrides": base_overrides, "config_file": str(config_file) if config_file else None,
                                    "seed": seed, "val": val, "synthetic_cap": synthetic_cap,
                                    "synthetic_per_band": {L.AGE_BANDS[b]: n for b, n in need.items()},
                                    "age_backend": getattr(backend, "name", None) if backend else None,
                                    "age_strength": getattr(backend, "strength", None) if backend else None})
    return result


def _train_images(catalog: Catalog, view: str, split: str, cfg: dict) -> int:
    from ..train.job import prepare

    return len(prepare(catalog, view, split, 1, cfg, make_split=False).train_rows)


# ---------------------------------------------------------------- outputs


def write_outputs(result: AblationResult, settings: dict) -> None:
    from ..files import atomic_path, output_dir

    output_dir(Path(result.csv).parent, "ablation folder")
    with atomic_path(Path(result.csv), "ablation table") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in result.rows:
            d = asdict(row)
            writer.writerow([f"{d[c]:.4f}" if isinstance(d[c], float) else d[c] for c in CSV_COLUMNS])
    payload = {k: v for k, v in asdict(result).items()} | {"settings": settings}
    with atomic_path(Path(result.json), "ablation summary") as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2))
    chart(result, Path(result.chart))


def chart(result: AblationResult, out: Path) -> Path:
    """Grouped bars per remedy: macro F1, old-band F1 and old-band recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    names = [r.remedy for r in result.rows]
    series = {"macro F1": [r.macro_f1 for r in result.rows], "old-band F1": [r.old_f1 for r in result.rows],
              "old-band recall": [r.old_recall for r in result.rows]}
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.2))
    spread = np.array([[r.macro_f1 - r.macro_f1_low, r.macro_f1_high - r.macro_f1] for r in result.rows]).T
    for k, (label, values) in enumerate(series.items()):
        errors = dict(yerr=np.nan_to_num(spread), capsize=3, ecolor="0.3") if k == 0 else {}
        bars = ax.bar(x + (k - 1) * 0.27, values, 0.27, label=label + (" (95% interval)" if k == 0 else ""), **errors)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"imbalance remedies on {result.view}: {result.holdout_people} held-out people ({result.holdout_images} images)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(out, "ablation chart") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out
