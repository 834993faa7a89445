"""The catalog on PostgreSQL: migrations, lossless copies to and from SQLite, concurrent reviewers.
(ingest, relabel, audit and view tests also run on PostgreSQL: see BOTH_BACKENDS in conftest.py.)"""

import subprocess
import sys

from sqlalchemy import text

from maskkit.catalog import engine as engine_module
from maskkit.catalog import open_catalog


def test_old_catalog_with_data_upgrades_on_postgresql(catalog_url):
    eng = engine_module.make_engine(catalog_url)
    engine_module.upgrade(eng, "0001")
    with eng.begin() as conn:
        conn.execute(text("insert into data_root (id, name, path, created_at) values (1, 'train:x', '/x', now())"))
        conn.execute(text(
            "insert into profile (id, root_id, person_id, folder, gender, race, age, orig_gender, orig_race, orig_age,"
            " origin, created_at) values (1, 1, '000001', 'f', 'female', 'Asian', 20, 'male', 'Asian', 20, 'original', now())"))
        conn.execute(text(
            "insert into image (id, profile_id, kind, mask, orig_mask, path, size, mtime_ns, sha1, damaged, origin,"
            " created_at) values (1, 1, 'normal', 2, 2, 'images/f/normal.jpg', 10, 1700000000000000000, :h, false,"
            " 'original', now())"), {"h": "a" * 40})
    eng.dispose()
    catalog = open_catalog(catalog_url)
    assert catalog.revision() == engine_module.head_revision()
    with catalog.engine.connect() as conn:
        assert conn.execute(text("select sha1, mtime_ns, width from image")).one() == ("a" * 40, 1700000000000000000, None)
    catalog.dispose()


def test_models_match_migrations_on_postgresql(catalog_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    catalog = open_catalog(catalog_url)
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    catalog.dispose()
    assert diff == []


def test_copy_sqlite_to_postgresql_and_back_is_lossless(cli, dataset_copy, tmp_path, runner):
    """A catalog with every kind of row goes SQLite -> PostgreSQL -> SQLite and stays identical."""
    from maskkit.catalog.copy import compare_catalogs
    from maskkit.cli import app

    sqlite_a, sqlite_b = str(tmp_path / "a.db"), str(tmp_path / "b.db")

    def m(*args):
        result = runner.invoke(app, ["--catalog", sqlite_a, *map(str, args)])
        assert result.exit_code == 0, result.output
        return result.output

    m("ingest", dataset_copy["train"], "--eval", dataset_copy["eval"])
    people = [line.split(",")[0] for line in (dataset_copy["train"] / "train.csv").read_text().splitlines()[1:]]
    m("relabel", people[0], "--gender", "flip", "--reason", "ünïcode reason")
    m("relabel", people[1], "--age", "61")
    m("relabel", "--undo", "2")
    m("audit", "--assign", "ann,bob")
    m("group", "all", "--origin", "original")
    m("split", "k2", "--view", "all", "--folds", "2")
    out = runner.invoke(app, ["catalog", "copy", sqlite_a, cli.catalog])
    assert out.exit_code == 0 and "verified" in out.output, out.output
    out = runner.invoke(app, ["catalog", "copy", cli.catalog, sqlite_b])
    assert out.exit_code == 0 and "verified" in out.output, out.output
    assert compare_catalogs(sqlite_a, sqlite_b) == []
    # the PostgreSQL copy keeps working: new rows get fresh ids
    cli("relabel", people[2], "--age", "33")
    assert cli.db().execute("select max(id) from label_event").fetchone()[0] == 4
    again = runner.invoke(app, ["catalog", "copy", sqlite_a, cli.catalog])
    assert again.exit_code == 4 and "not empty" in again.output


WRITER = r"""
import sys
from maskkit.catalog import open_catalog
from maskkit.review.actions import act
from maskkit.review.queue import build_queue
catalog = open_catalog(sys.argv[1])
ids = build_queue(catalog).profile_ids
who = sys.argv[2]
for i in range(200):
    pid = ids[i % len(ids)]
    if i % 5 == 0:
        act(catalog, pid, who, "age", value=str(20 + (i * 7 + len(who)) % 50))
    elif i % 5 == 1:
        act(catalog, pid, who, "gender", value="flip")
    else:
        act(catalog, pid, who, "accept")
"""


def test_five_reviewers_at_once_on_postgresql(cli, dataset_copy):
    cli("ingest", dataset_copy["train"])
    names = ["ann", "bob", "cat", "dan", "eve"]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, cli.catalog, n]) for n in names]
    assert [p.wait(timeout=600) for p in procs] == [0] * 5
    db = cli.db()
    assert db.execute("select reviewer, count(*) from review group by reviewer order by reviewer").fetchall() == \
        [(n, 200) for n in names]
    # every event's old value is the value the event before it set: no write was lost
    last = {}
    for pid, field, old, new in db.execute("select profile_id, field, old_value, new_value from label_event order by id"):
        if (pid, field) in last:
            assert old == last[(pid, field)]
        last[(pid, field)] = new
    for (pid, field), value in last.items():
        assert str(db.execute(f"select {field} from profile where id=?", (pid,)).fetchone()[0]) == value


