"""A contact sheet of one person: the 7 images side by side with their labels drawn on."""

from __future__ import annotations

from pathlib import Path

from ..sheets import Tile, draw_sheet


def contact_sheet(view: dict, out: Path, tile: tuple[int, int] = (192, 256)) -> Path:
    title = (f"{view['person_id']}  {view['folder']}   gender {view['gender']}   age {view['age']} "
             f"({view['age_band']} {view['age_band_range']})")
    tiles = [Tile(im["path"], (f"{i + 1} {im['kind']}", im["mask"] + (" DAMAGED" if im["damaged"] else "")),
                  im["mask"] != im["orig_mask"]) for i, im in enumerate(view["images"])]
    return draw_sheet(tiles, out, columns=max(1, len(tiles)), tile=tile, title=title, background=(29, 31, 33))
