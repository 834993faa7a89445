"""A measure that can be trusted: the default recipe and each variant, scored on every person, with intervals.

    python bench/quality.py                                   # the default recipe alone
    python bench/quality.py --compare model.prior=none --compare "data.weighted_sampler=false loss.class_weights=balanced"
    python bench/quality.py --large-people 0                  # facebench only (no facebench-large build)
    python bench/quality.py --folds 3 --resamples 500 --out bench/out/q   # quicker; a kept work folder resumes
    python bench/quality.py --compare "train.recipe=finetune" --blend       # and the default blended with each
    python bench/quality.py --seeds 0,1 --compare data.balance_by=weights   # every variant at two seeds, pooled

For the default and for each `--compare` variant (a space-separated list of train overrides), in one run:
1. facebench out-of-fold: `train --view q --folds K` over all facebench people (the same K-fold split for
   every variant: made once, reused; a variant that sets train.seed gets that seed's split, as a user would), the ensemble's out-of-fold predictions with its tuned decisions; macro F1
   with a 90% person-bootstrap interval, and the paired difference to the default (the same resampled people
   for both) with its interval.
2. facebench-large holdout: a fixed set of people (`--large-holdout`, seed 0) held out of training; every
   variant trains on the others (`train --split large-hold`) and is scored on them, with intervals as above.
   That one run has no tuned decision offsets; the variant's `train.offsets` are applied as for new people:
   each holdout person decided by offsets tuned on the other holdout people (cross-fitted, kept only where they
   gain, as `train --folds` keeps them). Built once into bench/out/ (`--large-people` people of ../shared/facebench-large; 0 skips this part).
3. the dev eval (`submit --score ../shared/facebench/eval/answers.csv`), last, as a check only.
Where the default recipe blends backbones (model.blend_backbones, auto: Lite0 and Lite1 in the features recipe), its
facebench figure is the blend `train --folds` records and its facebench-large figure blends a holdout run of each
backbone with the weights tuned on facebench. With --blend (for a one-backbone default only), each variant is
also blended with the default (`maskkit ensemble fb-DEFAULT fb-VARIANT`: weights
and decisions tuned on the facebench out-of-fold predictions, so that figure is optimistic by the tuning of one
weight; the facebench-large figure applies those weights to the two holdout runs and is not).
Then the rule: a variant may become a default only when it is better on both the out-of-fold and the
facebench-large figure and on at least one of them its paired interval clears 0.
With --seeds 0,1 every variant is trained once per seed (train.seed moves the k-fold split, the balanced draw and
the initialisation: the default alone read 0.417 and 0.400 out of fold at seeds 0 and 1) and each figure pools
the seeds' predictions, a person's rows of every seed resampled together, so that the rule is applied to a
difference that holds over seeds rather than to one seed's luck.

Everything is done through the `maskkit` command as a user would; a kept --out folder is resumed (finished
trainings are found in its catalog and not trained again). Writes quality.json and quality.csv there.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import OUT, SHARED  # noqa: E402
from _common import maskkit as sh  # noqa: E402  (maskkit ARGS in a folder, logged: seconds, stdout)

DATA = SHARED / "facebench"
LEVEL = 0.90


def per_label(y, p) -> dict:
    """Macro F1 of each label (mask, gender, age band) from 18-class labels and predictions."""
    from sklearn.metrics import f1_score

    from maskkit import labels

    out = {}
    for k, (name, n) in enumerate((("mask", 3), ("gender", 2), ("age", 3))):
        out[f"{name}_f1"] = f1_score([labels.fields(int(c))[k] for c in y], [labels.fields(int(c))[k] for c in p],
                                     labels=list(range(n)), average="macro", zero_division=0)
    return out


def label_f1(submission: Path, answers: Path) -> dict:
    from sklearn.metrics import f1_score

    truth = {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(open(answers))}
    pred = {r["ImageID"]: int(r["ans"]) for r in csv.DictReader(open(submission))}
    y = [truth[k] for k in pred]
    p = [pred[k] for k in pred]
    return {"macro_f1": f1_score(y, p, labels=list(range(18)), average="macro", zero_division=0),
            "accuracy": sum(a == b for a, b in zip(y, p)) / len(y)} | per_label(y, p)


@dataclass
class Variant:
    name: str
    overrides: list[str]
    seconds: dict = field(default_factory=dict)
    oof: dict | None = None  # {"labels", "pred", "people"} over all facebench people
    large: dict | None = None  # the same over the facebench-large holdout
    dev: dict | None = None
    weights: list | None = None  # a blend's: the default's, the variant's


PICKING_KEYS = ("train.metric=", "train.early_stopping=")


def parse_variants(compare: list[str]) -> list[Variant]:
    variants = [Variant("default", [])]
    for n, text in enumerate(compare, 1):
        overrides = shlex.split(text)
        bad = [o for o in overrides if "=" not in o]
        if not overrides or bad:
            sys.exit(f"--compare {text!r}: give key=value overrides (bad: {' '.join(bad) or 'none given'})")
        picked = [o for o in overrides if o.startswith(PICKING_KEYS) and o not in ("train.metric=last",
                                                                                  "train.early_stopping=0")]
        if picked:
            sys.exit(f"--compare {text!r}: {' '.join(picked)} would pick epochs on the people each figure is scored "
                     "on (every fold's validation people, and the facebench-large holdout, which is that run's "
                     "validation set): the bench keeps the last epoch (train.metric=last)")
        variants.append(Variant(f"v{n}", overrides))
    return variants


def work_key(v: "Variant") -> str:
    """The name a variant's trainings get in the work folder: from its overrides and today's defaults, not its
    place in the list, so that a resumed --out folder never hands one variant another's results, nor a variant
    (the default above all) the results of older defaults."""
    import hashlib

    from maskkit.train.config import default_config

    defaults = hashlib.sha1(json.dumps(default_config(), sort_keys=True).encode()).hexdigest()[:6]
    if not v.overrides:
        return f"default-{defaults}"
    return f"v-{defaults}-" + hashlib.sha1(" ".join(sorted(v.overrides)).encode()).hexdigest()[:10]


def catalog_of(work: Path):
    from maskkit.catalog import open_catalog

    return open_catalog(work / "catalog.db")


def names_in(work: Path) -> set[str]:
    from maskkit.train.job import names_taken

    catalog = catalog_of(work)
    try:
        return names_taken(catalog)
    finally:
        catalog.dispose()


def ensemble_oof(work: Path, name: str) -> dict:
    """The ensemble's out-of-fold predictions as today's maskkit decides them (what `train --folds` prints):
    the offsets decision made again from its out-of-fold probabilities, so that ensembles recorded by an older
    maskkit in a kept --out folder are scored the same way; kept offsets are cross-fitted (each person decided
    by offsets tuned on the other people), never tuned on the people they score."""
    from sqlalchemy import select

    from maskkit.catalog.models import Ensemble
    from maskkit.evaluate.decision import cross_checked_bias, honest_oof, offsets_of

    catalog = catalog_of(work)
    try:
        with catalog.session() as session:
            ens = session.execute(select(Ensemble).where(Ensemble.name == name)).scalars().one()
            decision = dict(ens.decision or {})
    finally:
        catalog.dispose()
    data = np.load(decision["tuned_on"])
    again = cross_checked_bias(data["probs"], data["labels"], data["profile_ids"],
                               seed=decision.get("cross_fit", {}).get("seed", 0), by=offsets_of(decision))
    probs = honest_oof(data, again)  # a blend's saved cross-fit (weights and offsets), else the offsets' cross-fit
    return by_image(data["image_ids"], data["labels"], probs.argmax(1), data["profile_ids"])


def by_image(image_ids, labels, pred, people) -> dict:
    """Rows in image-id order, so that two variants' predictions pair up image by image."""
    order = np.argsort(image_ids, kind="stable")
    return {"images": np.asarray(image_ids)[order], "labels": np.asarray(labels)[order],
            "pred": np.asarray(pred)[order], "people": np.asarray(people)[order]}


