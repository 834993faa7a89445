"""Reading one image file once: content hash, size, dimensions and damage checks."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
JUNK_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class FileFacts:
    sha1: str
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    damaged: bool
    damage_reason: str | None


def is_junk(name: str) -> bool:
    """AppleDouble `._*` files, hidden files and OS droppings are never images."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame marker; None when the markers do not parse."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return (width, height) if width and height else None
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def _damage(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """(reason or None, (width, height) or None) from the bytes, without decoding pixels."""
    from PIL import Image as PILImage, UnidentifiedImageError

    if not data:
        return "empty file", None
    if data.startswith(_JPEG_SOI):
        if not data.rstrip(b"\x00\r\n ").endswith(_JPEG_EOI):
            reason = "truncated JPEG (no end-of-image marker)"
        else:
            reason = None
    elif data.startswith(_PNG_SIGNATURE):
        reason = None if b"IEND" in data[-16:] else "truncated PNG (no IEND chunk)"
    else:
        return "not a JPEG or PNG file", None
    dims = _jpeg_size(data) if data[0] == 0xFF else _png_size(data)
    if dims:
        return reason or _size_problem(*dims), dims
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            dims = img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return reason or f"unreadable header: {exc}", None
    return reason or _size_problem(*dims), dims


def _size_problem(width: int, height: int) -> str | None:
    """The one reader's limits (maskkit.images), checked at ingest so a bomb is flagged, never decoded."""
    from ..images import MIN_SIDE, max_pixels

    if width * height > max_pixels():
        return f"{width} x {height} pixels, over the limit of {max_pixels():,} (MASKKIT_MAX_PIXELS)"
    if min(width, height) < MIN_SIDE:
        return f"{width} x {height} pixels, too small to hold a face"
    return None


def _full_decode_problem(data: bytes) -> str | None:
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # any decoder failure means the pixels cannot be trusted
        return f"cannot decode: {exc}"
    return None


def inspect_file(path: str | os.PathLike, *, full_decode: bool = False) -> FileFacts:
    """Hash the file (read once) and check it is a whole JPEG/PNG. `full_decode` also decodes pixels."""
    path = Path(path)
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        data = handle.read()
    reason, dims = _damage(data)
    if reason is None and full_decode:
        reason = _full_decode_problem(data)
    width, height = dims if dims else (None, None)
    return FileFacts(
        sha1=hashlib.sha1(data).hexdigest(),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        width=width,
        height=height,
        damaged=reason is not None,
        damage_reason=reason,
    )
