"""Opening a catalog: URL resolution, the engine (SQLite in WAL mode with a busy timeout; any
SQLAlchemy URL works) and bringing the schema to the latest Alembic revision."""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import Session, create_engine

from ..errors import MaskkitError

DEFAULT_CATALOG = "catalog.db"
ENV_VAR = "MASKKIT_CATALOG"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_url(catalog: str | os.PathLike | None = None) -> str:
    """A SQLAlchemy URL from a path or URL; falls back to $MASKKIT_CATALOG, then ./catalog.db."""
    value = str(catalog) if catalog else os.environ.get(ENV_VAR) or DEFAULT_CATALOG
    if "://" in value:
        try:
            make_url(value)
        except ArgumentError as exc:
            raise MaskkitError(f"catalog URL {value!r} is not a valid SQLAlchemy URL: {exc}") from None
        return value
    path = Path(value).expanduser().resolve()
    return f"sqlite:///{path}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL, a busy timeout and foreign keys on every connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            parent = Path(database).parent
            if not parent.is_dir():
                raise MaskkitError(f"catalog folder {parent} does not exist")
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrations_dir() -> Path:
    """The Alembic script folder (top-level migrations/, shipped in the package as maskkit.migrations)."""
    try:
        from importlib.resources import files

        packaged = Path(str(files("maskkit.migrations")))
        if (packaged / "env.py").is_file():
            return packaged
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@lru_cache(maxsize=1)
def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the catalog to `revision` (default: the latest), in one transaction."""
    from alembic import command

    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


class Catalog:
    """An open catalog: its URL and engine. `session()` yields a SQLModel session."""

    def __init__(self, url: str, engine: Engine):
        self.url = url
        self.engine = engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def revision(self) -> str | None:
        return current_revision(self.engine)

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def dispose(self) -> None:
        self.engine.dispose()

    def optimize(self) -> None:
        """Refresh the query planner's statistics after bulk changes (ingest, generate)."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def open_catalog(catalog: str | os.PathLike | None = None, *, upgrade_schema: bool = True) -> Catalog:
    """Open (creating if needed) the catalog and bring it to the latest schema."""
    url = resolve_url(catalog)
    engine = make_engine(url)
    if upgrade_schema:
        try:
            if current_revision(engine) != head_revision():
                upgrade(engine)
        except OperationalError as exc:
            raise MaskkitError(f"cannot open catalog {url}: {exc.orig}") from None
    return Catalog(url, engine)


def catalog_summary(catalog: Catalog) -> dict:
    """URL, schema revision (and the latest), data roots (and whether they exist) and rows per table."""
    from pathlib import Path

    from sqlalchemy import func, select
    from sqlmodel import SQLModel

    from .models import DataRoot

    with catalog.session() as session:
        roots = [{"id": r.id, "name": r.name, "path": r.path, "exists": Path(r.path).is_dir()}
                 for r in session.execute(select(DataRoot).order_by(DataRoot.id)).scalars()]
        counts = {name: session.execute(select(func.count()).select_from(tbl)).scalar_one()
                  for name, tbl in sorted(SQLModel.metadata.tables.items())}
    return {"url": catalog.url, "revision": catalog.revision(), "head": head_revision(), "roots": roots, "rows": counts}
