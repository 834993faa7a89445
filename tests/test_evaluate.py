"""eval, ensemble, submit, predict, export and label suspects on a tiny trained run."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from maskkit.catalog import open_catalog
from maskkit.train.runs import start_run

TINY = ["model.backbone=test_efficientnet", "model.pretrained=none", "data.image_size=32", "data.batch_size=16",
        "data.workers=0", "schedule.epochs=1", "log.tensorboard=false", "train.recipe=finetune", "model.head=single"]


@pytest.fixture
def trained(cli, dataset_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    cli("group", "all")
    cli("split", "k2", "--view", "all", "--folds", "2")
    catalog = open_catalog(cli.catalog)
    runs = [start_run(catalog, view="all", split="k2", fold=0, runs_dir=tmp_path / "runs", overrides=TINY).run,
            start_run(catalog, view="all", split="k2", fold=0, runs_dir=tmp_path / "runs",
                           overrides=TINY + ["train.seed=1", "model.head=multi"]).run]
    yield cli, catalog, runs, dataset_copy
    catalog.dispose()


def test_eval_reports_and_records(trained):
    cli, catalog, runs, _ = trained
    out = json.loads(cli("eval", runs[0], "--per-class", "--json").output)
    m = out["metrics"]
    assert len(m["class_f1"]) == 18 and len(m["support"]) == 18
    # eval predicts the validation fold again: the same figure as the run's own validation of its best epoch
    from sklearn.metrics import f1_score

    with catalog.session() as s:
        from maskkit.catalog.models import Run

        folder = Path(s.exec(__import__("sqlmodel").select(Run).where(Run.name == runs[0])).one().folder)
    val = np.load(folder / "val_probs.npz")
    expected = f1_score(val["labels"], val["probs"].argmax(1), labels=list(range(18)), average="macro", zero_division=0)
    assert abs(m["macro_f1"] - expected) < 1e-6
    assert sum(m["support"]) == out["images"] and np.array(out["confusion"]).sum() == out["images"]
    assert Path(out["confusion_png"]).read_bytes()[:4] == b"\x89PNG"
    text = cli("eval", runs[0], "--per-class", "--cam", "4").output
    assert "per class" in text and "confusion matrix" in text and "Grad-CAM sheet" in text
    table = cli("eval", runs[0], runs[1], "--compare").output
    assert runs[0] in table and runs[1] in table
    assert cli.db().execute("select count(*) from evaluation").fetchone()[0] >= 3


def test_ensemble_of_a_run_with_itself_equals_the_run(trained):
    cli, catalog, runs, _ = trained
    single = json.loads(cli("eval", runs[0], "--json").output)["metrics"]
    cli("ensemble", runs[0], runs[0], "--name", "twice")
    twice = json.loads(cli("eval", "twice", "--json").output)["metrics"]
    assert twice["macro_f1"] == pytest.approx(single["macro_f1"]) and twice["accuracy"] == pytest.approx(single["accuracy"])
    out = cli("ensemble", runs[0], runs[1], "--name", "both", "--vote", "hard", "--tta", "hflip", "--weights", "2,1").output
    assert "ensemble both" in out
    row = cli.db().execute("select members, weights, vote, tta from ensemble where name='both'").fetchone()
    assert json.loads(row[0]) == runs and json.loads(row[1]) == [2.0, 1.0] and row[2:] == ("hard", "hflip")


def test_soft_voting_averages_probabilities_not_logits():
    from maskkit.evaluate.predict import combine

    a = np.array([[0.9, 0.1] + [0] * 16])
    b = np.array([[0.2, 0.8] + [0] * 16])
    assert np.allclose(combine([a, b], [1, 1], "soft")[0, :2], [0.55, 0.45])
    hard = combine([a, b, b], [1, 1, 1], "hard")
    assert hard.argmax() == 1


def test_submit_validates_and_scores(trained, tmp_path):
    cli, catalog, runs, data = trained
    out = tmp_path / "sub.csv"
    text = cli("submit", runs[0], "--out", out, "--score", data["eval"] / "answers.csv").output
    assert "validated against info.csv" in text and "macro F1" in text
    info = [r[0] for r in csv.reader(open(data["eval"] / "info.csv"))][1:]
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["ImageID", "ans"] and [r[0] for r in rows[1:]] == info
    assert all(0 <= int(r[1]) < 18 for r in rows[1:])
    sub = cli.db().execute("select source, rows, scores from submission").fetchone()
    assert sub[0] == runs[0] and sub[1] == len(info) and "macro_f1" in json.loads(sub[2])
    ens = cli("submit", runs[0], "--out", tmp_path / "e.csv").output
    assert "wrote" in ens


def test_submit_bad_input(trained, tmp_path):
    cli, catalog, runs, data = trained
    empty = tmp_path / "noinfo"
    (empty / "images").mkdir(parents=True)
    for args, message in [(["nope"], "unknown run or ensemble 'nope'"),
                          ([runs[0], "--eval", empty], "info.csv: file not found"),
                          (["eval-nope"], "unknown run or ensemble")]:
        result = cli("submit", *args, ok=False)
        assert result.exit_code == 3 and message in result.output, (args, result.output)
    result = cli("eval", "nope", ok=False)
    assert result.exit_code == 3 and "unknown run or ensemble 'nope'" in result.output


def test_submit_to_an_eval_set_with_missing_images_says_so_and_records_nothing(trained, tmp_path):
    """The hint names the missing images (not 'ingest --eval', which cannot help), and the broken set is not
    recorded, so a plain submit afterwards still finds the one eval set."""
    import shutil

    cli, catalog, runs, data = trained
    other = tmp_path / "other-eval"
    shutil.copytree(data["eval"], other)
    listed = [r[0] for r in csv.reader((other / "info.csv").open())][1:]
    (other / "images" / listed[2]).unlink()
    before = cli.db().execute("select count(*) from data_root").fetchone()[0]
    result = cli("submit", runs[0], "--eval", other, ok=False)
    assert result.exit_code == 3, result.output
    assert f"1 of {len(listed)} images listed" in result.output and listed[2] in result.output
    assert "ingest --eval" not in result.output
    assert cli.db().execute("select count(*) from data_root").fetchone()[0] == before
    assert "wrote" in cli("submit", runs[0], "--out", tmp_path / "plain.csv").output
    header_only = tmp_path / "header-only"
    (header_only / "images").mkdir(parents=True)
    (header_only / "info.csv").write_text("ImageID,ans\n")
    result = cli("submit", runs[0], "--eval", header_only, ok=False)
    assert result.exit_code == 2 and "no rows, only a header" in result.output, result.output


def test_suspects_rank_planted_label_errors(trained, tmp_path):
    """cleanlab ranks people whose labels disagree with confident out-of-fold predictions first."""
    cli, catalog, runs, _ = trained
    rows = cli.db().execute("select i.id, i.profile_id, i.mask, p.gender, p.age from image i join profile p "
                            "on p.id = i.profile_id where i.damaged = ?", (False,)).fetchall()
    from maskkit import labels

    rng = np.random.default_rng(0)
    probs, truth = [], []
    people = sorted({r[1] for r in rows})
    flipped = set(people[:2])
    for image_id, pid, mask, gender, age in rows:
        g = labels.gender_index(gender)
        if pid in flipped:  # the model is sure this person is the other gender
            g = 1 - g
        c = labels.encode(mask, g, labels.age_band(age))
        p = rng.dirichlet(np.ones(18)) * 0.1
        p[c] += 0.9
        probs.append(p / p.sum())
        truth.append(c)
    oof = tmp_path / "oof.npz"
    np.savez(oof, probs=np.array(probs), labels=np.array(truth), image_ids=np.array([r[0] for r in rows]),
             profile_ids=np.array([r[1] for r in rows]))
    from maskkit.evaluate.suspects import rank_suspects

    ranked = rank_suspects(catalog, str(oof))
    assert {r["profile_id"] for r in ranked[:2]} == flipped and ranked[0]["field"] == "gender"
    out = cli("relabel", "--suspects", oof, "--top", "3").output
    assert "label suspects" in out
    from maskkit.review.queue import build_queue

    from maskkit.evaluate.suspects import suspects

    queue = build_queue(catalog, order="suspects", ranked=suspects(catalog, str(oof), evidence="model"))
    assert set(queue.profile_ids[:2]) == flipped and queue.hints[queue.profile_ids[0]]["source"] == "model"
    combined = build_queue(catalog, order="suspects", ranked=suspects(catalog, str(oof)))  # the default: + face prior
    assert combined.hints[combined.profile_ids[0]]["source"] == "model + face prior"
    bad = tmp_path / "bad.npz"
    np.savez(bad, probs=np.ones((3, 5)) / 5, labels=np.zeros(3), image_ids=np.arange(3), profile_ids=np.arange(3))
    result = cli("relabel", "--suspects", bad, ok=False)
    assert result.exit_code == 2 and "5 classes, expected 18" in result.output
    # another catalog's file: the same image ids, other people -> refused, not mapped onto the wrong people
    ids = np.array([r[0] for r in rows])
    owners = np.array([r[1] for r in rows])
    np.savez(tmp_path / "other.npz", probs=np.array(probs), labels=np.array(truth), image_ids=ids,
             profile_ids=np.roll(owners, 7))
    result = cli("relabel", "--suspects", tmp_path / "other.npz", ok=False)
    assert result.exit_code != 0 and "made on another catalog" in result.output
    # a run, `latest` and a name nothing has are understood like eval/submit understand them
    assert "label suspects from " + runs[0] in cli("relabel", "--suspects", runs[0], "--top", "2").output
    assert "label suspects from latest" in cli("relabel", "--suspects", "latest", "--top", "2").output
    result = cli("relabel", "--suspects", "no-such-run", ok=False)
    assert result.exit_code != 0 and "neither a run, an ensemble" in result.output
    result = cli("relabel", "--suspects", runs[0], "--top", "-5", ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output


@pytest.mark.sqlite_only
def test_export_onnx_matches_pytorch(trained, tmp_path):
    pytest.importorskip("onnx")
    cli, catalog, runs, _ = trained
    out = cli("export", runs[1], "--onnx", tmp_path / "m.onnx").output
    assert "max |diff|" in out and (tmp_path / "m.onnx").stat().st_size > 1000


@pytest.mark.sqlite_only
def test_predict_any_photo(trained, tmp_path):
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    cli, catalog, runs, _ = trained
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(photo)
    result = json.loads(cli("predict", photo, "--run", runs[0], "--out", tmp_path / "pred", "--json").output)
    faces = result[0]["faces"]
    assert len(faces) >= 1 and faces[0]["mask"] in ("wear", "incorrect", "not_wear") and 0 < faces[0]["confidence"] <= 1
    assert Path(result[0]["output"]).is_file()
