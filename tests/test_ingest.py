import json
import os
import shutil

import pytest

from maskkit.catalog import open_catalog
from maskkit.catalog.ingest import ingest_eval, ingest_train


def stats_json(cli):
    return json.loads(cli("stats", "--json").output)


def test_ingest_messy_dataset_through_cli(cli, dataset_copy):
    result = cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"], "--all-problems")
    out = result.output
    s = stats_json(cli)
    # 12 drawn people, one id shared by two folders: still 12 profiles (keyed by folder)
    assert s["profiles"] == 12
    assert s["images"] == 12 * 7
    assert s["eval_images"] == 3 * 7
    assert s["damaged_count"] == 1 and s["damaged"][0].endswith("mask4.jpg")
    assert "damaged:" in out and "truncated JPEG" in out
    assert "is used by 2 folders" in out
    assert "junk files ignored" in out
    assert "folder/csv disagree" in out and "gender" in out
    con = cli.db()
    # the id with a suffix is kept verbatim; png and jpeg files are taken
    assert con.execute("select count(*) from profile where person_id like '%-1'").fetchone()[0] == 1
    exts = {r[0].rsplit(".", 1)[1] for r in con.execute("select path from image")}
    assert exts == {"jpg", "png", "jpeg"}
    # csv wins by default: the person whose folder name disagrees keeps the csv gender
    folder, gender = con.execute(
        "select folder, gender from profile where folder not like '%\\_' || gender || '\\_%' escape '\\'").fetchone()
    assert f"_{gender}_" not in folder
    # images store paths relative to the data root, sizes and hashes
    rows = con.execute("select path, size, sha1, width, height from image").fetchall()
    assert all(not p.startswith("/") and p.startswith("images/") for p, *_ in rows)
    assert all(len(h) == 40 and size > 0 for _, size, h, _, _ in rows)
    assert {(w, h) for *_, w, h in rows if w} == {(96, 128)}


def test_prefer_folder_takes_folder_labels(cli, dataset_copy):
    cli("ingest", dataset_copy["train"], "--prefer", "folder")
    con = cli.db()
    for folder, gender in con.execute("select folder, gender from profile"):
        assert f"_{gender}_" in folder


def test_second_ingest_adds_nothing_and_skips_reading(cli, dataset_copy, monkeypatch):
    cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    before = cli.db().execute("select count(*), sum(size) from image").fetchone()
    import maskkit.catalog.ingest as ingest_module

    def no_reads(*a, **k):
        raise AssertionError("an unchanged file was read again")

    monkeypatch.setattr(ingest_module, "inspect_file", no_reads)
    out = cli("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"], "--all-problems").output
    assert out.count("nothing new") == 2
    # unchanged folders are not listed again, yet what their listing showed is still reported
    assert "junk files ignored" in out and "folder/csv disagree" in out
    assert cli.db().execute("select count(*), sum(size) from image").fetchone() == before
    assert cli.db().execute("select count(*) from ingest_run").fetchone()[0] == 4


def test_changed_and_removed_files_are_reported(cli, dataset_copy):
    cli("ingest", dataset_copy["train"])
    con = cli.db()
    rel, old_hash = con.execute("select path, sha1 from image where kind='normal' limit 1").fetchone()
    target = dataset_copy["train"] / rel
    from PIL import Image

    Image.new("RGB", (96, 128), (1, 2, 3)).save(target)
    os.utime(target, ns=(1, 2))
    gone = con.execute("select path from image where kind='mask2' limit 1").fetchone()[0]
    (dataset_copy["train"] / gone).unlink()
    out = cli("ingest", dataset_copy["train"], "--all-problems").output
    assert f"changed since last ingest: {rel}" in out
    assert f"gone from disk since last ingest: {gone}" in out
    new_hash = cli.db().execute("select sha1 from image where path=?", (rel,)).fetchone()[0]
    assert new_hash != old_hash


def test_touched_file_same_content_is_not_a_change(cli, dataset_copy):
    cli("ingest", dataset_copy["train"])
    rel = cli.db().execute("select path from image limit 1").fetchone()[0]
    os.utime(dataset_copy["train"] / rel, ns=(5, 5))
    out = cli("ingest", dataset_copy["train"]).output
    assert "changed since" not in out and "touched" in out