def offsets_kind(overrides: list[str]) -> str:
    """The variant's train.offsets."""
    from maskkit.train.config import load_config

    return load_config(None, [o for o in overrides if "=" in o])["train"]["offsets"]


def holdout_decided(probs, labels, people, offsets: str) -> np.ndarray:
    """The holdout's predictions with the variant's decision offsets as a k-fold ensemble keeps them, for new
    people: the holdout run is one run without tuned offsets, so each holdout person is decided by offsets tuned
    on the other holdout people (cross-fitted, kept only where they lift macro F1 there: decision.cross_checked)."""
    from maskkit.evaluate.decision import cross_checked

    return cross_checked(probs, labels, people, seed=0, by=offsets)[1].argmax(1)


def pools_people(overrides: list[str]) -> str:
    """How the variant pools people: "" (train.pool_people off), "people", or "masks" (train.pool_masks too)."""
    from maskkit.train.config import load_config

    train = load_config(None, [o for o in overrides if "=" in o])["train"]
    return "" if not train["pool_people"] else "masks" if train["pool_masks"] else "people"


_HOLDOUT_GROUPS: dict = {}


def holdout_people(work: Path, image_ids: np.ndarray) -> tuple[np.ndarray, list[int] | None]:
    """The holdout's photos grouped into people as a k-fold ensemble trained on the other people would group them:
    the threshold learnt on the training people's photos (up to people.LEARN_PEOPLE of them), never on the
    holdout's; computed once per folder."""
    from sqlalchemy import select

    from maskkit.catalog.models import Image
    from maskkit.evaluate.people import groups_for, learn, photo_paths, signatures

    key = (str(work), len(image_ids))
    if key not in _HOLDOUT_GROUPS:
        catalog = catalog_of(work)
        try:
            held = set(np.asarray(image_ids).tolist())
            with catalog.session() as session:
                rows = [(i, p, m) for i, p, m in session.execute(select(Image.id, Image.profile_id, Image.mask).where(
                    Image.damaged.is_(False))) if i not in held]
            people = np.array([p for _, p, _ in rows])
            masks = np.array([m for _, _, m in rows])  # 0 worn, 1 worn wrong, 2 none
            keep = np.isin(people, np.random.default_rng(0).choice(np.unique(people), min(400, len(set(people))),
                                                                   replace=False))
            train_ids = [i for (i, _, _), k in zip(rows, keep) if k]
            grouping = learn(signatures(photo_paths(catalog, train_ids)), people[keep], mask=masks[keep])
            _HOLDOUT_GROUPS[key] = (groups_for(grouping.as_record(), photo_paths(catalog, image_ids)),
                                    grouping.composition)
            print(f"holdout people: threshold {grouping.threshold} learnt on {len(set(people[keep]))} training people "
                  f"(agreement {grouping.agreement:.3f}; composition {grouping.composition})", flush=True)
        finally:
            catalog.dispose()
    return _HOLDOUT_GROUPS[key]


