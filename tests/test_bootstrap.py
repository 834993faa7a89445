"""Person-bootstrap intervals and paired differences (maskkit.evaluate.bootstrap) against independently
computed values, and bench/quality.py's variant handling."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import f1_score

from maskkit.evaluate.bootstrap import compare, macro_f1

ROOT = Path(__file__).resolve().parents[1]


def _example():
    """6 people, 3 photos each, 4 classes; variant B fixes person 3's photos that A gets wrong."""
    people = np.repeat(np.arange(6), 3)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 0, 0, 1, 1, 1])
    a = labels.copy()
    a[9:12] = 2  # person 3 (class 3) read as class 2
    a[0] = 1
    b = labels.copy()
    b[0] = 1
    return labels, people, a, b


def _sk(y, p):
    present = sorted(set(y) | set(p))
    return f1_score(y, p, labels=present, average="macro", zero_division=0)


def test_plain_estimate_is_sklearns_macro_f1():
    labels, people, a, b = _example()
    out = compare(labels, {"A": a, "B": b}, people, resamples=50)
    assert out.scores["A"].estimate == pytest.approx(_sk(labels, a))
    assert out.scores["B"].estimate == pytest.approx(_sk(labels, b))
    assert out.differences["B"].estimate == pytest.approx(_sk(labels, b) - _sk(labels, a))
    assert out.differences["A"].estimate == 0 and out.differences["A"].low == 0 and out.differences["A"].high == 0
    assert out.people == 6 and out.images == 18


def test_intervals_match_a_naive_resampling_loop():
    """The same draws (numpy's default_rng(seed).integers(0, people, people) per resample), written the slow
    obvious way with sklearn: the percentiles must agree exactly."""
    labels, people, a, b = _example()
    resamples, level = 300, 0.90
    out = compare(labels, {"A": a, "B": b}, people, resamples=resamples, level=level, seed=7)
    rng = np.random.default_rng(7)
    ids = np.unique(people)
    sa, sb = [], []
    for _ in range(resamples):
        drawn = rng.integers(0, len(ids), len(ids))
        take = np.concatenate([np.flatnonzero(people == ids[k]) for k in drawn])
        sa.append(_sk(labels[take], a[take]))
        sb.append(_sk(labels[take], b[take]))
    sa, sb = np.array(sa), np.array(sb)
    assert (out.scores["A"].low, out.scores["A"].high) == pytest.approx(tuple(np.percentile(sa, [5, 95])))
    assert (out.scores["B"].low, out.scores["B"].high) == pytest.approx(tuple(np.percentile(sb, [5, 95])))
    assert (out.differences["B"].low, out.differences["B"].high) == pytest.approx(
        tuple(np.percentile(sb - sa, [5, 95])))


def test_paired_difference_is_narrower_than_the_two_intervals():
    """Two recipes that differ on few people: each interval is wide, their paired difference is not."""
    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(120), 5)
    labels = np.repeat(rng.integers(0, 18, 120), 5)
    a = np.where(rng.random(600) < 0.55, labels, rng.integers(0, 18, 600))
    b = a.copy()
    fixed = np.isin(people, np.arange(12)) & (a != labels)
    b[fixed] = labels[fixed]  # B also gets 12 people's photos right
    out = compare(labels, [a, b], people, resamples=400)
    da = out.differences["1"]
    assert da.estimate > 0 and da.clears_zero()
    # the two intervals overlap (unpaired, nothing could be concluded), yet the paired one clears 0 and is narrower
    assert out.scores["1"].low < out.scores["0"].high
    width = lambda i: i.high - i.low  # noqa: E731
    assert width(da) < min(width(out.scores["0"]), width(out.scores["1"]))


def test_probabilities_are_taken_as_their_argmax_and_bad_shapes_fail():
    labels, people, a, _ = _example()
    probs = np.eye(4)[a] * 0.7 + 0.075
    assert compare(labels, [probs], people, resamples=20).scores["0"].estimate == pytest.approx(_sk(labels, a))
    with pytest.raises(ValueError, match="predictions for"):
        compare(labels, [a[:-1]], people)
    with pytest.raises(ValueError, match="person ids"):
        compare(labels, [a], people[:-1])
    with pytest.raises(ValueError, match="level"):
        compare(labels, [a], people, level=1.5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 17), st.integers(0, 17)), min_size=1, max_size=60))
def test_macro_f1_equals_sklearn_on_any_rows(rows):
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    assert macro_f1(y, p) == pytest.approx(_sk(y, p))


