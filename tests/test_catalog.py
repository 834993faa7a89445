import json
import sqlite3
import subprocess
import sys

import pytest

from sqlalchemy import text

from maskkit.catalog import engine as engine_module
from maskkit.catalog import open_catalog, resolve_url


def test_resolve_url(tmp_path, monkeypatch):
    monkeypatch.delenv("MASKKIT_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'catalog.db'}"
    assert resolve_url("x/y.db") == f"sqlite:///{tmp_path / 'x' / 'y.db'}"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setenv("MASKKIT_CATALOG", str(tmp_path / "env.db"))
    assert resolve_url(None) == f"sqlite:///{tmp_path / 'env.db'}"


def test_new_catalog_is_at_head_in_wal_mode(tmp_path):
    catalog = open_catalog(tmp_path / "c.db")
    assert catalog.revision() == engine_module.head_revision()
    with catalog.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == engine_module.SQLITE_BUSY_TIMEOUT_MS
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    assert {"profile", "image", "eval_image", "label_event", "review", "data_root", "ingest_run"} <= set(catalog.table_names())


def test_models_match_migrations(tmp_path):
    """The SQLModel classes and the Alembic head describe the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    catalog = open_catalog(tmp_path / "c.db")
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    assert diff == []


def test_old_catalog_with_data_is_upgraded_on_open(tmp_path):
    """A catalog made at revision 0001 holding rows is brought to head by any command, rows intact."""
    path = tmp_path / "old.db"
    url = resolve_url(path)
    eng = engine_module.make_engine(url)
    engine_module.upgrade(eng, "0001")
    with eng.begin() as conn:
        conn.execute(text("insert into data_root (id, name, path, created_at) values (1, 'train:x', '/x', '2026-01-01')"))
        conn.execute(text(
            "insert into profile (id, root_id, person_id, folder, gender, race, age, orig_gender, orig_race, orig_age,"
            " origin, created_at) values (1, 1, '000001', '000001_male_Asian_20', 'female', 'Asian', 20, 'male',"
            " 'Asian', 20, 'original', '2026-01-01')"))
        conn.execute(text(
            "insert into image (id, profile_id, kind, mask, orig_mask, path, size, mtime_ns, sha1, damaged, origin,"
            " created_at) values (1, 1, 'normal', 2, 2, 'images/000001_male_Asian_20/normal.jpg', 10, 5, :h, 0,"
            " 'original', '2026-01-01')"), {"h": "a" * 40})
        conn.execute(text(
            "insert into label_event (id, profile_id, field, old_value, new_value, actor, source, created_at)"
            " values (1, 1, 'gender', 'male', 'female', 'ann', 'cli', '2026-01-01')"))
    assert engine_module.current_revision(eng) == "0001"
    eng.dispose()

    from typer.testing import CliRunner
    from maskkit.cli import app

    result = CliRunner().invoke(app, ["--catalog", str(path), "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["profiles"] == 1 and stats["images"] == 1
    assert stats["people"]["gender"]["female"] == 1
    con = sqlite3.connect(path)
    assert con.execute("select version_num from alembic_version").fetchone()[0] == engine_module.head_revision()
    assert con.execute("select sha1, width, height from image").fetchone() == ("a" * 40, None, None)
    assert con.execute("select old_value, new_value, actor from label_event").fetchone() == ("male", "female", "ann")


def test_downgrade_and_upgrade_roundtrip(tmp_path):
    catalog = open_catalog(tmp_path / "c.db")
    engine_module.downgrade(catalog.engine, "base")
    assert "profile" not in catalog.table_names()
    engine_module.upgrade(catalog.engine)
    assert catalog.revision() == engine_module.head_revision()


def test_catalog_commands_and_env_var(cli, tmp_path, monkeypatch, runner):
    from maskkit.cli import app

    out = cli("catalog", "upgrade").output
    assert "schema revision" in out
    out = cli("catalog", "info").output
    assert "profile" in out and "latest" in out
    env_db = tmp_path / "from_env.db"
    monkeypatch.setenv("MASKKIT_CATALOG", str(env_db))
    result = runner.invoke(app, ["catalog", "info"])  # read commands never create a catalog by a typo
    assert result.exit_code == 3 and "does not exist" in result.output and not env_db.exists()
    assert runner.invoke(app, ["catalog", "upgrade"]).exit_code == 0 and env_db.exists()  # this one makes it
    result = runner.invoke(app, ["catalog", "info"])
    assert result.exit_code == 0 and "profile" in result.output


def test_unreachable_catalog_is_one_line_error(runner, tmp_path):
    from maskkit.cli import app

    result = runner.invoke(app, ["--catalog", str(tmp_path / "no" / "such" / "dir.db"), "stats"])
    assert result.exit_code == 3 and "does not exist" in result.output


def test_python_dash_m_and_console_script(tmp_path):
    subprocess.run([sys.executable, "-m", "maskkit", "--catalog", str(tmp_path / "m.db"), "catalog", "upgrade"],
                   check=True, capture_output=True, timeout=120)
    result = subprocess.run([sys.executable, "-m", "maskkit", "--catalog", str(tmp_path / "m.db"), "stats", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["profiles"] == 0


WRITER = r"""
import sys
from maskkit.catalog import open_catalog
from maskkit.catalog.models import Review
catalog = open_catalog(sys.argv[1])
for i in range(int(sys.argv[3])):
    with catalog.session() as s:
        s.add(Review(profile_id=1, reviewer=sys.argv[2], verdict="accept", note=str(i)))
        s.commit()
"""


def test_two_processes_write_one_sqlite_catalog(tmp_path, cli, dataset_copy):
    """WAL + busy timeout: concurrent writers lose nothing."""
    cli("ingest", dataset_copy["train"])
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(cli.catalog), name, "100"]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    con = cli.db()
    assert con.execute("select reviewer, count(*) from review group by reviewer").fetchall() == [("a", 100), ("b", 100)]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"\x00\x01garbage" * 50), "is not a SQLite file"),
    (lambda p: p.write_text("id,gender\n1,male\n"), "is not a SQLite file"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: None, "does not exist"),
])
def test_bad_catalog_files_are_one_line_errors_and_left_alone(runner, tmp_path, make, message):
    from maskkit.cli import app

    path = tmp_path / "c.db"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    for command in (["stats"], ["runs"], ["catalog", "info"], ["relabel", "--history"]):
        result = runner.invoke(app, ["--catalog", str(path), *command])
        assert result.exit_code == (3 if "does not exist" in message else 2) and message in result.output and "Traceback" not in result.output, command
    assert (path.read_bytes() if path.is_file() else None) == before and not (tmp_path / "c.db-wal").exists()


def test_unknown_url_scheme_and_newer_catalog_are_refused(runner, tmp_path):
    from maskkit.catalog import open_catalog
    from maskkit.cli import app

    result = runner.invoke(app, ["--catalog", "foo://x", "stats"])
    assert result.exit_code == 2 and "unsupported database" in result.output
    path = tmp_path / "newer.db"
    catalog = open_catalog(path)
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql("update alembic_version set version_num = '0999'")
    catalog.dispose()
    result = runner.invoke(app, ["--catalog", str(path), "stats"])
    assert result.exit_code == 4 and "newer than this maskkit knows" in result.output
    catalog = open_catalog(path, upgrade_schema=False)
    assert catalog.revision() == "0999"  # untouched
    catalog.dispose()