def test_same_field_two_reviewers_keeps_both_events(cli, dataset_copy):
    from maskkit.review.actions import act

    cli("ingest", dataset_copy["train"])
    catalog = open_catalog(cli.catalog)
    pid = cli.db().execute("select min(id) from profile").fetchone()[0]
    act(catalog, pid, "ann", "age", value="40")
    act(catalog, pid, "bob", "age", value="45")
    catalog.dispose()
    db = cli.db()
    assert db.execute("select actor, new_value from label_event order by id").fetchall() == [("ann", "40"), ("bob", "45")]
    assert db.execute("select age from profile where id=?", (pid,)).fetchone()[0] == 45


def test_a_copy_the_destination_would_refuse_names_the_row_and_leaves_nothing(catalog_url, dataset_copy, tmp_path,
                                                                             runner):
    """SQLite took a 300-character root name and NaN inside JSON (an older catalog, or a hand edit):
    the copy names table, row and column before writing, and the server is left without tables."""
    import sqlite3

    from sqlalchemy import create_engine, inspect

    from maskkit.cli import app

    source = tmp_path / "old.db"
    assert runner.invoke(app, ["--catalog", str(source), "ingest", str(dataset_copy["train"])]).exit_code == 0
    db = sqlite3.connect(source)
    db.execute("update data_root set name = ? where id = 1", ("r" * 300,))
    db.execute("""update ingest_run set summary = '{"seconds": NaN, "list": [1.0, Infinity]}'""")
    db.commit()
    out = runner.invoke(app, ["catalog", "copy", str(source), catalog_url])  # an empty database
    assert out.exit_code == 2, out.output
    assert "data_root row id 1 column name: 300 characters, at most 200" in out.output
    assert "nothing was copied" in out.output and "Traceback" not in out.output
    engine = create_engine(catalog_url)
    assert inspect(engine).get_table_names() == []  # not even an empty schema
    engine.dispose()
    # a failed copy to a new SQLite file leaves no file either
    target = tmp_path / "new.db"
    assert runner.invoke(app, ["catalog", "copy", str(source), str(target)]).exit_code == 2
    assert not list(tmp_path.glob("new.db*"))

    db.execute("update data_root set name = 'train:fixed' where id = 1")
    db.commit()
    db.close()
    out = runner.invoke(app, ["catalog", "copy", str(source), catalog_url])
    assert out.exit_code == 0 and "verified" in out.output, out.output
    assert "1 JSON value(s) held NaN or Infinity" in out.output
    engine = create_engine(catalog_url)
    with engine.connect() as conn:
        summary = conn.exec_driver_sql("select summary from ingest_run").scalar_one()  # a JSON column: parsed
    engine.dispose()
    assert summary["seconds"] is None and summary["list"] == [1.0, None]


def test_both_backends_refuse_a_value_too_long_for_its_column(cli, dataset_copy):
    """One rule on every backend: SQLite no longer stores what PostgreSQL would refuse."""
    from maskkit.catalog import open_catalog
    from maskkit.catalog.models import Review
    from maskkit.errors import InvalidInput
    from sqlalchemy import insert
    import pytest

    cli("ingest", dataset_copy["train"])
    for url in (cli.catalog, f"sqlite:///{dataset_copy['train'].parent / 'side.db'}"):
        catalog = open_catalog(url)
        with pytest.raises(InvalidInput, match=r"review.reviewer: 101 characters, at most 100"):
            with catalog.session() as session:
                session.execute(insert(Review), [dict(profile_id=1, reviewer="x" * 101, verdict="note")])
        catalog.dispose()
