import json

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


def test_demo_builds_ingests_and_counts(runner, tmp_path):
    from maskkit.cli import app

    result = runner.invoke(app, ["demo", str(tmp_path / "demo"), "--people", "9"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "catalog.db").is_file()
    assert "18 classes" in result.output
    s = json.loads(runner.invoke(app, ["--catalog", str(tmp_path / "demo" / "catalog.db"), "stats", "--json"]).output)
    assert s["profiles"] == 9 and s["images"] == 63 and s["eval_images"] == 42 and s["damaged_count"] == 1
