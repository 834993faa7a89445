"""The built-in age backend (prototypes learnt from the catalog's faces) and `maskkit ablate`."""

import csv
import json

import numpy as np
import pytest

from maskkit import labels

@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """14 people made from one real face photo (demo_data's photo faces), in all three age bands."""
    pytest.importorskip("skimage.data")
    from maskkit.demo_data import make_dataset

    return make_dataset(tmp_path_factory.mktemp("agefaces"), people=14, eval_people=1, seed=5, messy=False,
                        faces="photo")["train"]


def q(cli, sql, *args):
    return cli.db().execute(sql, args).fetchall()


def test_prototype_age_backend_changes_face_keeps_size_records_lineage(cli, faces, tmp_path):
    from maskkit.catalog.engine import open_catalog
    from maskkit.faces import ageing
    from maskkit.faces.generate import Geometry, read_rgb, sources

    cli("ingest", faces)
    cli("preprocess", "crop")  # face boxes for every photo (the backend reads them from the catalog)
    out = cli("generate", "person", "--band", "old", "--count", "2", "--age-backend", "prototype", "--seed", "4").output
    assert "2 new people, 14 images" in out
    people = q(cli, "select id, parent_id, age, generator from profile where origin='synthetic' order by id")
    assert len(people) == 2
    for pid, parent, age, generator in people:
        record = json.loads(generator)
        assert record["kind"] == "new-face" and age >= 60
        parent_age = q(cli, "select age from profile where id=?", parent)[0][0]
        assert labels.age_band(parent_age) != 2  # new old faces come from younger people
        normal = q(cli, "select generator, parent_image_id, width, height, path from image where profile_id=? and kind='normal'", pid)[0]
        lineage = json.loads(normal[0])
        assert lineage["age_backend"] == "prototype" and lineage["target_age"] == age
        assert lineage["strength"] == ageing.DEFAULT_STRENGTH and lineage["prototypes"]
        assert 0 <= lineage["source_age_estimate"] <= 95
        src = q(cli, "select width, height, profile_id from image where id=?", normal[1])[0]
        assert (normal[2], normal[3]) == (src[0], src[1]) and src[2] == parent  # same size, the parent's photo
    # every image of a new person was made from its parent's photo, and is cut where that photo's face was
    parent_normals = {p: q(cli, "select id from image where profile_id=? and kind='normal'", p)[0][0] for _, p, _, _ in people}
    for pid, parent, _, _ in people:
        assert {r[0] for r in q(cli, "select parent_image_id from image where profile_id=?", pid)} == {parent_normals[parent]}
    cli("preprocess", "crop")
    statuses = q(cli, "select d.status, count(*) from derived d join image i on i.id=d.image_id "
                      "where i.origin='synthetic' group by d.status")
    assert statuses == [("inherited", 14)]
    # the fitted prototypes are kept under the work root and reused
    kept = list((tmp_path / "data").rglob("age-prototypes-*.npz"))
    assert len(kept) == 1
    # the transform itself: same size and type, the face changed, the background not
    catalog = open_catalog(cli.catalog)
    donor = next(d for d in sources(catalog) if d.age < 30)
    geometry = Geometry(catalog)
    geometry.load_known([donor.normal_id])
    rgb = read_rgb(donor.normal_path)
    box, landmarks = geometry.of(donor.normal_id, rgb)
    backend = ageing.PrototypeAger(ageing.AgePrototypes.load(kept[0]))
    aged = backend.transform(rgb, box, landmarks, 70)
    assert aged.shape == rgb.shape and aged.dtype == np.uint8
    diff = np.abs(aged.astype(int) - rgb.astype(int)).max(2)
    x1, y1, x2, y2 = (int(v) for v in box)
    assert diff[y1:y2, x1:x2].mean() > 2  # the face changed
    assert diff[:, :20].mean() < 0.5 and diff[-20:].mean() < 0.5  # far from the face nothing moved
    assert backend.moved is not None and len(backend.moved[1]) == 5
    same = backend.transform(rgb, box, landmarks, int(round(backend.last["source_age_estimate"])))
    assert np.abs(same.astype(int) - rgb.astype(int)).mean() < diff.mean()  # ageing to its own age changes less
    # save / load round trip, and a damaged file is one clear error
    copy = ageing.AgePrototypes.load(backend.prototypes.save(tmp_path / "p.npz"))
    assert np.allclose(copy.shapes, backend.prototypes.shapes) and copy.key == backend.prototypes.key
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    bad = cli("generate", "age", "--age-checkpoint", tmp_path / "bad.npz", ok=False)
    assert bad.exit_code == 2 and "not a maskkit age-prototype file" in bad.output and "Traceback" not in bad.output
    bad = cli("generate", "person", "--band", "old", "--count", "1", "--age-backend", "prototype", "--age-strength", "9",
              ok=False)
    assert bad.exit_code == 2 and "strength" in bad.output