def test_quality_bench_parses_variants_and_applies_the_rule(monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    variants = quality.parse_variants(["model.prior=none", "data.weighted_sampler=false loss.focal_gamma=2"])
    assert [v.name for v in variants] == ["default", "v1", "v2"]
    assert variants[2].overrides == ["data.weighted_sampler=false", "loss.focal_gamma=2"]
    with pytest.raises(SystemExit):
        quality.parse_variants(["not-an-override"])
    # a variant may not pick epochs on the people it is scored on (the large holdout is its validation set)
    for picking in ("train.metric=val_macro_f1", "model.prior=none train.early_stopping=2"):
        with pytest.raises(SystemExit, match="pick epochs on the people"):
            quality.parse_variants([picking])
    assert len(quality.parse_variants(["train.metric=last train.early_stopping=0"])) == 2
    # a resumed work folder keys trainings by the overrides, not by the variant's place in the list
    again = quality.parse_variants(["data.weighted_sampler=false loss.focal_gamma=2"])
    assert quality.work_key(again[1]) == quality.work_key(variants[2]) != quality.work_key(variants[1])
    reordered = quality.parse_variants(["loss.focal_gamma=2 data.weighted_sampler=false"])
    assert quality.work_key(reordered[1]) == quality.work_key(variants[2])
    assert quality.work_key(variants[0]).startswith("default-")
    # ... and by today's defaults: a changed default never reuses the trainings of the old one
    from maskkit.train import config

    before = [quality.work_key(v) for v in variants]
    real = config.default_config
    monkeypatch.setattr(config, "default_config", lambda: {**real(), "loss": {**real()["loss"], "age_sigma": 1.5}})
    after = [quality.work_key(v) for v in variants]
    assert all(b != a for b, a in zip(before, after)), (before, after)
    # the rule: better on both figures, one paired interval clear of 0
    labels, people, a, b = _example()
    comp = compare(labels, {"default": a, "v1": b}, people, resamples=200)
    worse = compare(labels, {"default": b, "v1": a}, people, resamples=200)
    assert quality.passes("v1", comp, comp) == (comp.differences["v1"].low > 0)
    assert quality.passes("v1", comp, worse) is False
    assert quality.passes("v1", comp, None) is False
    # variants are paired image by image, whatever order their folds wrote them in
    shuffled = quality.by_image(np.array([3, 1, 2]), np.array([30, 10, 20]), np.array([3, 1, 2]), np.array([7, 8, 9]))
    assert shuffled["images"].tolist() == [1, 2, 3] and shuffled["labels"].tolist() == [10, 20, 30]



def test_quality_bench_decides_the_holdout_with_each_variants_offsets_cross_fitted():
    """The facebench-large holdout is one run's validation set, without tuned offsets: the bench applies the
    variant's train.offsets as a k-fold ensemble keeps them, each holdout person decided by offsets tuned on the
    other holdout people."""
    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    from maskkit.evaluate.decision import cross_checked

    assert quality.offsets_kind([]) == "classes"
    assert quality.offsets_kind(["train.offsets=fields", "(blended with the default)"]) == "fields"
    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(80), 4)
    labels = np.repeat(rng.integers(0, 18, 80), 4)
    probs = rng.dirichlet(np.ones(18), len(people))
    probs[np.arange(len(people)), labels] += 0.3
    probs[labels % 3 == 2, labels[labels % 3 == 2] - 1] += 0.5  # the old read as middle-aged
    probs /= probs.sum(1, keepdims=True)
    for kind in ("fields", "classes"):
        record, honest = cross_checked(probs, labels, people, seed=0, by=kind)
        assert record["offsets"] == kind
        assert np.array_equal(quality.holdout_decided(probs, labels, people, kind), honest.argmax(1))
    assert np.array_equal(quality.holdout_decided(probs, labels, people, "none"), probs.argmax(1))


def test_quality_bench_pools_seeds_person_by_person():
    """--seeds: every variant once per seed; its figures pool the seeds' rows (a person's rows of every seed
    resampled together), dev figures are the seeds' mean, seconds add up; a variant that sets its own seed, or
    --blend, cannot be combined with several seeds, and --blend needs a one-backbone default."""
    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    variants = quality.parse_variants(["data.balance_by=weights"])
    assert quality.parse_seeds("1,0", variants, blend=False) == [0, 1]
    if quality.blended_backbones([]):  # the default blends backbones (the features recipe, on a CPU)
        with pytest.raises(SystemExit, match="one-backbone default"):
            quality.parse_seeds("0", quality.parse_variants(["train.seed=3"]), blend=True)
    else:
        assert quality.parse_seeds("0", quality.parse_variants(["train.seed=3"]), blend=True) == [0]
    for text, vs, blend, message in (("0,x", variants, False, "comma-separated numbers"),
                                     ("-1", variants, False, "none negative"),
                                     ("0,1", quality.parse_variants(["train.seed=3"]), False, "set train.seed"),
                                     ("0,1", variants, True, "one seed")):
        with pytest.raises(SystemExit, match=message):
            quality.parse_seeds(text, vs, blend)
    labels, people, a, b = _example()
    images = np.arange(len(labels))

    def seed_run(pred, dev, seconds):
        one = quality.Variant("v1", [])
        one.oof = {"images": images, "labels": labels, "pred": pred, "people": people}
        one.dev, one.seconds = {"macro_f1": dev}, {"oof": seconds}
        return one

    v = quality.Variant("v1", [])
    quality.pool_seeds(v, [seed_run(a, 0.5, 10.0), seed_run(b, 0.3, 5.0)])
    assert v.large is None and v.dev == {"macro_f1": pytest.approx(0.4)} and v.seconds == {"oof": 15.0}
    assert np.array_equal(v.oof["pred"], np.concatenate([a, b])) and len(v.oof["people"]) == 2 * len(people)
    pooled = compare(v.oof["labels"], {"v1": v.oof["pred"]}, v.oof["people"], resamples=50)
    assert pooled.people == len(np.unique(people)) and pooled.images == 2 * len(labels)
    assert pooled.scores["v1"].estimate == pytest.approx(macro_f1(np.tile(labels, 2), np.concatenate([a, b])))