def test_missing_and_extra_kinds_and_orphans(cli, dataset_copy):
    images = dataset_copy["train"] / "images"
    folders = sorted(p for p in images.iterdir() if p.is_dir())
    next(folders[9].glob("mask3.*")).unlink()
    shutil.copy(next(folders[10].glob("normal.*")), folders[10] / "incorrect.jpg")
    (folders[10] / "notes.txt").write_text("hi")
    (images / "999999_male_Asian_40").mkdir()
    out = cli("ingest", dataset_copy["train"], "--all-problems").output
    assert f"{folders[9].name}: missing mask3" in out
    assert f"{folders[10].name}/incorrect.jpg: not a known image kind" in out
    assert "images/999999_male_Asian_40 has no row in train.csv" in out
    assert cli.db().execute("select count(*) from image").fetchone()[0] == 12 * 7 - 1


@pytest.mark.parametrize(
    "content, expected",
    [
        ("id,gender,race,age\n1,male,A,20\n", "missing column(s) path"),
        ("id,gender,race,age,path\n000001,male,Asian,twenty,000001_male_Asian_20\n", "row 2, field 'age': 'twenty'"),
        ("id,gender,race,age,path\n000001,man,Asian,20,000001_male_Asian_20\n", "row 2, field 'gender': 'man'"),
        ("id,gender,race,age,path\n000001,male,Asian,20,000001_male_Asian_20\n000002,male,Asian,200,x\n",
         "row 3, field 'age': '200' is outside"),
        ("", "is empty (no header)"),
    ],
)
def test_bad_train_csv_is_one_line_error_and_writes_nothing(cli, dataset_copy, content, expected):
    (dataset_copy["train"] / "train.csv").write_text(content)
    result = cli("ingest", dataset_copy["train"], ok=False)
    assert result.exit_code == 2
    assert expected in result.output and "train.csv" in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert cli.db().execute("select count(*) from profile").fetchone()[0] == 0


def test_missing_csv_and_missing_folder(cli, dataset_copy, tmp_path):
    (dataset_copy["train"] / "train.csv").unlink()
    result = cli("ingest", dataset_copy["train"], ok=False)
    assert result.exit_code == 3 and "train.csv: file not found" in result.output
    result = cli("ingest", tmp_path / "nope", ok=False)
    assert result.exit_code == 3 and "folder not found" in result.output
    (dataset_copy["eval"] / "info.csv").write_text("ImageID,answer\nx.jpg,0\n")
    result = cli("ingest", "--eval", dataset_copy["eval"], ok=False)
    assert result.exit_code == 2 and "missing column(s) ans" in result.output


def test_eval_order_and_missing_eval_files(cli, dataset_copy):
    names = [line.split(",")[0] for line in (dataset_copy["eval"] / "info.csv").read_text().splitlines()[1:]]
    (dataset_copy["eval"] / "images" / names[4]).unlink()
    out = cli("ingest", "--eval", dataset_copy["eval"]).output
    assert f"missing: images/{names[4]}" in out
    con = cli.db()
    stored = [r[0] for r in con.execute("select image_name from eval_image order by position")]
    assert stored == names[:4] + names[5:]


def test_dataset_folder_can_move(cli, dataset_copy, tmp_path):
    cli("ingest", dataset_copy["train"])
    moved = tmp_path / "moved"
    shutil.move(dataset_copy["train"], moved)
    cli("catalog", "move-root", str(dataset_copy["train"]), moved)
    stats = stats_json(cli)
    assert all(p.startswith(str(moved)) for p in stats["damaged"])
    out = cli("ingest", moved).output
    assert "nothing new" in out
    bad = cli("catalog", "move-root", str(moved), tmp_path, ok=False)
    assert bad.exit_code == 3 and "does not hold this root's images" in bad.output


def test_full_verify_and_library_api(tmp_path, dataset_copy):
    catalog = open_catalog(tmp_path / "lib.db")
    report = ingest_train(catalog, dataset_copy["train"], full_decode=True)
    assert report.profiles_added == 12 and report.images_added == 84 and len(report.damaged) == 1
    report = ingest_eval(catalog, dataset_copy["eval"])
    assert report.eval_added == 21
    again = ingest_train(catalog, dataset_copy["train"])
    assert again.nothing_new and again.images_unchanged == 84


def test_facebench_ingest_and_stats(cli, facebench):
    cli("ingest", facebench / "train", "--eval", facebench / "eval")
    s = stats_json(cli)
    assert s["profiles"] == 223
    assert s["images"] == 1561
    assert s["eval_images"] == 385
    assert len(s["damaged"]) == 1 and s["damaged"][0].endswith("000512_female_Unknown_22/mask4.jpg")
    out = cli("ingest", facebench / "train", "--eval", facebench / "eval").output
    assert out.count("nothing new") == 2
    assert stats_json(cli)["images"] == 1561


