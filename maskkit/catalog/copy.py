"""`maskkit catalog copy SRC DST`: a whole catalog from one database to another (SQLite <-> PostgreSQL),
row for row, ids kept. The destination must be empty; it is written in one transaction."""

from __future__ import annotations

from typing import Callable

from sqlalchemy import func, insert, select, text, update
from sqlmodel import SQLModel

from ..errors import MaskkitError
from . import models  # noqa: F401  (every table registered)
from .engine import open_catalog

CHUNK = 5000


def table_counts(catalog) -> dict[str, int]:
    with catalog.engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in SQLModel.metadata.tables.items()}


def copy_catalog(src_url: str, dst_url: str, progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
    src = open_catalog(src_url, create=False)  # a mistyped source is an error, not an empty copy
    dst = open_catalog(dst_url)
    try:
        if src.url == dst.url:
            raise MaskkitError("source and destination are the same catalog")
        filled = {name: n for name, n in table_counts(dst).items() if n}
        if filled:
            raise MaskkitError(f"destination {dst.url} is not empty ({', '.join(f'{k} {v}' for k, v in filled.items())})")
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
                    from sqlalchemy import bindparam

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
        src.dispose()
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
    return value
