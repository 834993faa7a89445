"""Files in and out, one way everywhere: outputs checked up front and written under a temporary name then
renamed (never half-written, no stray temporary file on failure), CSV and YAML inputs read with one-line
errors that name the file and line."""

from __future__ import annotations

import csv
import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InvalidInput, MaskkitError, NotFound


def output_file(path, what: str = "output") -> Path:
    """A file to write: not a folder; its folder is made when missing (or a clear error when it cannot be)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InvalidInput(f"{what} {path} is a folder: give a file name")
    if path.exists() and not path.is_file():  # a device, FIFO or socket: never replaced by a renamed file
        raise InvalidInput(f"{what} {path} is {_kind_of(path)}, not a regular file: give a file name")
    parent = path.parent
    _make_dir(parent, f"{what} {path}: folder")
    if not os.access(parent, os.W_OK):
        raise InvalidInput(f"{what} {path}: folder {parent} is not writable")
    return path


def _kind_of(path: Path) -> str:
    import stat

    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def output_dir(path, what: str = "output folder") -> Path:
    """A folder to write into, made when missing; an existing file there is an error."""
    path = Path(path).expanduser()
    _make_dir(path, what)
    return path


def _make_dir(path: Path, what: str) -> None:
    if path.exists() and not path.is_dir():
        raise InvalidInput(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"{what} {path}: cannot make it ({exc.strerror})") from None


@contextmanager
def atomic_path(path, what: str = "output") -> Iterator[Path]:
    """Yields a temporary path beside `path`; renamed onto it when the block ends well, removed otherwise."""
    import threading

    path = output_file(path, what)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    except OSError as exc:  # a full disk, a read-only file system, a vanished folder: one line, nothing left behind
        other = f" ({exc.filename})" if exc.filename not in (None, str(tmp), str(path)) else ""
        raise MaskkitError(f"cannot write {what} {path}: {exc.strerror or exc}{other}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data: bytes, what: str = "output") -> Path:
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str, what: str = "output") -> Path:
    with atomic_path(path, what) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_image(image, out, what: str = "image") -> Path:
    """Save a PIL image (format from the suffix) under a temporary name, then rename it into place."""
    with atomic_path(out, what) as tmp:
        image.save(tmp)
    return Path(out)


def read_text(path, what: str = "file") -> str:
    """A UTF-8 text file (a BOM is fine); other encodings are one-line errors naming the line."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: {what} not found", what="file")
    if path.is_dir():
        raise InvalidInput(f"{path}: {what} is a folder, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the {what} "
                           "as UTF-8") from None


def read_csv(path, what: str = "csv file") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells), ...]) of a UTF-8 CSV file; blank lines skipped."""
    text = read_text(path, what)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise InvalidInput(f"{path}: not a valid CSV file ({exc})") from None
    if not rows:
        raise InvalidInput(f"{path}: {what} is empty (no header)")
    header = [h.strip() for h in rows[0]]
    body = [(n, row) for n, row in enumerate(rows[1:], 2) if any(cell.strip() for cell in row)]
    return header, body


def read_yaml_mapping(path, what: str) -> dict:
    """A YAML file that must hold a mapping; one-line errors naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise NotFound(f"{path}: {what} file not found")
    try:
        data = yaml.safe_load(read_text(path, what)) or {}
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a {what} must be a mapping of keys")
    return data
