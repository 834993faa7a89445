"""Contact sheets: one way to lay image files out as a PNG grid with captions (preprocess reports, generated
people, a reviewer's person). Unreadable files show as grey tiles; the sheet is written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import MaskkitError
from .images import open_image



@dataclass
class Tile:
    path: Path | str  # an image file, or its RGB pixels (an H x W x 3 uint8 array)
    captions: tuple[str, ...] = ()
    highlight: bool = False  # drawn in the warning colour (fallbacks, changed labels)


def draw_sheet(tiles: list[Tile], out, *, columns: int, tile: tuple[int, int] = (120, 160), title: str | None = None,
               background=(30, 30, 30)) -> Path:
    from PIL import Image, ImageDraw, ImageFile

    from .files import save_image

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    tw, th = tile
    lines = max((len(t.captions) for t in tiles), default=0)
    cap_h, head = 14 * lines + 4, (30 if title else 0)
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * tw, head + rows * (th + cap_h)), background)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 8), title, fill=(255, 212, 121))
    for n, t in enumerate(tiles):
        x, y = (n % columns) * tw, head + (n // columns) * (th + cap_h)
        try:
            if hasattr(t.path, "shape"):
                thumb = Image.fromarray(t.path).convert("RGB")
            else:
                thumb = open_image(t.path, draft=tile)
            thumb.thumbnail(tile)
        except (MaskkitError, OSError, SyntaxError, ValueError, TypeError):
            thumb = Image.new("RGB", tile, (90, 90, 90))
        sheet.paste(thumb, (x + (tw - thumb.width) // 2, y + (th - thumb.height) // 2))
        for k, caption in enumerate(t.captions):
            colour = (255, 130, 100) if t.highlight and k == len(t.captions) - 1 else (200, 200, 200)
            draw.text((x + 4, y + th + 2 + 14 * k), caption[: max(8, tw // 6)], fill=colour)
    return save_image(sheet, out)
