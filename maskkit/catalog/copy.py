"""`maskkit catalog copy SRC DST`: a whole catalog from one database to another (SQLite <-> PostgreSQL),
row for row, ids kept. The destination must be empty; it is written in one transaction.

Every source row is checked first against the rules both backends keep (catalog/values.py): a value the
destination would refuse is named by table, row id and column before anything is written, and a copy
that fails still leaves nothing behind (a destination file or tables it created are removed)."""

from __future__ import annotations

from typing import Callable

import os
from pathlib import Path

from sqlalchemy import bindparam, func, inspect, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from ..errors import Conflict, InvalidInput
from . import models  # noqa: F401  (every table registered)
from . import values
from .engine import make_engine, open_catalog, resolve_url

CHUNK = 5000


def table_counts(catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in SQLModel.metadata.tables.items()}


def check_source(catalog, limit: int = 5) -> int:
    """Refuse a source with values another backend would refuse (naming table, row and column);
    return how many JSON values are NaN/Infinity (they are written as null)."""
    problems: list[str] = []
    non_finite = 0
    with catalog.engine.connect() as read:
        for table in SQLModel.metadata.sorted_tables:
            limits = values.string_limits(table)
            jsons = values.json_columns(table)
            if not limits and not jsons:
                continue
            result = read.execution_options(yield_per=CHUNK).execute(select(table).order_by(table.c.id))
            for rows in result.partitions(CHUNK):
                batch = [dict(row._mapping) for row in rows]
                for _i, row, column, why in values.row_problems(table, batch, limits):
                    problems.append(f"{table.name} row id {row.get('id')} column {column}: {why}")
                non_finite += sum(values.has_non_finite(row.get(c)) for row in batch for c in jsons)
    if problems:
        more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
        raise InvalidInput("the source holds values the destination would refuse: "
                           + "; ".join(problems[:limit]) + more + "; nothing was copied")
    return non_finite


def _existing_target(url: str) -> tuple[bool, set[str]]:
    """Whether the destination exists already and which tables it holds (before we touch it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:" or not Path(database).exists():
            return False, set()
    engine = make_engine(url)
    try:
        return True, set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _remove_target(url: str, existed: bool, tables_before: set[str]) -> None:
    """Undo what a failed copy created: the SQLite file it made, or the tables it made on a server."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not existed:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(f"{parsed.database}{suffix}")
            except FileNotFoundError:
                pass
        return
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            created = [t for t in reversed(SQLModel.metadata.sorted_tables) if t.name not in tables_before]
            for table in created:
                table.drop(conn, checkfirst=True)
            if "alembic_version" not in tables_before:
                conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()


def copy_catalog(src_url: str, dst_url: str, progress: Callable[[str, int, int], None] | None = None,
                 notes: list[str] | None = None) -> dict[str, int]:
    src = open_catalog(src_url, create=False)  # a mistyped source is an error, not an empty copy
    try:
        dst_url = resolve_url(dst_url)
        if src.url == dst_url:
            raise InvalidInput("source and destination are the same catalog")
        non_finite = check_source(src)
        existed, tables_before = _existing_target(dst_url)
        try:
            copied = _copy_rows(src, dst_url, progress)
        except BaseException:
            _remove_target(dst_url, existed, tables_before)  # only what this copy created
            raise
        if non_finite and notes is not None:
            notes.append(f"{non_finite} JSON value(s) held NaN or Infinity, which JSON has no word for: "
                         "written as null")
        return copied
    finally:
        src.dispose()


def _copy_rows(src, dst_url: str, progress) -> dict[str, int]:
    dst = open_catalog(dst_url)
    try:
        filled = {name: n for name, n in table_counts(dst).items() if n}
        if filled:
            raise Conflict(f"destination {dst.url} is not empty ({', '.join(f'{k} {v}' for k, v in filled.items())})")
        copied = {}
        tables = SQLModel.metadata.sorted_tables
        with src.engine.connect() as read, dst.engine.begin() as write:
            for table in tables:
                # columns pointing at the same table (parents, undo links) are filled in after all rows exist
                self_refs = [fk.parent.name for fk in table.foreign_keys if fk.column.table is table]
                total = read.execute(select(func.count()).select_from(table)).scalar_one()
                done = 0
                later = []
                result = read.execution_options(yield_per=CHUNK).execute(select(table).order_by(table.c.id))
                for rows in result.partitions(CHUNK):
                    batch = [dict(row._mapping) for row in rows]
                    for row in batch:
                        if self_refs and any(row[c] is not None for c in self_refs):
                            later.append({"b_id": row["id"], **{c: row[c] for c in self_refs}})
                            for c in self_refs:
                                row[c] = None
                    write.execute(insert(table), batch)
                    done += len(batch)
                    if progress:
                        progress(table.name, done, total)
                if later:
                    stmt = update(table).where(table.c.id == bindparam("b_id")).values(
                        {c: bindparam(c) for c in self_refs})
                    write.execute(stmt, later)
                copied[table.name] = done
            if write.dialect.name == "postgresql":  # ids were given: move each sequence past them
                for table in tables:
                    write.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE((SELECT MAX(id) FROM \"{table.name}\"), 0) + 1, false)"))
        return copied
    finally:
        dst.dispose()


def compare_catalogs(a_url: str, b_url: str) -> list[str]:
    """Differences between two catalogs, table by table, row by row (empty when identical)."""
    a, b = open_catalog(a_url, create=False), open_catalog(b_url, create=False)
    problems = []
    try:
        with a.engine.connect() as ca, b.engine.connect() as cb:
            for table in SQLModel.metadata.sorted_tables:
                ra = [tuple(_norm(v) for v in row) for row in ca.execute(select(table).order_by(table.c.id))]
                rb = [tuple(_norm(v) for v in row) for row in cb.execute(select(table).order_by(table.c.id))]
                if ra != rb:
                    diff = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
                    problems.append(f"{table.name}: {len(ra)} vs {len(rb)} rows, first difference at row {diff}: "
                                    f"{ra[diff] if diff < len(ra) else None} / {rb[diff] if diff < len(rb) else None}")
    finally:
        a.dispose()
        b.dispose()
    return problems


def _norm(value):
    from datetime import datetime

    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat()
    if isinstance(value, (dict, list, float)):
        return values._finite(value)  # NaN in an older SQLite catalog's JSON is copied as null
    return value
