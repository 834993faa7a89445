"""Bad input, command by command: one error line, a non-zero exit, no traceback, and the catalog unchanged."""

import hashlib
import json

import pytest

from maskkit.catalog import open_catalog

SETUP = "setup"  # placeholder replaced by files the fixture makes


def _catalog_state(path) -> str:
    """Every row of every table (a digest): 'unchanged' means nothing was added, removed or edited."""
    from maskkit.catalog.engine import catalog_summary

    catalog = open_catalog(path, create=False)
    digest = hashlib.sha1()
    with catalog.engine.connect() as conn:
        for table in sorted(catalog_summary(catalog)["rows"]):
            if table in ("alembic_version",):
                continue
            for row in conn.exec_driver_sql(f"select * from {table} order by 1").fetchall():
                digest.update(repr(row).encode())
    catalog.dispose()
    return digest.hexdigest()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A catalog with the tiny dataset ingested (made once; each test works on a copy), and bad files."""
    import shutil

    from typer.testing import CliRunner

    from maskkit.cli import app
    from maskkit.demo_data import make_dataset

    base = tmp_path_factory.mktemp("bad")
    data = make_dataset(base / "data", people=9, eval_people=2, seed=3, size=(96, 128))
    result = CliRunner().invoke(app, ["--catalog", str(base / "c.db"), "ingest", str(data["train"]), "--eval",
                                      str(data["eval"])])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["--catalog", str(base / "c.db"), "group", "all"])
    assert result.exit_code == 0, result.output
    files = base / "files"
    files.mkdir()
    (files / "latin1.csv").write_bytes(b"id,field,value,reason\n000001,gender,female,caf\xe9\n")
    (files / "header.csv").write_text("who,what\n000001,female\n")
    (files / "extra.csv").write_text("id,field,value\n000001,gender,female,x,y\n")
    (files / "badvalue.csv").write_text("id,field,value\n000001,gender,robot\n")
    (files / "afile").write_text("x")
    (files / "notyaml.yaml").write_text("model: [unclosed\n")
    (files / "list.yaml").write_text("- 1\n- 2\n")
    import os
    import stat

    os.mkfifo(files / "fifo")
    try:  # a character device like /dev/full (as root); elsewhere a FIFO stands in for it
        os.mknod(files / "chardev", stat.S_IFCHR | 0o600, os.makedev(1, 7))
    except (PermissionError, OSError):
        os.mkfifo(files / "chardev")
    badcsv = base / "badtrain"
    shutil.copytree(data["train"], badcsv)
    text = (badcsv / "train.csv").read_text().splitlines()
    first = text[1].split(",")
    first[3] = "abc"
    (badcsv / "train.csv").write_text("\n".join([text[0], ",".join(first), *text[2:]]) + "\n")
    shutil.copytree(data["train"], base / "noheader")
    (base / "noheader" / "train.csv").write_text("")
    shutil.copytree(data["train"], base / "headeronly")
    (base / "headeronly" / "train.csv").write_text("id,gender,race,age,path\n")
    shutil.copytree(data["eval"], base / "evalheaderonly")
    (base / "evalheaderonly" / "info.csv").write_text("ImageID,ans\n")
    return {"base": base, "catalog": base / "c.db", "files": files, "data": data}


CASES = {
    "ingest": [
        (["ingest", "{base}/missing"], "folder not found"),
        (["ingest", "{base}/badtrain"], "field 'age'"),
        (["ingest", "{base}/noheader"], "empty"),
        (["ingest", "{base}/data/train", "--eval", "{base}/missing"], "folder not found"),
        (["ingest", "{files}/afile"], ""),
        (["ingest", "{base}/headeronly"], "no rows, only a header"),
        (["ingest", "--eval", "{base}/evalheaderonly"], "no rows, only a header"),
    ],
    "stats": [
        (["stats", "--plot", "{files}/afile"], "is a file, not a folder"),
    ],
    "relabel": [
        (["relabel", "--from-csv", "{files}/latin1.csv"], "not UTF-8"),
        (["relabel", "--from-csv", "{files}/missing.csv"], "not found"),
        (["relabel", "--from-csv", "{files}/header.csv"], "missing column"),
        (["relabel", "--from-csv", "{files}/extra.csv"], "more fields"),
        (["relabel", "--from-csv", "{files}/badvalue.csv"], "row 2"),
        (["relabel", "--export", "{files}"], "is a folder"),
        (["relabel", "999999", "--gender", "male"], "unknown person"),
        (["relabel", "000001", "--gender", "robot"], "gender"),
        (["relabel", "000001", "--age", "500"], "age"),
        (["relabel", "000001", "--age", "old"], "age"),
        (["relabel", "--undo", "99999"], "99999"),
        (["relabel", "--suspects", "{files}/afile"], ""),
        (["relabel", "--export", "{files}/fifo"], "is a FIFO, not a regular file"),
        (["relabel", "--export", "{files}/chardev"], "not a regular file"),
        (["relabel", "--suspects", "latest"], "no finished run"),
        (["relabel", "--suspects", "nope"], "neither a run, an ensemble"),
        (["relabel", "--suspects", "prior", "--top", "-5"], ""),
        (["relabel", "--suspects", "prior", "--evidence", "vibes"], "--evidence must be one of"),
    ],
    "group": [
        (["group", "v", "--variant", "nope"], "nope"),
        (["group", "v", "--balance", "weird"], "weird"),
        (["group", "v", "--exclude-ages", "50-x"], "50-x"),
        (["group", "v", "--spec", "{files}/notyaml.yaml"], "YAML"),
        (["group", "v", "--spec", "{files}/list.yaml"], "mapping"),
        (["group", "nope", "--show"], "nope"),
        (["group", "a/../b"], "may hold letters"),
    ],
    "split": [
        (["split", "s", "--view", "nope", "--folds", "5"], "nope"),
        (["split", "s", "--view", "all", "--folds", "1"], ""),
        (["split", "s", "--view", "all", "--val", "1.5"], ""),
        (["split", "a/../b", "--view", "all", "--folds", "2"], "split name 'a/../b' may hold"),
        (["split", "..", "--view", "all", "--folds", "2"], "split name"),
        (["split", "x" * 300, "--view", "all", "--folds", "2"], "300 characters long"),
    ],
    "train": [
        (["train", "--view", "nope"], "nope"),
        (["train", "--view", "all", "optim.lr=fast"], "optim.lr"),
        (["train", "--view", "all", "--folds", "1"], "at least 2"),
        (["train", "--view", "all", "model.backbon=x"], "did you mean"),
        (["train", "--view", "all", "-c", "{files}/notyaml.yaml"], "YAML"),
        (["train", "--resume", "9999"], "9999"),
        (["train", "--view", "all", "--fold", "x", "--split", "s"], ""),
        (["train", "--view", "all", "--folds", "2", "--name", "x/../../../escape"], "may hold letters"),
        (["train", "--view", "all", "--name", "../run"], "may hold letters"),
        (["train", "--view", "all", "--name", ".hidden"], "may hold letters"),
        (["train", "--view", "all", "--fold", "all", "--split", "s", "--name", "n"], "--name names one"),
        (["train", "--view", "all", "data.image_size=2048"], "data.image_size"),
        (["train", "--view", "all", "model.backbone=../../etc"], "unknown timm model '../../etc'"),
        (["train", "--view", "all", "model.backbone=hf-hub:evil/x"], "timm's registry"),
        (["train", "--view", "all", "--runs-dir", "{files}/afile"], "runs folder"),
        (["train", "--view", "all", "--folds", "2", "--runs-dir", "{files}/afile"], "is a file, not a folder"),
    ],
    "eval": [
        (["eval"], "no finished run"),
        (["eval", "nope"], "nope"),
        (["eval", "nope", "--device", "tpu"], "--device"),
        (["eval", "nope", "--tta", "vflip"], "--tta"),
    ],
    "ensemble": [
        (["ensemble", "nope1", "nope2"], "nope1"),
        (["ensemble", "nope1", "--vote", "majority"], "--vote"),
        (["ensemble", "nope1", "nope2", "--weights", "nan,1"], "finite"),
        (["ensemble", "nope1", "nope2", "--weights", "inf,1"], "finite"),
        (["ensemble", "nope1", "nope2", "--weights", "-1,1"], "non-negative"),
    ],
    "submit": [
        (["submit"], "no finished run"),
        (["submit", "nope"], "nope"),
        (["submit", "nope", "--tta", "vflip"], "--tta"),
        (["submit", "nope", "--out", "{files}"], "is a folder"),
        (["submit", "nope", "--eval", "{files}"], "info.csv"),
        (["submit", "nope", "--score", "{files}/missing.csv"], "not found"),
        (["submit", "nope", "--out", "{files}/afile/x.csv"], "is a file, not a folder"),
        (["submit", "nope", "--out", "{files}/fifo"], "is a FIFO"),
        (["submit", "nope", "--eval", "{base}/evalheaderonly"], "nope"),
    ],
    "predict": [
        (["predict", "{files}/missing.jpg", "--run", "nope"], ""),
        (["predict", "{files}/afile", "--out", "{files}/afile"], "is a file, not a folder"),
    ],
    "export": [
        (["export", "nope", "--onnx", "{files}/x.onnx"], "nope"),
    ],
    "preprocess": [
        (["preprocess", "weird"], "weird"),
        (["preprocess", "crop", "--size", "10x10"], ""),
        (["preprocess", "crop", "--size", "wide"], ""),
        (["preprocess", "crop", "--device", "tpu"], "--device"),
        (["preprocess", "--report", "nope"], "nope"),
        (["preprocess", "crop", "--profiles", "999999"], "999999"),
        (["preprocess", "--report", "crop", "--sheet", "{files}/afile/s.png"], "is a file, not a folder"),
    ],
    "generate": [
        (["generate", "person", "--band", "ancient", "--count", "2"], "ancient"),
        (["generate", "person", "--band", "old"], "--count"),
        (["generate", "mask", "--profiles", "999999"], "999999"),
        (["generate", "age", "--age-checkpoint", "{files}/afile"], "not a maskkit age-prototype file"),
        (["generate", "age-check", "--age-strength", "0"], "--age-strength"),
        (["generate", "age", "--band", "old", "--count", "1", "--age-backend", "os:system"], "not registered as one"),
        (["generate", "person", "--band", "old", "--count", "1", "--age-backend", "no_module:x", "--age-strength", "2"],
         "built-in 'prototype'"),
        (["generate", "person", "--band", "old", "--count", "1", "--sheet", "{files}/afile/s.png"],
         "is a file, not a folder"),
        (["generate", "mask", "--sheet", "{files}/chardev"], "not a regular file"),
    ],
    "ablate": [
        (["ablate", "--view", "nope"], "unknown view 'nope'"),
        (["ablate", "--view", "all", "--remedies", "focul"], "did you mean 'focal'"),
        (["ablate", "--view", "all", "loss.nme=focal"], "unknown config key"),
        (["ablate", "--view", "all", "--val", "1.5"], "--val"),
        (["ablate", "--view", "all", "--synthetic-cap", "-1"], "--synthetic-cap"),
        (["ablate", "--view", "all", "--out", "{files}/afile"], "is a file"),
        (["ablate", "--view", "all", "data.train_exclude_ages=60-50"], "first <= last"),
        (["ablate", "--view", "all", "--remedies", ""], "names none"),
        (["ablate", "--view", "all", "--remedies", "none,none"], "more than once"),
        (["ablate", "--view", "all", "--remedies", " , "], "names none"),
    ],
    "audit": [
        (["audit", "--queue", "weird", "--no-web"], "weird"),
        (["audit", "--start", "999999", "--no-web"], "999999"),
        (["audit", "--queue", "suspects", "--run", "nope", "--no-web"], "neither a run, an ensemble"),
        (["audit", "--queue", "suspects", "--run", "prior", "--evidence", "vibes", "--no-web"], "--evidence"),
    ],
    "catalog": [
        (["catalog", "move-root", "nope", "{files}"], "nope"),
        (["catalog", "copy", "{base}/nope.db", "{base}/out.db"], "does not exist"),
        (["catalog", "copy", "{base}/c.db", "{base}/c.db"], "the same catalog"),
    ],
    "runs": [
        (["runs", "--last", "-1"], ""),
    ],
}


def _cases():
    for command, cases in CASES.items():
        for args, words in cases:
            yield pytest.param(args, words, id=" ".join(args).replace("{", "").replace("}", "")[:60])


@pytest.mark.parametrize("args, words", list(_cases()))
def test_bad_input_is_one_line_and_changes_nothing(made, tmp_path, args, words):
    import shutil

    from typer.testing import CliRunner

    from maskkit.cli import app

    catalog = tmp_path / "c.db"
    shutil.copy(made["catalog"], catalog)
    before = _catalog_state(catalog)
    args = [a.format(base=made["base"], files=made["files"]) for a in args]
    result = CliRunner().invoke(app, ["--catalog", str(catalog), *args])
    out = result.output
    assert result.exit_code != 0, out
    assert "Traceback" not in out and not (result.exception and not isinstance(result.exception, SystemExit)), \
        repr(result.exception)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    usage = "Usage:" in out  # Typer's own option checks (types, ranges) print a usage box
    assert len(errors) == 1 or usage, out
    if words:
        assert words in out, out
    assert _catalog_state(catalog) == before
    assert not list(made["files"].glob(".*tmp*")) and not (made["base"] / "out.db").exists()


def test_the_table_covers_every_command():
    from maskkit.cli import app
    from typer.main import get_command

    names = set(get_command(app).commands) - {"demo"}
    assert names <= set(CASES), sorted(names - set(CASES))
    counts = {command: len(cases) for command, cases in CASES.items()}
    assert sum(counts.values()) >= 60, counts
    print(json.dumps(counts))


def test_device_and_fifo_outputs_are_never_replaced(made):
    """`relabel --export`, `submit --out`, `stats --plot`-style outputs onto a device node or FIFO: refused, and the
    node is still the same node afterwards (the atomic rename is for regular files only)."""
    import os
    import stat

    from typer.testing import CliRunner

    from maskkit.cli import app

    for node in ("fifo", "chardev"):
        path = made["files"] / node
        before = os.stat(path)
        result = CliRunner().invoke(app, ["--catalog", str(made["catalog"]), "relabel", "--export", str(path)])
        assert result.exit_code != 0 and "not a regular file" in result.output
        after = os.stat(path)
        assert not stat.S_ISREG(after.st_mode) and after.st_ino == before.st_ino


def test_predict_gives_same_named_photos_their_own_outputs(tmp_path):
    from maskkit.evaluate.photos import output_names

    a, b = tmp_path / "a" / "img" / "x.jpg", tmp_path / "b" / "img" / "x.jpg"
    names = output_names([a, b, a])
    assert len(names) == 2 and len(set(names.values())) == 2
    assert names[a.resolve()] == "a_img_x_pred.jpg"
    same_folder = output_names([tmp_path / "x.jpg", tmp_path / "x.png"])
    assert len(set(same_folder.values())) == 2