def test_age_check_reports_band_hits_identity_and_sheet(cli, faces, tmp_path):
    cli("ingest", faces)
    out = cli("generate", "age-check", "--count", "4", "--sheet", tmp_path / "aged.png", "--json").output
    result = json.loads(out)
    assert result["backend"] == "prototype" and result["band"] == "old" and result["faces"] == 4
    for key in ("band_hit_before", "band_hit_after", "band_hit_real", "identity_kept"):
        assert 0 <= result[key] <= 1
    assert result["identity_distance"] > 0  # the faces changed ...
    assert result["identity_kept"] >= 0.5  # ... and mostly stayed the same person by dlib's descriptor
    assert len(result["examples"]) == 4 and all(e["target_age"] >= 60 for e in result["examples"])
    assert (tmp_path / "aged.png").read_bytes()[:4] == b"\x89PNG"


def test_too_few_faces_for_prototypes_is_one_line(cli, tmp_path):
    from maskkit.demo_data import make_dataset

    made = make_dataset(tmp_path / "few", people=3, eval_people=1, seed=2, size=(96, 128))
    cli("ingest", made["train"])
    bad = cli("generate", "age", "--band", "old", ok=False)
    assert bad.exit_code == 2 and "at least 12 faces" in bad.output and "Traceback" not in bad.output