def holdout_probs(work: Path, data: dict, probs: np.ndarray, pool_people: str) -> np.ndarray:
    """The holdout's probabilities as the variant's k-fold ensemble would give them: people pooled when it pools
    (and mask states assigned by the training people's composition with train.pool_masks)."""
    if not pool_people:
        return probs
    from maskkit.evaluate.people import pool

    groups, full = holdout_people(work, data["image_ids"])
    return pool(probs, groups, full if pool_people == "masks" else None)


def run_holdout(work: Path, run: str, offsets: str, pool_people: str = "") -> dict:
    data = run_probs(work, run)  # the run's own decisions (logit adjustment) are already applied
    probs = holdout_probs(work, data, data["probs"], pool_people)
    return by_image(data["image_ids"], data["labels"],
                    holdout_decided(probs, data["labels"], data["profile_ids"], offsets), data["profile_ids"])


def prepare_facebench(data: Path, work: Path, log: Path) -> dict:
    times = {}
    if not (work / "catalog.db").is_file():
        times["ingest"], _ = sh(["ingest", str(data / "train"), "--eval", str(data / "eval")], work, log)
        times["crop"], _ = sh(["preprocess", "crop", "--target", "all"], work, log)
        times["group"], _ = sh(["group", "q", "--variant", "crop"], work, log)
    return times


