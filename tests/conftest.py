import itertools
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MASKKIT_CATALOG", None)
# the CLI's tables are as wide as a pipe's (160 columns) whoever runs the suite: pytest-xdist's workers inherit
# COLUMNS=80, which would wrap the lines the tests read
os.environ["COLUMNS"] = "160"

FACEBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "facebench"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import pg_throwaway  # noqa: E402 - the throwaway PostgreSQL server (tools/, standard library only)

# These modules run twice: on SQLite and on PostgreSQL (a throwaway server, or $MASKKIT_TEST_PG_URL), except
# their tests marked sqlite_only (training and export details whose catalog use the module's other tests cover).
BOTH_BACKENDS = {"test_ingest", "test_relabel", "test_audit", "test_generate_views_splits", "test_postgres", "test_train",
                 "test_evaluate"}
_database_numbers = itertools.count()


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder: relative outputs (runs/, data/, catalog.db) never land
    in the repository. HSE-FaceRes's weights are absent unless a test provides them (tests/test_faceres.py), so
    that a developer's downloaded copy changes no ranking a test checks, and nothing is downloaded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASKKIT_FACERES_HOME", str(tmp_path / "no-faceres-weights"))
    monkeypatch.setenv("MASKKIT_OFFLINE", "1")


def _repo_outputs() -> set[str]:
    return {str(p.relative_to(ROOT)) for d in ("runs", "data") for p in (ROOT / d).rglob("*") if p.name != ".gitkeep"}


@pytest.fixture(scope="session", autouse=True)
def _repository_stays_clean():
    """The suite writes nothing into the working tree: checked after the last test."""
    before = _repo_outputs()
    yield
    new = sorted(_repo_outputs() - before)
    assert not new, f"tests wrote into the repository: {new[:10]}"


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        module = metafunc.module.__name__.rsplit(".", 1)[-1]
        if module == "test_postgres":
            params = ["postgresql"]
        elif module in BOTH_BACKENDS and metafunc.definition.get_closest_marker("sqlite_only") is None:
            params = ["sqlite", "postgresql"]
        else:
            params = ["sqlite"]
        metafunc.parametrize("backend", params, indirect=True)


@pytest.fixture(scope="session")
def pg_server():
    """Admin URL of a PostgreSQL server for tests, or the reason there is none."""
    if os.environ.get("MASKKIT_TEST_PG_URL"):
        yield os.environ["MASKKIT_TEST_PG_URL"]
        return
    try:
        cluster = pg_throwaway.start()
    except Exception as exc:  # no server binaries, no postgres user, ...
        yield RuntimeError(f"no PostgreSQL for tests: {exc}")
        return
    yield cluster.url
    pg_throwaway.stop(cluster)


@pytest.fixture
def backend(request):
    return request.param


@pytest.fixture
def catalog_url(backend, tmp_path, request):
    """A fresh, empty catalog: a SQLite file in tmp_path (not made yet), or a new, empty PostgreSQL database (for
    tests of migrations and copies into nothing; `cli` makes its own catalog, at the latest schema)."""
    return _new_catalog(backend, tmp_path, request, migrated=False)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory):
    """A SQLite catalog brought to the latest schema by the real migrations, once per test process."""
    from maskkit.catalog import open_catalog

    path = tmp_path_factory.mktemp("catalog-template") / "catalog.db"
    open_catalog(path).dispose()
    return path


@pytest.fixture(scope="session")
def _pg_template(pg_server):
    """The same on PostgreSQL: a database migrated once per test process, copied by CREATE DATABASE ... TEMPLATE."""
    from maskkit.catalog import open_catalog

    name = f"maskkit_template_{os.getpid()}"
    open_catalog(pg_throwaway.create_database(pg_server, name)).dispose()
    return name


def _new_catalog(backend, tmp_path, request, migrated: bool) -> str:
    """A new catalog's URL. `migrated`: already at the latest schema, copied from a catalog the migrations made
    once per process (the ~0.2-0.6 s of Alembic each test's first command would spend: 15% of the CLI tests' time);
    the migrations themselves are tested from empty catalogs (tests/test_catalog.py, tests/test_postgres.py)."""
    if backend == "sqlite":
        path = tmp_path / "catalog.db"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return str(path)
    server = request.getfixturevalue("pg_server")
    if isinstance(server, Exception):
        pytest.skip(str(server))
    template = request.getfixturevalue("_pg_template") if migrated else "template0"
    return pg_throwaway.create_database(server, f"maskkit_test_{os.getpid()}_{next(_database_numbers)}", template)


class Rows:
    def __init__(self, rows):
        self.rows = rows

    def fetchone(self):
        return self.rows[0] if self.rows else None

    def fetchall(self):
        return self.rows

    def __iter__(self):
        return iter(self.rows)


class Db:
    """sqlite3-like access to any catalog URL for assertions: '?' placeholders, rows as tuples,
    JSON values as JSON text (as SQLite gives them)."""

    def __init__(self, url: str):
        from maskkit.catalog.engine import make_engine, resolve_url

        self.engine = make_engine(resolve_url(url))

    def execute(self, sql: str, args=()):
        from sqlalchemy import text

        parts = sql.split("?")
        named = parts[0] + "".join(f":p{i}{rest}" for i, rest in enumerate(parts[1:]))
        with self.engine.connect() as conn:
            rows = conn.execute(text(named), {f"p{i}": v for i, v in enumerate(args)}).fetchall()
        return Rows([tuple(json.dumps(v) if isinstance(v, (dict, list)) else v for v in row) for row in rows])

    def close(self):
        self.engine.dispose()


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def cli(runner, backend, tmp_path, monkeypatch, request):
    """Run the real CLI on a fresh catalog at the latest schema (SQLite file or PostgreSQL database); returns the
    click Result. `cli.catalog` is the path or URL, `cli.db()` a sqlite3-like connection for assertions."""
    from maskkit.cli import app

    catalog_url = _new_catalog(backend, tmp_path, request, migrated=True)

    monkeypatch.setenv("MASKKIT_DATA", str(tmp_path / "data"))
    dbs = []

    def run(*args, ok=True, input=None):
        result = runner.invoke(app, ["--catalog", catalog_url, *map(str, args)], input=input)
        if ok and result.exit_code != 0:
            raise AssertionError(f"maskkit {' '.join(map(str, args))} failed ({result.exit_code}):\n{result.output}\n{result.exception!r}")
        return result

    def db():
        dbs.append(Db(catalog_url))
        return dbs[-1]

    run.catalog = catalog_url
    run.db = db
    yield run
    for d in dbs:
        d.close()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A drawn dataset in the competition layout (12 people, 96x128, messy), made once per session."""
    from maskkit.demo_data import make_dataset

    out = tmp_path_factory.mktemp("tiny")
    made = make_dataset(out, people=12, eval_people=3, seed=1, size=(96, 128))
    return made


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    """A private, writable copy of the tiny dataset."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(tiny_dataset["train"].parent, dst)
    return {"train": dst / "train", "eval": dst / "eval"}


@pytest.fixture
def facebench():
    if not (FACEBENCH / "train" / "train.csv").is_file():
        pytest.skip(f"facebench not found at {FACEBENCH}")
    return FACEBENCH


def pytest_collection_modifyitems(config, items):
    """Tests that read ../shared/facebench carry the `facebench` marker (`pytest -m "not facebench"` skips them)."""
    for item in items:
        if "facebench" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.facebench)