def test_ablate_writes_its_table_on_a_tiny_dataset(cli, faces, tmp_path):
    cli("ingest", faces)
    cli("preprocess", "crop")
    cli("group", "fc", "--variant", "crop")
    out_dir = tmp_path / "abl"
    args = ["ablate", "--view", "fc", "--val", "0.3", "--synthetic-cap", "2", "--runs-dir", tmp_path / "runs",
            "--out", out_dir, "data.image_size=64", "schedule.epochs=2"]
    out = cli(*args).output
    assert "imbalance remedies on fc" in out
    with open(out_dir / "ablation.csv") as handle:
        rows = list(csv.DictReader(handle))
    from maskkit.evaluate.ablation import REMEDIES

    assert [r["remedy"] for r in rows] == [r.name for r in REMEDIES]
    for r in rows:
        for key in ("macro_f1", "young_f1", "middle_f1", "old_f1", "old_recall"):
            assert 0 <= float(r[key]) <= 1
        assert float(r["seconds"]) > 0 and r["run"]
        assert float(r["macro_f1_low"]) <= float(r["macro_f1"]) + 1e-9 <= float(r["macro_f1_high"]) + 2e-9
    by = {r["remedy"]: r for r in rows}
    assert float(by["none"]["gain"]) == 0 and float(by["none"]["gain_low"]) == 0 == float(by["none"]["gain_high"])
    assert int(by["stage1-remask"]["synthetic_people"]) > 0 and int(by["stage1-aged"]["synthetic_people"]) > 0
    assert int(by["none"]["synthetic_people"]) == 0
    # more training images with synthetic people, none more without ages 57-59
    assert int(by["stage1-remask"]["train_images"]) > int(by["none"]["train_images"])
    assert int(by["exclude-57-59"]["train_images"]) <= int(by["none"]["train_images"])
    summary = json.loads((out_dir / "ablation.json").read_text())
    assert summary["holdout_images"] > 0 and summary["settings"]["overrides"][:2] == ["model.prior=none", "data.image_size=160"]
    assert (out_dir / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # synthetic people are made from training-side people only, and never scored
    split = summary["split"]
    tags = {t for (t,) in q(cli, "select tags from profile where origin='synthetic'")}
    assert any("new-face:prototype-x2" in t for t in tags) and any(t.endswith('remask"]') for t in tags)
    held = {p for (p,) in q(cli, "select profile_id from split_member m join split s on s.id=m.split_id "
                                 "where s.name=? and m.fold=1", split)}
    parents = {p for (p,) in q(cli, "select parent_id from profile where origin='synthetic'")}
    assert held and not (held & parents)
    # the same command again reuses every run and every synthetic person
    people = q(cli, "select count(*) from profile")[0][0]
    again = cli(*args).output
    assert again.count("(reused)") == len(REMEDIES)
    assert q(cli, "select count(*) from profile")[0][0] == people
    bad = cli("ablate", "--view", "fc", "--remedies", "focal,focus", ok=False)
    assert bad.exit_code == 2 and "unknown remedy 'focus'" in bad.output and "did you mean 'focal'" in bad.output
    bad = cli("ablate", "--view", "fc", "loss.nme=focal", ok=False)
    assert bad.exit_code == 2 and "unknown config key" in bad.output


def test_bootstrap_intervals_tell_a_real_gain_from_none():
    from maskkit.evaluate.ablation import bootstrap

    rng = np.random.default_rng(0)
    people = np.repeat(np.arange(60), 7)
    labels_ = rng.integers(0, 18, len(people))
    noisy = np.where(rng.random(len(people)) < 0.3, labels_, rng.integers(0, 18, len(people)))
    better = np.where(rng.random(len(people)) < 0.8, labels_, rng.integers(0, 18, len(people)))
    intervals, gains = bootstrap([noisy, noisy, better], labels_, people, resamples=100)
    assert (intervals[:, 0] <= intervals[:, 1]).all()
    assert np.allclose(gains[1], 0)  # the same predictions: no gain, exactly
    assert gains[2, 0] > 0.2  # a much better predictor: the whole interval above 0


def test_split_like_copies_the_holdout_onto_another_view(cli, faces):
    from maskkit.catalog import open_catalog
    from maskkit.datasets.splits import fold_of, make_split
    from maskkit.errors import MaskkitError

    cli("ingest", faces)
    cli("group", "all", "--origin", "original")
    cli("generate", "person", "--band", "old", "--count", "3")
    cli("group", "balanced", "--origin", "any")
    catalog = open_catalog(cli.catalog)
    make_split(catalog, "base", "all", val=0.3, seed=3)
    cli("split", "copy", "--view", "balanced", "--like", "base")
    base, copy = fold_of(catalog, "base"), fold_of(catalog, "copy")
    assert all(copy[p] == f for p, f in base.items())  # every real person where they were
    synthetic = q(cli, "select id, parent_id from profile where origin='synthetic'")
    assert len(synthetic) == 3
    for pid, parent in synthetic:
        assert copy[pid] == base[parent]  # synthetic people beside their parent
    with pytest.raises(MaskkitError, match="without --folds or --val"):
        make_split(catalog, "x", "balanced", like="base", val=0.2)
    bad = cli("split", "y", "--view", "all", "--like", "nope", ok=False)
    assert bad.exit_code == 3 and "unknown split 'nope'" in bad.output
    catalog.dispose()
