"""One rule for every named thing (views, splits, runs, ensembles, blends, variants, eval sets): a name is also a
file name (runs/<name>/, submission_<name>.csv, oof_<split>_<run>.npz), so it may never leave its folder."""

from __future__ import annotations

import re

from .errors import InvalidInput

MAX_NAME = 100  # fits every backend's column and every file system's name limit, with prefixes
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_name(name, what: str = "name") -> str:
    """`name` unchanged when it is safe as a catalog key and as one file name; else InvalidInput naming `what`."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{what} must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidInput(f"{what} {name[:40]!r}... is {len(name)} characters long (at most {MAX_NAME})")
    if not _NAME.match(name) or ".." in name:
        raise InvalidInput(f"{what} {name!r} may hold letters, digits, '-', '_' and '.' only, start with a letter, "
                           "digit or '_', and hold no '..'")
    return name


def safe_file_part(name: str) -> str:
    """For names recorded before the rule (an older catalog): a form that stays one file name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).replace("..", "_")
    return cleaned.lstrip(".") or "_"
