"""People pooling (evaluate/people.py, train.pool_people): photos grouped into people by what a mask never
covers, the threshold learnt on labelled people, and every photo of a group deciding gender and age from the
group's least-masked photo. Units on made photos and probabilities, then the whole path through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import labels as L
from maskkit.evaluate import people as P


def photos(tmp_path, people: int = 12, per_person: int = 7, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Each person one smooth random scene; their photos differ below the top third (a mask drawn in a new colour
    and place each time) and by a little noise everywhere."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths, who = [], []
    for person in range(people):
        coarse = rng.uniform(0, 255, (8, 6, 3)).astype(np.uint8)
        scene = np.asarray(Image.fromarray(coarse).resize((96, 128), Image.BILINEAR), np.float32)
        for k in range(per_person):
            img = scene + rng.normal(0, 4, scene.shape)
            top = int(rng.integers(60, 80))
            img[top:top + 40, 20:76] = rng.uniform(0, 255, 3)  # the mask
            path = tmp_path / f"p{person}_{k}.jpg"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=92)
            paths.append(str(path))
            who.append(person)
    return paths, np.array(who)


def test_photos_group_into_their_people_with_a_threshold_learnt_on_labelled_ones(tmp_path):
    from sklearn.metrics import adjusted_rand_score

    paths, who = photos(tmp_path)
    sig = P.signatures(paths)
    assert sig.shape[0] == len(paths) and np.allclose(np.linalg.norm(sig, axis=1), 1, atol=1e-4)
    grouping = P.learn(sig[who < 6], who[who < 6])  # learnt on half the people...
    assert grouping.max_size == 7 and grouping.agreement > 0.95
    groups = P.groups_for(grouping.as_record(), [p for p, w in zip(paths, who) if w >= 6])  # ...groups the others
    assert adjusted_rand_score(who[who >= 6], groups) == pytest.approx(1.0)


def test_a_group_larger_than_one_person_is_split_or_left_alone():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 50))
    sig = np.repeat(base, 5, axis=0) + rng.normal(0, 0.01, (15, 50))
    sig /= np.linalg.norm(sig, axis=1, keepdims=True)
    assert len(np.unique(P.group(sig, 0.05, max_size=5))) == 3  # three people of five photos
    loose = P.group(sig, 1.5, max_size=5)  # a threshold that joins everyone: no group may exceed five
    assert np.bincount(loose).max() <= 5
    assert len(P.group(np.zeros((0, 50), np.float32), 0.1, 5)) == 0


def _photo(mask: str, gender: str, band: str, sure: float = 0.9) -> np.ndarray:
    m = np.full(3, (1 - sure) / 2)
    m[L.MASK_STATES.index(mask)] = sure
    g = np.full(2, 1 - sure)
    g[L.GENDERS.index(gender)] = sure
    a = np.full(3, (1 - sure) / 2)
    a[L.AGE_BANDS.index(band)] = sure
    return (m[:, None, None] * g[None, :, None] * a[None, None, :]).ravel()


def test_every_photo_of_a_person_takes_the_unmasked_photo_s_gender_and_age_and_keeps_its_own_mask():
    person = [_photo("not_wear", "female", "old", 0.95)] + [_photo("wear", "male", "young", 0.6)] * 5 \
        + [_photo("incorrect", "male", "young", 0.6)]
    alone = _photo("wear", "male", "middle")
    probs = np.array(person + [alone])
    out = P.pool(probs, np.array([0] * 7 + [1]))
    mask, gender, age = L.marginals(out)
    assert (gender.argmax(1)[:7] == L.GENDERS.index("female")).all()
    assert (age.argmax(1)[:7] == L.AGE_BANDS.index("old")).all()
    assert np.allclose(mask, L.marginals(probs)[0])  # each photo's mask is its own
    assert np.allclose(out[7], probs[7])  # alone in its group: unchanged
    # without an unmasked photo the group still agrees, on its least-masked photos' side
    unsure = _photo("incorrect", "female", "old", 0.8).reshape(3, 2, 3)  # looks less masked than the other
    unsure = (np.array([0.3, 0.4, 0.3])[:, None, None] * (unsure.sum(0) / unsure.sum())[None]).ravel()
    masked = np.array([_photo("wear", "male", "young", 0.95), unsure])
    g = L.marginals(P.pool(masked, np.array([0, 0])))[1]
    assert np.allclose(g[0], g[1]) and g[0].argmax() == L.GENDERS.index("female")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(0, 10_000))
def test_pooled_probabilities_stay_probabilities_and_groups_agree(n, seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(L.NUM_CLASSES) * 0.5, n)
    groups = rng.integers(0, max(1, n // 3), n)
    out = P.pool(probs, groups)
    assert out.shape == probs.shape and np.isfinite(out).all() and (out >= 0).all()
    assert np.allclose(out.sum(1), 1)
    _, gender, age = L.marginals(out)
    for g in np.unique(groups):
        rows = groups == g
        assert np.allclose(gender[rows], gender[rows][0]) and np.allclose(age[rows], age[rows][0])


FEATURES = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.batch_size=16",
            "data.workers=0", "log.tensorboard=false", "train.recipe=features", "model.prior=none",
            "schedule.epochs=2"]


def test_kfold_pools_people_out_of_fold_and_in_its_submission(cli, dataset_copy, tmp_path, monkeypatch):
    """train --folds records the grouping it learnt and scores its out-of-fold predictions pooled (the raw ones
    kept beside them); submit groups the eval photos the same way and says so; train.pool_people=false keeps
    every photo alone."""
    from sqlmodel import select

    from maskkit.catalog import open_catalog
    from maskkit.catalog.models import Ensemble

    from maskkit.evaluate import kfold

    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    cli("group", "all")
    runs = tmp_path / "runs"
    # these drawn people sit near chance, where pooling rarely pays: its keeping is checked below, here it is kept
    pays = kfold.pooling_pays
    monkeypatch.setattr(kfold, "pooling_pays", lambda pooled, alone: True)
    told = " ".join(cli("train", "--view", "all", "--folds", "2", "--name", "pooled", "--runs-dir", runs,
                        *FEATURES).output.split())
    assert "people pooling kept: photos grouped into people (threshold" in told
    cli("train", "--view", "all", "--folds", "2", "--name", "alone", "--runs-dir", runs, *FEATURES,
        "train.pool_people=false")
    catalog = open_catalog(cli.catalog)
    with catalog.session() as s:
        pooled = s.exec(select(Ensemble).where(Ensemble.name == "pooled")).one()
        alone = s.exec(select(Ensemble).where(Ensemble.name == "alone")).one()
    people = pooled.decision["people"]
    assert people["max_size"] == 7 and 0 < people["threshold"] < 1 and people["agreement"] > 0.5
    assert "people" not in alone.decision
    data = np.load(pooled.decision["tuned_on"])
    assert {"probs", "probs_raw", "groups"} <= set(data.files)
    assert people["composition"] == [5, 1, 1]  # every drawn person: five worn, one worn wrong, one without
    assert np.allclose(data["probs"], P.pool(data["probs_raw"], data["groups"], people["composition"]))
    from maskkit.evaluate.suspects import load_probabilities

    assert np.allclose(load_probabilities(catalog, "pooled")["probs"], data["probs_raw"])  # suspects: each photo's own
    assert 0 <= pooled.decision["oof_macro_f1_unpooled"] <= 1 and "oof_macro_f1_unpooled" not in alone.decision
    from maskkit.evaluate import report

    seen = []
    real = report.people_groups
    monkeypatch.setattr(report, "people_groups", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    assert "macro F1" in cli("eval", "pooled", "--view", "all").output  # a view's photos grouped the same way
    assert len(seen) == 1 and seen[0] is not None and len(np.unique(seen[0])) < len(seen[0])
    out = cli("submit", "pooled").output
    assert "people: the photos grouped into" in out
    assert "people:" not in cli("submit", "alone").output
    # pooling that does not beat every photo alone out of fold is not kept
    monkeypatch.setattr(kfold, "pooling_pays", pays)
    assert pays(0.5, 0.4) and not pays(0.4, 0.4)
    monkeypatch.setattr(P, "pool", lambda probs, groups, *rest: np.full_like(probs, 1 / L.NUM_CLASSES))  # says nothing
    told = " ".join(cli("train", "--view", "all", "--folds", "2", "--name", "hurt", "--runs-dir", runs,
                        *FEATURES).output.split())
    assert "people pooling not kept" in told
    with catalog.session() as s:
        hurt = s.exec(select(Ensemble).where(Ensemble.name == "hurt")).one()
    assert "people" not in hurt.decision
    assert hurt.decision["people_not_kept"]["oof_macro_f1_pooled"] < hurt.decision["oof_macro_f1_after"]
    assert not Path(hurt.decision["tuned_on"]).stem.endswith("_people")
    catalog.dispose()


def test_a_blend_pools_its_mixture_once_and_tunes_weights_on_the_pooled_figure():
    from maskkit.evaluate.blend import mixed, tune_weights

    rng = np.random.default_rng(3)
    truth = np.repeat(rng.integers(0, L.NUM_CLASSES, 20), 7)
    groups = np.repeat(np.arange(20), 7)
    noise = rng.dirichlet(np.ones(L.NUM_CLASSES), len(truth))
    good = 0.5 * noise + 0.5 * np.eye(L.NUM_CLASSES)[truth]
    w = [0.3, 0.7]
    assert np.allclose(mixed(w, [noise, good], groups), P.pool(0.3 * noise + 0.7 * good, groups))
    assert np.allclose(mixed(w, [noise, good]), 0.3 * noise + 0.7 * good)
    weights, score = tune_weights([noise, good], truth, people=groups)
    assert weights[1] >= 0.6 and score > 0.5


def test_a_full_set_gets_its_people_s_mask_states_by_assignment():
    """Seven photos of one person, composition 5/1/1: the most probable assignment, even where one photo alone
    would say otherwise (two photos both look worn wrong: the likelier keeps it, the other goes to worn)."""
    person = np.repeat([1, 2], 7)
    mask = np.array([0, 0, 0, 0, 0, 1, 2] * 2)
    assert P.composition(person, mask) == [5, 1, 1]
    assert P.composition(np.array([1, 1, 2]), np.array([0, 1, 0])) is None  # no composition most people share
    probs = np.array([[0.8, 0.15, 0.05]] * 4 + [[0.3, 0.65, 0.05], [0.2, 0.75, 0.05], [0.4, 0.1, 0.5]]
                     + [[0.6, 0.3, 0.1]] * 2)  # a group of 7, then 2 photos of a group too small to assign
    groups = np.array([0] * 7 + [1, 1])
    out = P.assign_masks(probs, groups, [5, 1, 1])
    assert list(out[:7].argmax(1)) == [0, 0, 0, 0, 0, 1, 2] and np.allclose(out.sum(1), 1)
    assert np.allclose(out[7:], probs[7:])
    full = np.einsum("nm,g,a->nmga", probs, [0.5, 0.5], [0.2, 0.5, 0.3]).reshape(len(probs), -1)
    pooled = L.marginals(P.pool(full, groups, [5, 1, 1]))[0]
    assert list(pooled[:7].argmax(1)) == [0, 0, 0, 0, 0, 1, 2]
    assert np.allclose(L.marginals(P.pool(full, groups))[0], probs)  # without a composition: masks untouched
