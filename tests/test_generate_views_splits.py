import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from maskkit import labels

AGES = {"young": [19, 23, 27, 25], "middle": [35, 48, 52], "old": [64, 71]}


@pytest.fixture(scope="module")
def face_people(tmp_path_factory):
    """9 people made from a real face photo (scikit-image's astronaut): flipped, lit and framed
    differently, with ages in all three bands (4 young, 3 middle, 2 old)."""
    data = pytest.importorskip("skimage.data")
    base = Image.fromarray(data.astronaut())
    root = tmp_path_factory.mktemp("faces") / "train"
    rows = ["id,gender,race,age,path"]
    n = 0
    for band, ages in AGES.items():
        for age in ages:
            n += 1
            img = base.crop((64 - 8 * (n % 3), 0, 448 - 8 * (n % 3), 512))
            if n % 2:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Brightness(img).enhance(0.8 + 0.05 * n)
            gender = "female" if n % 2 else "male"
            folder = f"{n:06d}_{gender}_Asian_{age}"
            d = root / "images" / folder
            d.mkdir(parents=True)
            for kind in labels.IMAGE_KINDS:
                img.save(d / f"{kind}.jpg", quality=90)
            rows.append(f"{n:06d},{gender},Asian,{age},{folder}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def ingested(cli, face_people):
    cli("ingest", face_people)
    return cli


def q(cli, sql, *args):
    return cli.db().execute(sql, args).fetchall()


def test_generate_mask_on_real_faces(ingested, tmp_path):
    cli = ingested
    out = cli("generate", "mask", "--seed", "3", "--sheet", tmp_path / "sheet.png").output
    assert "9 new people" in out and "success 100.0%" in out
    assert (tmp_path / "sheet.png").read_bytes()[:4] == b"\x89PNG"
    people = q(cli, "select id, parent_id, origin, generator from profile where origin='synthetic'")
    assert len(people) == 9 and all(p[1] is not None for p in people)
    kinds = q(cli, "select kind, count(*) from image where origin='synthetic' group by kind order by kind")
    assert kinds == [("mask1", 9), ("mask2", 9), ("mask3", 9), ("mask4", 9), ("mask5", 9), ("normal", 9)]
    gen = json.loads(q(cli, "select generator from image where kind='mask1' and origin='synthetic' limit 1")[0][0])
    assert gen["seed"] == 3 and gen["placement"] == "wear" and gen["style"] and gen["parent"]
    # the masked image differs from the photo where the mask sits, and matches it elsewhere
    root = Path(q(cli, "select path from data_root where name='work'")[0][0])
    rel_mask, rel_normal = (q(cli, f"select path from image where origin='synthetic' and kind='{k}' order by id limit 1")[0][0]
                            for k in ("mask1", "normal"))
    a = np.asarray(Image.open(root / rel_mask)).astype(int)
    b = np.asarray(Image.open(root / rel_normal)).astype(int)
    changed = np.abs(a - b).max(axis=2) > 40
    assert changed.mean() > 0.005 and changed[:60].mean() < 0.001  # a mask-sized patch changed; the top untouched
    # synthetic people keep their parent's labels
    for pid, parent, *_ in people:
        assert q(cli, "select gender, age from profile where id=?", pid) == q(cli, "select gender, age from profile where id=?", parent)


def test_generation_is_deterministic(face_people, tmp_path, runner):
    from maskkit.cli import app

    hashes = []
    for name in ("a", "b"):
        db = tmp_path / f"{name}.db"
        for args in (["ingest", str(face_people)], ["generate", "person", "--band", "old", "--count", "3", "--seed", "7"]):
            result = runner.invoke(app, ["--catalog", str(db), *args], env={"MASKKIT_DATA": str(tmp_path / name)})
            assert result.exit_code == 0, result.output
        hashes.append(sqlite3.connect(db).execute(
            "select group_concat(sha1, ',') from (select sha1 from image where origin='synthetic' order by path)").fetchone())
    assert hashes[0] == hashes[1] and hashes[0][0]


def test_generate_person_incorrect_and_age_backend(ingested, tmp_path, monkeypatch):
    cli = ingested
    out = cli("generate", "person", "--band", "old", "--count", "3").output
    assert "3 new people, 21 images" in out
    rows = q(cli, "select p.age, p.generator, count(i.id) from profile p join image i on i.profile_id=p.id "
                  "where p.origin='synthetic' group by p.id")
    assert len(rows) == 3 and all(age >= 60 and n == 7 and json.loads(g)["kind"] == "remask" for age, g, n in rows)
    placements = {json.loads(g)["placement"] for (g,) in q(cli, "select generator from image where kind='incorrect_mask' and origin='synthetic'")}
    assert placements <= {"under_nose", "chin"}
    # an age backend plugs in: new faces, then completed by mask / incorrect
    # the built-in backend learns from the catalog's faces: 9 are too few for age prototypes
    bad = cli("generate", "age", "--band", "old", ok=False)
    assert bad.exit_code == 2 and "at least 12 faces" in bad.output
    plugin = tmp_path / "toy_age.py"
    plugin.write_text(
        "import numpy as np\n"
        "from maskkit.faces.generate import age_backend\n"
        "class Greyer:\n"
        "    name = 'toy-grey'\n"
        "    def transform(self, rgb, box, landmarks, target_age):\n"
        "        grey = rgb.mean(axis=2, keepdims=True)\n"
        "        return (0.5 * rgb + 0.5 * grey).astype(np.uint8)\n"
        "@age_backend\n"
        "def load(checkpoint=None, device='cpu'):\n"
        "    return Greyer()\n"
        "def unmarked(checkpoint=None, device='cpu'):\n"
        "    return Greyer()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = cli("generate", "age", "--band", "old", "--count", "2", "--age-backend", "toy_age:load").output
    assert "2 new people, 2 images" in out
    new = q(cli, "select id, age, generator from profile where cast(generator as text) like '%new-face%'")
    assert len(new) == 2 and all(age >= 60 and json.loads(g)["backend"] == "toy-grey" for _, age, g in new)
    for _, _, g in new:  # parents come from the other bands: an old person is never "aged" to old again
        parent_age = q(cli, "select age from profile where person_id = ? and origin = 'original'", json.loads(g)["parent"])
        assert parent_age and parent_age[0][0] < 60
    out = cli("generate", "mask", "--synthetic-only").output
    assert "2 completed" in out
    cli("generate", "incorrect", "--synthetic-only")
    for pid, *_ in new:
        assert q(cli, "select count(*) from image where profile_id=?", pid)[0][0] == 7
    bad = cli("generate", "age", "--age-backend", "no_such_module:load", ok=False)
    assert bad.exit_code == 2 and "cannot be loaded" in bad.output
    # only registered factories are ever called: an unmarked one, or os:system, is refused before any call
    for spec in ("toy_age:unmarked", "os:system", "builtins:eval"):
        bad = cli("generate", "age", "--age-backend", spec, ok=False)
        assert bad.exit_code == 2 and "not registered as one" in bad.output, bad.output
    bad = cli("generate", "age", "--age-backend", "../x:y", ok=False)
    assert bad.exit_code == 2 and "must be 'prototype'" in bad.output


def test_masktheface_templates(ingested, tmp_path):
    cli = ingested
    tdir = tmp_path / "templates"
    (tdir / "templates").mkdir(parents=True)
    rgba = np.zeros((200, 300, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tdir / "templates" / "red.png")
    (tdir / "masks.cfg").write_text("[red_box]\ntemplate: templates/red.png\nmask_a: 5, 40\nmask_b: 150, 5\n"
                                    "mask_c: 295, 40\nmask_d: 10, 150\nmask_e: 150, 195\nmask_f: 290, 150\n")
    cli("generate", "mask", "--profiles", "000001", "--templates", tdir)
    styles = {json.loads(g)["style"] for (g,) in q(cli, "select generator from image where kind like 'mask%' and origin='synthetic'")}
    assert styles == {"red_box"}
    for args, code, message in [(["--templates", tmp_path / "nope"], 3, "does not exist"),
                                (["--templates", tmp_path], 2, "no *.cfg file")]:
        result = cli("generate", "mask", *args, ok=False)
        assert result.exit_code == code and message in result.output


def test_views_balance_show_diff_stale(ingested, tmp_path):
    cli = ingested
    out = cli("group", "stage1", "--balance", "stage1", "--generate", "--seed", "2").output
    assert "view stage1" in out
    show = json.loads(cli("group", "stage1", "--show", "--json").output)
    bands = show["people_by_band"]
    assert max(bands.values()) - min(bands.values()) <= 1 and bands["young"] == 4
    assert show["origins"]["old"] == {"original": 2, "synthetic remask": 2}
    cli("group", "stage2", "--balance", "stage2", "--generate", "--seed", "2")
    bands2 = json.loads(cli("group", "stage2", "--show", "--json").output)["people_by_band"]
    assert bands2 == {"young": 8, "middle": 8, "old": 8}
    cli("group", "real", "--origin", "original", "--exclude-ages", "50-59")
    real = json.loads(cli("group", "real", "--show", "--json").output)
    assert real["people"] == 8 and real["images"] == 56
    diff = json.loads(cli("group", "stage1", "--diff", "real", "--json").output)
    assert diff["only_b_people"] == 0 and diff["only_a_people"] == 1 + 3  # the 52-year-old, 3 synthetic people
    listing = json.loads(cli("group", "--list", "--json").output)
    assert {v["name"]: v["stale"] for v in listing} == {"stage1": False, "stage2": False, "real": False}
    old_hash = listing[0]["hash"]
    cli("relabel", "000002", "--gender", "flip")
    assert json.loads(cli("group", "--list", "--json").output)[0]["stale"] is True
    assert "stale" in cli("group", "stage1", "--show").output
    out = cli("group", "stage1", "--refresh").output
    assert f"was {old_hash[:12]}" in out
    assert json.loads(cli("group", "--list", "--json").output)[0]["stale"] is False


def test_view_bad_input(ingested, tmp_path):
    cli = ingested
    spec = tmp_path / "v.yaml"
    spec.write_text("people:\n  exclude_age: [57, 59]\n")
    cases = [
        (["group", "x", "--spec", spec], 2, "unknown people key 'exclude_age' (did you mean 'exclude_ages'?)"),
        (["group", "x", "--exclude-ages", "0-120"], 2, "the view selects no people"),
        (["group", "x", "--variant", "cropp"], 3, "unknown variant 'cropp'"),
        (["group", "x", "--balance", "stage3"], 2, "balance must be"),
        (["group", "x", "--balance", "stage1"], 2, "not enough synthetic people to balance: 1 middle, 2 old missing"),
        (["group", "nope", "--show"], 3, "unknown view 'nope'"),
        (["split", "s", "--view", "nope", "--folds", "3"], 3, "unknown view 'nope'"),
        (["split", "s", "--check"], 3, "unknown split 's'"),
    ]
    for args, code, message in cases:
        result = cli(*args, ok=False)
        assert result.exit_code == code and message in result.output, (args, result.output)
    assert q(cli, "select count(*) from view") == [(0,)]


def test_split_keeps_synthetic_people_with_their_parent(ingested):
    cli = ingested
    cli("group", "bal", "--balance", "stage2", "--generate")
    out = cli("split", "k3", "--view", "bal", "--folds", "3", "--seed", "1").output
    assert "no leakage" in out
    check = json.loads(cli("split", "k3", "--check", "--json").output)
    assert check["leaks"] == [] and sum(f["people"] for f in check["per_fold"].values()) == 24
    folds = dict(q(cli, "select profile_id, fold from split_member"))
    for pid, parent in q(cli, "select id, parent_id from profile where parent_id is not null"):
        assert folds[pid] == folds[parent]
    cli("split", "hold", "--view", "bal", "--val", "0.3")
    check = json.loads(cli("split", "hold", "--check", "--json").output)
    assert check["kind"] == "holdout" and check["per_fold"]["1"]["people"] > 0
    bad = cli("split", "k3", "--view", "bal", "--folds", "3", ok=False)
    assert bad.exit_code == 4 and "exists" in bad.output
    bad = cli("split", "z", "--view", "bal", ok=False)
    assert bad.exit_code == 2 and "either --folds" in bad.output
