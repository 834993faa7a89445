"""One rule for the values a catalog row may hold, the same on SQLite and PostgreSQL.

SQLite accepts a 300-character string in a VARCHAR(200) column and stores NaN inside JSON; PostgreSQL
refuses both. So that a catalog never holds what another backend would refuse (and `catalog copy` never
fails half-way), every write is checked here on both engines:
- a string longer than its column is refused, naming the table, the column and the length;
- JSON has no NaN or Infinity: non-finite floats in a JSON column are written as null on both engines
  (`json_dumps`), and `catalog copy` says how many it met in an older catalog.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from functools import lru_cache

from sqlalchemy import JSON, String, TypeDecorator, event
from sqlalchemy.engine import Engine
from sqlalchemy.sql.dml import Insert, Update

from ..errors import InvalidInput


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_non_finite(v) for v in value)
    return False


def json_dumps(value: Any) -> str:
    """JSON for a catalog column: standard JSON (NaN/Infinity become null), the same on every backend."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _base_type(column):
    kind = column.type
    return getattr(kind, "impl_instance", None) or getattr(kind, "impl", None) if isinstance(kind, TypeDecorator) else kind


@lru_cache(maxsize=None)
def string_limits(table) -> dict[str, int]:
    """Column -> most characters, for the table's VARCHAR(n) columns (SQLModel's AutoString included)."""
    limits = {}
    for c in table.columns:
        base = _base_type(c)
        length = getattr(c.type, "length", None) or getattr(base, "length", None)
        if isinstance(base, String) and length:
            limits[c.name] = length
    return limits


@lru_cache(maxsize=None)
def json_columns(table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns if isinstance(_base_type(c), JSON))


def row_problems(table, rows: Iterable[dict], limits: dict[str, int] | None = None) -> Iterable[tuple[int, dict, str, str]]:
    """(position, row, column, why) for every value of `rows` no backend may refuse."""
    limits = string_limits(table) if limits is None else limits
    if not limits:
        return
    for i, row in enumerate(rows):
        for column, limit in limits.items():
            value = row.get(column)
            if isinstance(value, str) and len(value) > limit:
                yield i, row, column, f"{len(value)} characters, at most {limit}"


def _check_statement(conn, clauseelement, multiparams, params, execution_options):
    if not isinstance(clauseelement, (Insert, Update)):
        return
    table = clauseelement.table
    limits = string_limits(table)
    if not limits:
        return
    rows: list[dict] = []
    for p in multiparams or ():
        if isinstance(p, dict):
            rows.append(p)
        elif isinstance(p, (list, tuple)):
            rows.extend(r for r in p if isinstance(r, dict))
    if params:
        rows.append(params)
    values = getattr(clauseelement, "_values", None)  # insert(...).values(name=...) / update().values(...)
    if values:
        rows.append({getattr(k, "key", str(k)): getattr(v, "value", v) for k, v in values.items()})
    for _i, row, column, why in row_problems(table, rows, limits):
        raise InvalidInput(f"{table.name}.{column}: {why} ({str(row.get(column))[:40]!r}...)")


def _check_flush(session, flush_context, instances):
    for obj in list(session.new) + list(session.dirty):
        table = getattr(type(obj), "__table__", None)
        if table is None:
            continue
        limits = string_limits(table)
        for column, limit in limits.items():
            value = getattr(obj, column, None)
            if isinstance(value, str) and len(value) > limit:
                raise InvalidInput(f"{table.name}.{column}: {len(value)} characters, at most {limit} "
                                   f"({value[:40]!r}...)")


def install(engine: Engine) -> None:
    """Check every INSERT/UPDATE run through `engine` (core statements; ORM flushes are checked in
    `install_session_checks`)."""
    event.listen(engine, "before_execute", _check_statement)


def install_session_checks() -> None:
    from sqlalchemy.orm import Session as OrmSession

    if not event.contains(OrmSession, "before_flush", _check_flush):
        event.listen(OrmSession, "before_flush", _check_flush)
