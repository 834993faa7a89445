import json

import pytest

from maskkit import labels


def test_stats_json_and_plots(cli, dataset_copy, tmp_path):
    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    s = json.loads(cli("stats", "--json", "--plot", tmp_path / "plots").output)
    assert {"profiles", "images", "damaged", "eval_images"} <= set(s)
    assert sum(c["images"] for c in s["classes"]) == s["images"] - s["damaged_count"]
    assert s["images_by"]["mask"] == {"wear": 60, "incorrect": 12, "not_wear": 12}
    assert sum(s["people"]["gender"].values()) == 12 == sum(s["age_histogram"].values())
    assert sum(sum(v.values()) for v in s["people"]["gender_x_age_band"].values()) == 12
    for c in s["classes"]:
        assert c["name"] == labels.class_name(c["class"])
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["ages.png", "classes.png", "gender_age.png", "labels.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    table = cli("stats").output
    assert "18 classes" in table and "gender x age band" in table and "age histogram" in table


def test_demo_stats_only(runner, tmp_path):
    from maskkit.cli import app

    result = runner.invoke(app, ["demo", str(tmp_path / "demo"), "--people", "9", "--faces", "drawn", "--stats-only"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "catalog.db").is_file()
    assert "18 classes" in result.output
    s = json.loads(runner.invoke(app, ["--catalog", str(tmp_path / "demo" / "catalog.db"), "stats", "--json"]).output)
    assert s["profiles"] == 9 and s["images"] == 63 and s["eval_images"] == 42 and s["damaged_count"] == 1


def test_demo_runs_the_whole_pipeline(runner, tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    from maskkit.cli import app

    monkeypatch.delenv("MASKKIT_DATA", raising=False)
    result = runner.invoke(app, ["demo", str(tmp_path / "d"), "--people", "9", "--epochs", "1",
                                 "--backbone", "test_efficientnet", "--image-size", "32"])
    assert result.exit_code == 0, result.output[-3000:] + repr(result.exception)
    for step in ("ingest", "relabel", "relabel --suspects prior", "preprocess crop", "group demo",
                 "train --view demo --folds 2", "eval --per-class", "submit", "runs"):
        assert f"maskkit {step}" in result.output, step
    assert "score: accuracy" in result.output and "where everything is" in result.output
    assert "latest: demo-ensemble" in result.output and "out-of-fold" in result.output
    assert "recipe: features (train.recipe=auto and no GPU is here" in result.output  # which recipe, and why
    assert "synthetic young people for the balance" in result.output  # stage2 generated people
    sub = (tmp_path / "d" / "runs" / "submission_demo.csv").read_text().splitlines()
    assert sub[0] == "ImageID,ans" and len(sub) == 1 + 42