def test_in_place_change_in_an_unchanged_folder_is_found(cli, dataset_copy):
    """A folder whose listing did not change is re-checked file by file: an edit in place still shows."""
    cli("ingest", dataset_copy["train"])
    rel = cli.db().execute("select path from image where kind='mask3' order by id limit 1").fetchone()[0]
    target = dataset_copy["train"] / rel
    folder_mtime = os.stat(target.parent).st_mtime_ns
    from PIL import Image

    with open(target, "r+b") as handle:  # rewrite the same file: the folder's listing stays as it was
        handle.seek(0)
        buf = __import__("io").BytesIO()
        Image.new("RGB", (96, 128), (200, 10, 10)).save(buf, "JPEG")
        handle.write(buf.getvalue())
        handle.truncate()
    os.utime(target, ns=(7, 7))
    assert os.stat(target.parent).st_mtime_ns == folder_mtime
    out = cli("ingest", dataset_copy["train"], "--all-problems").output
    assert f"changed since last ingest: {rel}" in out


def test_relabels_and_reviews_do_not_wait_for_a_long_ingest(cli, dataset_copy, tmp_path, monkeypatch):
    """Ingest reads files with no transaction open: writes from others meanwhile go through at once."""
    import threading
    import time

    from maskkit.catalog import ingest as ingest_module, open_catalog
    from maskkit.catalog.relabel import relabel
    from maskkit.review.actions import act

    cli("ingest", dataset_copy["train"])
    catalog = open_catalog(cli.catalog)
    second = tmp_path / "second"
    import shutil

    shutil.copytree(dataset_copy["train"], second)
    for folder in (second / "images").iterdir():  # new people for the slow ingest to read
        folder.rename(folder.with_name(folder.name.replace("_", "x", 1)))
    lines = (second / "train.csv").read_text().splitlines()
    (second / "train.csv").write_text("\n".join([lines[0]] + [
        ",".join([c.split(",")[0] + "x", *c.split(",")[1:4], c.split(",")[4].replace("_", "x", 1)])
        for c in lines[1:]]) + "\n")
    real = ingest_module._inspect_all
    reading = threading.Event()

    def slow(*args, **kwargs):
        reading.set()
        time.sleep(3)  # a slow disk: the long phase of a big ingest
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "_inspect_all", slow)
    errors = []
    thread = threading.Thread(target=lambda: errors.extend(
        [e for e in [_try(lambda: ingest_module.ingest_train(catalog, second))] if e]))
    thread.start()
    assert reading.wait(30)
    waits = []
    person = next(iter(p for p in (dataset_copy["train"] / "images").iterdir())).name
    start = time.perf_counter()
    relabel(catalog, person, "age", 44, actor="ann")
    waits.append(time.perf_counter() - start)
    pid = catalog.engine.connect().exec_driver_sql(f"select id from profile where folder = '{person}'").scalar()
    for action in ("accept", "skip", "bad"):
        start = time.perf_counter()
        act(catalog, pid, "ann", action)
        waits.append(time.perf_counter() - start)
    thread.join(60)
    assert not errors, errors
    assert max(waits) < 1.5, waits  # not the ingest's read phase (3 s+)
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from review").scalar() == 3
        assert conn.exec_driver_sql("select count(*) from profile").scalar() == 2 * len(lines[1:])
    catalog.dispose()


def _try(fn):
    try:
        fn()
    except Exception as exc:  # reported by the test, not swallowed
        return exc
    return None