def prepare_large(people: int, holdout: int, work: Path, log: Path) -> dict:
    from _common import facebench_large

    times = {}
    if (work / "catalog.db").is_file():
        return times
    source = OUT / f"facebench-large-{people}" if people < 2700 else OUT / "facebench-large"
    if not (source / "train.csv").is_file():
        build = SHARED / "facebench-large" / "build.py"
        start = time.perf_counter()
        if people < 2700:
            subprocess.run([sys.executable, str(build), str(source), "--people", str(people)], check=True)
        else:
            facebench_large(source)
        times["build"] = time.perf_counter() - start
    times["ingest"], _ = sh(["ingest", str(source)], work, log)
    times["crop"], _ = sh(["preprocess", "crop"], work, log)
    times["group"], _ = sh(["group", "L", "--variant", "crop"], work, log)
    catalog = catalog_of(work)
    try:
        from maskkit.datasets.views import view_people

        total = len(view_people(catalog, "L"))
    finally:
        catalog.dispose()
    fraction = min(0.9, holdout / max(total, 1))
    times["split"], _ = sh(["split", "large-hold", "--view", "L", "--val", f"{fraction:.6f}", "--seed", "0"], work, log)
    return times


def score_table(variants: list[Variant], part: str, resamples: int):
    from maskkit.evaluate.bootstrap import compare

    have = [v for v in variants if getattr(v, part) is not None]
    if not have:
        return None
    ref = getattr(have[0], part)
    for v in have[1:]:
        other = getattr(v, part)
        if not (np.array_equal(other["images"], ref["images"]) and np.array_equal(other["labels"], ref["labels"])):
            sys.exit(f"{v.name}: its {part} predictions cover other images (or labels) than the default's: a variant "
                     "that changes the split or the view cannot be paired")
    return compare(ref["labels"], {v.name: getattr(v, part)["pred"] for v in have}, ref["people"], level=LEVEL,
                   resamples=resamples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="a variant: train overrides (several --compare allowed)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one); kept ones resume")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--large-people", type=int, default=2700,
                        help="people of facebench-large to build (0: skip the facebench-large figure)")
    parser.add_argument("--large-holdout", type=int, default=1000, help="facebench-large people held out of training")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--no-dev", action="store_true", help="skip the dev-eval check")
    parser.add_argument("--blend", action="store_true", help="also blend the default with each variant")
    parser.add_argument("--seeds", default="0", help="train every variant with each of these train.seed values "
                        "(comma-separated; the k-fold split, the balanced draw and the initialisation change with it) "
                        "and pool their predictions: a difference that holds over seeds, not one seed's luck")
    args = parser.parse_args()
    if not (args.data / "train" / "train.csv").is_file():
        print(f"skipped: no facebench at {args.data}")
        return
    variants = parse_variants(args.compare)
    work = (args.out or Path(tempfile.mkdtemp(prefix="maskkit-quality-"))).resolve()
    fb, large = work / "facebench", work / "large"
    for folder in (fb, large):
        folder.mkdir(parents=True, exist_ok=True)
    log = work / "quality.log"
    answers = args.data / "eval" / "answers.csv"
    prep = {"facebench": prepare_facebench(args.data, fb, log)}
    if args.large_people:
        prep["large"] = prepare_large(args.large_people, args.large_holdout, large, log)
    seeds = parse_seeds(args.seeds, variants, args.blend)
    for v in variants:
        print(f"{v.name}: {' '.join(v.overrides) or '(the default recipe)'}", flush=True)
        runs = [score_seed(v, seed, fb, large, log, args, answers) for seed in seeds]
        pool_seeds(v, runs)
    if args.blend:
        variants += [blended(variants[0], v, fb, large, log, args, answers) for v in variants[1:]]
    oof = score_table(variants, "oof", args.resamples)
    held = score_table(variants, "large", args.resamples) if args.large_people else None
    rows = report(variants, oof, held)
    print_table(rows, oof, held, args)
    (work / "quality.json").write_text(json.dumps({"level": LEVEL, "folds": args.folds, "prepare_seconds": prep,
                                                   "rows": rows}, indent=1))
    with open(work / "quality.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    print(f"details: {log}; table: {work / 'quality.csv'}")


def parse_seeds(text: str, variants: list[Variant], blend: bool) -> list[int]:
    """--seeds: the train.seed values every variant is trained with (0 = the default config)."""
    try:
        seeds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sys.exit(f"--seeds {text!r}: give seeds as comma-separated numbers (e.g. 0,1)")
    if not seeds or min(seeds) < 0:
        sys.exit(f"--seeds {text!r}: give at least one seed, none negative")
    if len(seeds) > 1:
        seeded = [v.name for v in variants if any(o.startswith("train.seed=") for o in v.overrides)]
        if seeded:
            sys.exit(f"--seeds gives every variant its seeds; {', '.join(seeded)} set train.seed themselves")
        if blend:
            sys.exit("--blend blends the seed-0 trainings: run it with one seed")
    if blend and blended_backbones([]):
        sys.exit("--blend blends each variant with a one-backbone default; today's default blends backbones "
                 "(model.blend_backbones=auto): compare blends as variants, e.g. --compare "
                 "'model.blend_backbones=efficientnet_lite2@260'")
    return seeds


def score_seed(v: Variant, seed: int, fb: Path, large: Path, log: Path, args, answers: Path) -> Variant:
    """The variant trained (or found trained) with train.seed=seed and scored: its k-fold ensemble's out-of-fold
    predictions, its facebench-large holdout run, its dev eval."""
    one = Variant(v.name, v.overrides + ([f"train.seed={seed}"] if seed else []))
    name = f"fb-{work_key(one)}"
    if name not in names_in(fb):
        one.seconds["oof"], _ = sh(["train", "--view", "q", "--folds", str(args.folds), "--name", name,
                                    *one.overrides], fb, log)
    one.oof = ensemble_oof(fb, name)
    if args.large_people:
        run = f"L-{work_key(one)}"
        if run not in names_in(large):
            one.seconds["large"], _ = sh(["train", "--view", "L", "--split", "large-hold", "--name", run,
                                          *one.overrides], large, log)
        extra = blended_backbones(one.overrides)
        if not extra:
            one.large = run_holdout(large, run, offsets_kind(one.overrides), pools_people(one.overrides))
        else:  # the recipe blends backbones (model.blend_backbones): a holdout run of each, blended as on facebench
            runs = [run]
            for backbone, size in extra:
                runs.append(f"{run}-{backbone}-{size}")
                if runs[-1] not in names_in(large):
                    one.seconds[f"large {backbone}"], _ = sh(
                        ["train", "--view", "L", "--split", "large-hold", "--name", runs[-1], *one.overrides,
                         f"model.backbone={backbone}", f"data.image_size={size}", "model.pool_blocks=auto"], large, log)
            weights, decision_offsets = blend_record(fb, name)
            one.large = holdout_blend(large, runs, weights, decision_offsets, pools_people(one.overrides))
    if not args.no_dev:
        out = fb / f"dev_{work_key(one)}.csv"
        one.seconds["dev"], _ = sh(["submit", name, "--score", str(answers), "--out", str(out)], fb, log)
        one.dev = label_f1(out, answers)
    return one


def pool_seeds(v: Variant, runs: list[Variant]) -> None:
    """One variant's figures from its seeds' runs: the predictions of every seed side by side (each person with
    all their seeds' predictions, so the bootstrap resamples people and the macro F1 is over all seeds' rows),
    the dev figures averaged, the seconds added up."""
    for part in ("oof", "large"):
        got = [getattr(r, part) for r in runs if getattr(r, part) is not None]
        if got:
            setattr(v, part, {k: np.concatenate([g[k] for g in got]) for k in got[0]})
    devs = [r.dev for r in runs if r.dev is not None]
    if devs:
        v.dev = {k: float(np.mean([d[k] for d in devs])) for k in devs[0]}
    for r in runs:
        for key, seconds in r.seconds.items():
            v.seconds[key] = v.seconds.get(key, 0.0) + seconds


def blended(default: Variant, v: Variant, fb: Path, large: Path, log: Path, args, answers: Path) -> Variant:
    """The default and `v` blended as a user would (`maskkit ensemble`), scored like any variant."""
    out = Variant(f"{v.name}+default", v.overrides + ["(blended with the default)"])
    name = f"fb-blend-{work_key(v)}"
    if name not in names_in(fb):
        out.seconds["blend"], _ = sh(["ensemble", f"fb-{work_key(default)}", f"fb-{work_key(v)}", "--name", name],
                                    fb, log)
    out.oof = ensemble_oof(fb, name)
    weights, decision_offsets = blend_record(fb, name)
    out.weights = weights
    if args.large_people:
        out.large = holdout_blend(large, [f"L-{work_key(x)}" for x in (default, v)], weights, decision_offsets,
                                  pools_people(v.overrides))
    if not args.no_dev:
        dev = fb / f"dev_{name}.csv"
        out.seconds["dev"], _ = sh(["submit", name, "--score", str(answers), "--out", str(dev)], fb, log)
        out.dev = label_f1(dev, answers)
    return out


def blended_backbones(overrides: list[str]) -> list[tuple[str, int]]:
    """The backbones the variant's recipe blends with model.backbone (model.blend_backbones, resolved)."""
    from maskkit.train.config import blend_backbones, load_config

    return blend_backbones(load_config(None, [o for o in overrides if "=" in o]))


def blend_record(fb: Path, name: str) -> tuple[list[float], str]:
    """A facebench blend's weights (tuned out of fold) and the offsets kind it tuned."""
    from sqlalchemy import select

    from maskkit.catalog.models import Ensemble
    from maskkit.evaluate.decision import offsets_of

    catalog = catalog_of(fb)
    try:
        with catalog.session() as session:
            decision = session.execute(select(Ensemble).where(Ensemble.name == name)).scalars().one().decision
            return decision["blend_weights"], offsets_of(decision)
    finally:
        catalog.dispose()


def holdout_blend(large: Path, runs: list[str], weights: list[float], offsets: str, pool_people: str = "") -> dict:
    """Holdout runs blended with weights tuned on facebench (not on the holdout), decided as for new people."""
    parts = [run_probs(large, r) for r in runs]
    first = parts[0]
    probs = holdout_probs(large, first, sum(w * p["probs"] for w, p in zip(weights, parts)), pool_people)
    return by_image(first["image_ids"], first["labels"],
                    holdout_decided(probs, first["labels"], first["profile_ids"], offsets), first["profile_ids"])


def run_probs(work: Path, run: str) -> dict:
    """A holdout run's validation probabilities, rows in image-id order."""
    from sqlalchemy import select

    from maskkit.catalog.models import Run

    catalog = catalog_of(work)
    try:
        with catalog.session() as session:
            folder = session.execute(select(Run.folder).where(Run.name == run)).scalars().one()
    finally:
        catalog.dispose()
    data = np.load(Path(folder) / "val_probs.npz")
    order = np.argsort(data["image_ids"], kind="stable")
    return {k: data[k][order] for k in ("image_ids", "labels", "probs", "profile_ids")}


def report(variants: list[Variant], oof, held) -> list[dict]:
    rows = []
    for v in variants:
        row = {"variant": v.name, "overrides": " ".join(v.overrides) or "default"}
        for label, comp in (("oof", oof), ("large", held)):
            if comp is None or v.name not in comp.scores:
                continue
            s, d = comp.scores[v.name], comp.differences[v.name]
            row.update({f"{label}_f1": round(s.estimate, 4), f"{label}_low": round(s.low, 4),
                        f"{label}_high": round(s.high, 4), f"{label}_diff": round(d.estimate, 4),
                        f"{label}_diff_low": round(d.low, 4), f"{label}_diff_high": round(d.high, 4)})
        for label in ("oof", "large"):
            part = getattr(v, label)
            if part is not None:
                row.update({f"{label}_{k}": round(f, 4) for k, f in per_label(part["labels"], part["pred"]).items()})
        if v.dev:
            row["dev_f1"] = round(v.dev["macro_f1"], 4)
        row["seconds"] = round(sum(v.seconds.values()), 1)
        if v.weights:
            row["blend_weights"] = v.weights
        if v.name != "default":
            row["passes"] = passes(v.name, oof, held)
        rows.append(row)
    return rows


def passes(name: str, oof, held) -> bool:
    """Better on both figures, and on at least one of them the paired interval clears 0."""
    comps = [c for c in (oof, held) if c is not None]
    if len(comps) < 2:
        return False  # the rule needs both figures
    better = all(c.differences[name].estimate > 0 for c in comps)
    return better and any(c.differences[name].low > 0 for c in comps)


def print_table(rows, oof, held, args) -> None:
    pct = int(LEVEL * 100)
    print()
    seeds = [part.strip() for part in args.seeds.split(",") if part.strip()]
    if len(seeds) > 1:
        print(f"seeds {','.join(seeds)}: every variant trained once per seed; each figure pools the seeds' "
              "predictions (a person's rows of every seed resampled together); dev: the seeds' mean")
    if oof is not None:
        print(f"facebench out-of-fold: {oof.people} people, {oof.images} rows, {args.folds} folds; "
              f"{pct}% person-bootstrap intervals ({args.resamples} resamples)")
    if held is not None:
        print(f"facebench-large holdout: {held.people} people, {held.images} rows, trained on the others")
    head = f"{'variant':8} {'out-of-fold':>24} {'diff':>24} {'large holdout':>24} {'diff':>24} {'dev':>7} {'time':>7}  ok"
    print(head)
    for r in rows:
        def cell(prefix):
            if f"{prefix}_f1" not in r:
                return f"{'-':>24}", f"{'-':>24}"
            main = f"{r[prefix + '_f1']:.3f} [{r[prefix + '_low']:.3f},{r[prefix + '_high']:.3f}]"
            diff = "" if r["variant"] == "default" else \
                f"{r[prefix + '_diff']:+.3f} [{r[prefix + '_diff_low']:+.3f},{r[prefix + '_diff_high']:+.3f}]"
            return f"{main:>24}", f"{diff:>24}"
        a, b = cell("oof")
        c, d = cell("large")
        dev = f"{r['dev_f1']:.3f}" if "dev_f1" in r else "-"
        ok = "" if r["variant"] == "default" else ("yes" if r.get("passes") else "no")
        print(f"{r['variant']:8} {a} {b} {c} {d} {dev:>7} {r['seconds']:>6.0f}s  {ok}")
    for r in rows:
        labels = "; ".join(f"{part} mask/gender/age {r[part + '_mask_f1']:.3f}/{r[part + '_gender_f1']:.3f}/"
                           f"{r[part + '_age_f1']:.3f}" for part in ("oof", "large") if part + "_mask_f1" in r)
        print(f"  {r['variant']}: {r['overrides']}" + (f"  ({labels})" if labels else ""))


if __name__ == "__main__":
    main()
