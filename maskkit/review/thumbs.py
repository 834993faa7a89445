"""Review images as cached, downsized JPEGs: on disk (keyed by content hash and size) and in memory."""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

DEFAULT_MAX_SIDE = 512


def cache_dir() -> Path:
    base = os.environ.get("MASKKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "maskkit")
    return Path(base) / "thumbs"


def _render(path: Path, max_side: int) -> bytes:
    from PIL import Image, ImageDraw

    from ..errors import MaskkitError
    from ..images import open_image

    try:  # the one reader: upright, 16-bit scaled, bombs refused; truncated files show what they still hold
        img = open_image(path, draft=(max_side, max_side))
        img.thumbnail((max_side, max_side))
    except MaskkitError:
        img = Image.new("RGB", (max_side * 3 // 4, max_side), (90, 90, 90))
        ImageDraw.Draw(img).text((10, 10), "cannot read image", fill=(255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


class ThumbCache:
    """Bytes of downsized JPEGs; memory LRU over an on-disk cache shared by every catalog."""

    def __init__(self, max_side: int = DEFAULT_MAX_SIDE, memory_items: int = 512, directory: Path | None = None):
        self.max_side = max_side
        self.directory = directory or cache_dir()
        self.memory: OrderedDict[str, bytes] = OrderedDict()
        self.memory_items = memory_items
        self.lock = threading.Lock()

    def get(self, path: Path, sha1: str) -> bytes:
        key = f"{sha1}_{self.max_side}"
        with self.lock:
            if key in self.memory:
                self.memory.move_to_end(key)
                return self.memory[key]
        disk = self.directory / key[:2] / f"{key}.jpg"
        if disk.is_file():
            data = disk.read_bytes()
        else:
            from ..files import write_bytes

            data = _render(Path(path), self.max_side)
            write_bytes(disk, data, "review image cache")
        with self.lock:
            self.memory[key] = data
            if len(self.memory) > self.memory_items:
                self.memory.popitem(last=False)
        return data