@pytest.mark.parametrize("source", ["tiny", "facebench"])
def test_a_second_copy_of_a_dataset_is_reported_and_split_as_one_identity(cli, dataset_copy, tmp_path, source,
                                                                          request):
    """The same people ingested from two folders: reported at ingest; a fresh k-fold split puts each
    person's two copies in one fold, and split --check proves it by content."""
    import shutil

    if source == "facebench":
        train = request.getfixturevalue("facebench") / "train"
    else:
        train = dataset_copy["train"]
    first, second = tmp_path / "copy1", tmp_path / "copy2"
    shutil.copytree(train, first)
    shutil.copytree(train, second)
    cli("ingest", first)
    out = cli("ingest", second, "--all-problems").output
    people = len([p for p in (first / "images").iterdir() if p.is_dir() and not p.name.startswith(".")])
    assert "people identical to catalogued people" in out and "byte-identical to train:" in out
    report_count = int(next(line for line in out.splitlines() if "people identical" in line).split()[-2].replace(",", ""))
    assert report_count >= people - 2  # every person (a damaged-only one may not match)
    cli("group", "both")
    cli("split", "k5", "--view", "both", "--folds", "5", "--seed", "0")
    check = cli("split", "k5", "--check").output
    assert "none of the" in check and "appears in two folds" in check
    db = cli.db()
    rows = db.execute("select i.sha1, m.fold from split_member m join image i on i.profile_id = m.profile_id "
                      "where not i.damaged").fetchall()
    folds_of: dict = {}
    for sha1, fold in rows:
        folds_of.setdefault(sha1, set()).add(fold)
    assert all(len(f) == 1 for f in folds_of.values())
    assert len({f for fs in folds_of.values() for f in fs}) == 5  # still five real folds


def test_symlink_loops_dangling_links_and_unreadable_folders_are_reported(cli, dataset_copy, monkeypatch):
    import os

    folders = sorted(p for p in (dataset_copy["train"] / "images").iterdir() if p.is_dir())
    loopy, locked = folders[0], folders[1]
    os.symlink("loop_b", loopy / "loop_a")
    os.symlink("loop_a", loopy / "loop_b")
    os.symlink("nowhere.jpg", loopy / "mask9.jpg")
    os.symlink(loopy, loopy / "self")
    real = os.scandir

    def scandir(path="."):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = cli("ingest", dataset_copy["train"], "--all-problems").output
    assert "unreadable person folders" in out and f"cannot read images/{locked.name}: Permission denied" in out
    assert cli.db().execute("select count(*) from image i join profile p on p.id = i.profile_id "
                            "where p.folder = ?", (loopy.name,)).fetchone()[0] == 7


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_cell = st.one_of(st.text(max_size=12), st.sampled_from(["male", "female", "Asian", "42", "-1", "200", "", " 7 ",
                                                        "000001", "000001_male_Asian_42", "a,b", 'q"x']))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_cell, min_size=0, max_size=7), max_size=6),
       header=st.sampled_from(["id,gender,race,age,path", "id,gender,race,age", "ID,Gender,Race,Age,Path", ""]),
       raw=st.binary(max_size=40))
def test_any_train_csv_is_read_or_refused_in_one_line(tmp_path_factory, rows, header, raw):
    import csv
    import io

    from maskkit.catalog.ingest import read_train_csv
    from maskkit.errors import MaskkitError

    path = tmp_path_factory.mktemp("csv") / "train.csv"
    text = io.StringIO()
    if header:
        text.write(header + "\n")
    csv.writer(text).writerows(rows)
    path.write_bytes(text.getvalue().encode("utf-8") + raw)
    try:
        parsed = read_train_csv(path)
    except MaskkitError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message
        return
    for row in parsed:
        assert row.gender in ("male", "female") and 0 <= row.age <= 120 and row.person_id and row.folder


def test_a_resaved_copy_of_a_person_is_found_by_its_perceptual_hash(cli, dataset_copy, tmp_path):
    """Not byte-identical (re-encoded JPEGs), still the same photos: ingest reports them and a split keeps
    them in one fold."""
    import shutil

    from PIL import Image

    copy = tmp_path / "resaved"
    shutil.copytree(dataset_copy["train"], copy)
    for path in (copy / "images").rglob("*.jp*g"):
        try:
            with Image.open(path) as img:
                img.convert("RGB").save(path, quality=70)  # new bytes, same picture
        except OSError:
            pass  # the damaged file stays as it is
    cli("ingest", dataset_copy["train"])
    out = cli("ingest", copy, "--all-problems").output
    assert "normal photo near-identical to train:" in out
    cli("group", "both")
    cli("split", "k3", "--view", "both", "--folds", "3", "--seed", "1")
    assert "none of the" in cli("split", "k3", "--check").output
    db = cli.db()
    folds = dict(db.execute("select p.folder || '@' || p.root_id, m.fold from split_member m "
                            "join profile p on p.id = m.profile_id").fetchall())
    by_folder: dict = {}
    for key, fold in folds.items():
        by_folder.setdefault(key.split("@")[0], set()).add(fold)
    assert sum(len(f) == 1 for f in by_folder.values()) >= len(by_folder) - 1  # copies share a fold
