import csv

import pytest

from maskkit.catalog import open_catalog
from maskkit.catalog.relabel import replay_labels


@pytest.fixture
def ingested(cli, dataset_copy):
    cli("ingest", dataset_copy["train"])
    con = cli.db()
    people = con.execute("select person_id, folder, gender, age from profile order by person_id").fetchall()
    counts = {}
    for pid, *_ in people:
        counts[pid] = counts.get(pid, 0) + 1
    unique = [p for p in people if counts[p[0]] == 1 and not p[0].endswith("-1")]
    return cli, con, unique, [p for p in people if counts[p[0]] > 1]


def assert_replay_matches(path):
    from conftest import Db

    catalog = open_catalog(path)
    with catalog.session() as session:
        people, masks = replay_labels(session)
    catalog.dispose()
    con = Db(path)
    current = {i: {"gender": g, "age": a, "race": r} for i, g, a, r in con.execute("select id, gender, age, race from profile")}
    assert people == current
    assert masks == dict(con.execute("select id, mask from image"))
    con.close()


def test_single_fixes_and_history(ingested):
    cli, con, people, _ = ingested
    pid, folder, gender, age = people[0]
    other = "female" if gender == "male" else "male"
    out = cli("relabel", pid, "--gender", other, "--reason", "looks it", "--by", "ann").output
    assert f"gender '{gender}' -> '{other}'" in out
    cli("relabel", pid, "--age", "62")
    cli("relabel", "--image", f"{pid}:incorrect_mask", "--mask", "normal")
    cli("relabel", "--swap", people[1][0], "incorrect_mask", "normal")
    younger = next(p for p in people[2:] if p[3] < 60)
    cli("relabel", younger[0], "--age-band", "old")
    assert con.execute("select gender, age from profile where person_id=?", (pid,)).fetchone() == (other, 62)
    assert con.execute("select age from profile where person_id=?", (younger[0],)).fetchone()[0] == 60
    masks = dict(con.execute("select i.kind, i.mask from image i join profile p on p.id=i.profile_id where p.person_id=?",
                             (people[1][0],)).fetchall())
    assert masks["incorrect_mask"] == 2 and masks["normal"] == 1
    events = con.execute("select field, old_value, new_value, actor, reason, source from label_event order by id").fetchall()
    assert events[0] == ("gender", gender, other, "ann", "looks it", "cli")
    assert [e[0] for e in events] == ["gender", "age", "mask", "mask", "mask", "age"]
    history = cli("relabel", "--history", pid).output
    assert "looks it" in history and "ann" in history
    # asking for what is already there writes nothing
    assert "already" in cli("relabel", pid, "--age", "62").output
    assert con.execute("select count(*) from label_event").fetchone()[0] == 6
    assert_replay_matches(cli.catalog)


def test_undo_restores_exactly_and_is_recorded(ingested):
    cli, con, people, _ = ingested
    pid, _, gender, age = people[0]
    cli("relabel", pid, "--age", "44")  # event 1
    cli("relabel", pid, "--age", "50")  # event 2
    blocked = cli("relabel", "--undo", "1", ok=False)
    assert blocked.exit_code == 4 and "changed again since (event 2)" in blocked.output
    cli("relabel", "--undo", "2")  # event 3: back to 44
    assert con.execute("select age from profile where person_id=?", (pid,)).fetchone()[0] == 44
    again = cli("relabel", "--undo", "2", ok=False)
    assert again.exit_code == 4 and "already undone by event 3" in again.output
    cli("relabel", "--undo", "1")  # event 4: back to the original age
    assert con.execute("select gender, age from profile where person_id=?", (pid,)).fetchone() == (gender, age)
    rows = con.execute("select id, old_value, new_value, source, undoes_id, undone_by_id from label_event order by id").fetchall()
    assert rows == [
        (1, str(age), "44", "cli", None, 4),
        (2, "44", "50", "cli", None, 3),
        (3, "50", "44", "undo", 2, None),
        (4, "44", str(age), "undo", 1, None),
    ]
    assert_replay_matches(cli.catalog)


def test_from_csv_is_all_or_nothing(ingested, tmp_path):
    cli, con, people, _ = ingested
    good = tmp_path / "fixes.csv"
    with open(good, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "field", "value", "kind", "reason"])
        w.writerow([people[0][0], "gender", "flip", "", "bulk"])
        w.writerow([people[1][0], "mask", "wear", "incorrect_mask", ""])
        w.writerow([people[2][0], "swap", "incorrect_mask/normal", "", ""])
        w.writerow([people[3][0], "age", "33", "", ""])
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text() + f"{people[4][0]},age,abc,,\n")
    result = cli("relabel", "--from-csv", bad, ok=False)
    assert result.exit_code == 2 and "bad.csv: row 6" in result.output and "'abc'" in result.output
    assert con.execute("select count(*) from label_event").fetchone()[0] == 0
    out = cli("relabel", "--from-csv", good).output
    assert "5 change(s) written" in out
    assert con.execute("select count(*) from label_event where source='csv'").fetchone()[0] == 5
    assert_replay_matches(cli.catalog)


