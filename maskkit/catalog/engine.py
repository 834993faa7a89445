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
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError
from sqlmodel import Session, create_engine

from . import values
from ..errors import Busy, Conflict, InvalidInput, MaskkitError, NotFound

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
            raise InvalidInput(f"catalog URL {value!r} is not a valid SQLAlchemy URL: {exc}") from None
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
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"catalog URL {url!r} is not valid: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            parent = Path(database).parent
            if not parent.is_dir():
                raise NotFound(f"catalog folder {parent} does not exist")
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                               json_serializer=values.json_dumps)
        event.listen(engine, "connect", _sqlite_pragmas)
        return _checked(engine)
    try:
        return _checked(create_engine(url, pool_pre_ping=True, json_serializer=values.json_dumps))
    except (NoSuchModuleError, ImportError) as exc:
        raise InvalidInput(f"catalog URL {url!r}: unsupported database ({str(exc).splitlines()[0]}); "
                           "use a file path, sqlite:///PATH or postgresql+psycopg://...") from None


def _checked(engine: Engine) -> Engine:
    """The same value rules on every backend (catalog/values.py)."""
    values.install(engine)
    values.install_session_checks()
    return engine


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
        self._file = _sqlite_path(url)
        self._identity = _file_identity(self._file) if self._file else None

    def check_file(self) -> None:
        """A SQLite catalog deleted or replaced under a running command (e.g. while `audit` serves the page)
        would take every later write into the deleted file: refuse instead."""
        if self._file is None:
            return
        now = _file_identity(self._file)
        if self._identity is None:
            self._identity = now  # created by this command (ingest): remember it
            return
        if now != self._identity:
            raise Conflict(f"catalog {self._file} was {'deleted' if now is None else 'replaced'} while this command "
                           "ran: nothing more is written to it (restore it, then run the command again)")

    @contextmanager
    def session(self) -> Iterator[Session]:
        self.check_file()
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


SQLITE_MAGIC = b"SQLite format 3\x00"


def _sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_sqlite_file(url: str, create: bool) -> None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    if path.is_dir():
        raise InvalidInput(f"catalog {path} is a folder, not a catalog file")
    if not path.exists():
        if not create:
            raise NotFound(f"catalog {path} does not exist (maskkit ingest DATA creates it; or --catalog PATH)",
                           what="catalog")
        return
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise InvalidInput(f"catalog {path}: cannot read it ({exc.strerror})") from None
    if head and head != SQLITE_MAGIC:
        raise InvalidInput(f"catalog {path} is not a SQLite file (a maskkit catalog is one)")


def open_catalog(catalog: str | os.PathLike | None = None, *, upgrade_schema: bool = True,
                 create: bool = True) -> Catalog:
    """Open the catalog and bring it to the latest schema; `create=False`: a missing SQLite file is an error
    (commands that only read never make an empty catalog by a typo)."""
    url = resolve_url(catalog)
    if make_url(url).get_backend_name() == "sqlite":
        _check_sqlite_file(url, create)
    engine = make_engine(url)
    if upgrade_schema:
        try:
            revision = current_revision(engine)
            if revision != head_revision():
                _known_revision(revision, url)
                upgrade(engine)
        except OperationalError as exc:
            raise MaskkitError(f"cannot open catalog {url}: {str(exc.orig).splitlines()[0]}") from None
        except DatabaseError as exc:
            raise InvalidInput(f"catalog {url} is not a usable database: {str(exc.orig).splitlines()[0]}") from None
    return Catalog(url, engine)


def _known_revision(revision: str | None, url: str) -> None:
    """A catalog written by a newer maskkit (a schema revision this one does not know) is refused, untouched."""
    if revision is None:
        return
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        known = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision)
    except CommandError:
        known = None
    if known is None:
        raise Conflict(f"catalog {url} is at schema revision {revision!r}, newer than this maskkit knows "
                       f"(latest {head_revision()}): upgrade maskkit")


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


def retry_when_busy(fn, *, attempts: int = 4, pause: float = 0.5):
    """Run a write that may meet another writer's lock: SQLite's busy timeout waits first; should that run
    out, try again a few times, then a clean Busy error (the caller's input is never silently lost)."""
    import time

    for attempt in range(attempts):
        try:
            return fn()
        except OperationalError as exc:
            text = str(exc.orig).lower()
            if "locked" not in text and "busy" not in text:
                raise
            if attempt == attempts - 1:
                raise Busy("the catalog is busy (another process holds its write lock): try again") from None
            time.sleep(pause * (attempt + 1))