@pytest.mark.parametrize(
    "args, message",
    [
        (["999999", "--gender", "male"], "unknown person '999999'"),
        (["{p}", "--age", "130"], "age 130 is out of range"),
        (["{p}", "--age-band", "ancient"], "age band 'ancient'"),
        (["{p}", "--gender", "robot"], "gender 'robot'"),
        (["--image", "{p}:mask9", "--mask", "wear"], "unknown image kind 'mask9'"),
        (["--image", "{p}:normal", "--mask", "sideways"], "mask state 'sideways'"),
        (["--image", "{p}", "--mask", "wear"], "must be written ID:KIND"),
        (["--swap", "{p}", "normal", "normal"], "two different image kinds"),
        (["--undo", "12345"], "unknown label event 12345"),
        ([], "nothing to do"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(ingested, args, message):
    cli, con, people, _ = ingested
    result = cli("relabel", *[a.replace("{p}", people[0][0]) for a in args], ok=False)
    assert result.exit_code == (3 if message.startswith(("unknown person", "unknown label event")) else 2), result.output
    assert message in result.output and "Traceback" not in result.output
    assert con.execute("select count(*) from label_event").fetchone()[0] == 0


def test_malformed_csv_row(ingested, tmp_path):
    cli, con, people, _ = ingested
    path = tmp_path / "m.csv"
    path.write_text(f"id,field,value\n{people[0][0]},gender,male,extra,fields\n")
    result = cli("relabel", "--from-csv", path, ok=False)
    assert result.exit_code == 2 and "m.csv: row 2" in result.output
    path.write_text("who,what\n1,2\n")
    result = cli("relabel", "--from-csv", path, ok=False)
    assert result.exit_code == 2 and "missing column(s) id, field, value" in result.output


def test_shared_id_needs_folder(ingested):
    cli, con, _, shared = ingested
    result = cli("relabel", shared[0][0], "--age", "40", ok=False)
    assert result.exit_code == 2 and "name the folder" in result.output
    cli("relabel", shared[0][1], "--age", "40")
    assert con.execute("select age from profile where folder=?", (shared[0][1],)).fetchone()[0] == 40


def test_known_fixes_apply_and_skip_absent_ids(cli, tmp_path):
    from maskkit.demo_data import make_dataset

    made = make_dataset(tmp_path / "d", people=9, eval_people=1, seed=3, size=(48, 64), messy=False)
    train = made["train"]
    # give three people the ids of known label errors in the real data
    rows = list(csv.reader(open(train / "train.csv")))
    renames = {1: ("000020", rows[1][1]), 2: ("006359", "female"), 3: ("004348", rows[3][1])}
    for i, (new_id, gender) in renames.items():
        old_folder = rows[i][4]
        new_folder = f"{new_id}_{gender}_{rows[i][2]}_{rows[i][3]}"
        (train / "images" / old_folder).rename(train / "images" / new_folder)
        rows[i] = [new_id, gender, rows[i][2], rows[i][3], new_folder]
    with open(train / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cli("ingest", train)
    out = cli("relabel", "--known-fixes").output
    assert "skipped" in out and "not in this catalog" in out
    con = cli.db()
    assert con.execute("select gender from profile where person_id='006359'").fetchone()[0] == "male"
    assert con.execute("select age from profile where person_id='004348'").fetchone()[0] >= 60
    masks = dict(con.execute("select i.kind, i.mask from image i join profile p on p.id=i.profile_id "
                             "where p.person_id='000020'").fetchall())
    assert masks["incorrect_mask"] == 2 and masks["normal"] == 1
    assert con.execute("select count(distinct source) from label_event").fetchone()[0] == 1
    # applying again changes nothing
    assert "0 change(s) written" in cli("relabel", "--known-fixes").output
    assert_replay_matches(cli.catalog)


def test_export_corrected_train_csv(ingested, tmp_path):
    cli, con, people, _ = ingested
    cli("relabel", people[0][0], "--age", "61")
    out = tmp_path / "train_fixed.csv"
    cli("relabel", "--export", out)
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and list(rows[0]) == ["id", "gender", "race", "age", "path"]
    assert {r["id"]: r["age"] for r in rows}[people[0][0]] == "61"
    # the exported file is a valid train.csv for ingest
    from maskkit.catalog.ingest import read_train_csv

    assert len(read_train_csv(out)) == 12
