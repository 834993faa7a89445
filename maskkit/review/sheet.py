"""A contact sheet of one person: the 7 images side by side with their labels drawn on."""

from __future__ import annotations

from pathlib import Path


def contact_sheet(view: dict, out: Path, tile: tuple[int, int] = (192, 256)) -> Path:
    from PIL import Image, ImageDraw, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    tw, th = tile
    header = 34
    caption = 36
    n = max(1, len(view["images"]))
    sheet = Image.new("RGB", (tw * n, header + th + caption), (29, 31, 33))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), f"{view['person_id']}  {view['folder']}   gender {view['gender']}   age {view['age']} "
                      f"({view['age_band']} {view['age_band_range']})", fill=(255, 212, 121))
    for i, im in enumerate(view["images"]):
        try:
            with Image.open(im["path"]) as src:
                src.draft("RGB", tile)
                thumb = src.convert("RGB")
                thumb.thumbnail(tile)
        except (OSError, SyntaxError, ValueError):
            thumb = Image.new("RGB", tile, (90, 90, 90))
        x = i * tw + (tw - thumb.width) // 2
        sheet.paste(thumb, (x, header + (th - thumb.height) // 2))
        colour = (255, 140, 105) if im["mask"] != im["orig_mask"] else (230, 230, 230)
        draw.text((i * tw + 6, header + th + 4), f"{i + 1} {im['kind']}", fill=(170, 170, 170))
        draw.text((i * tw + 6, header + th + 18), im["mask"] + (" DAMAGED" if im["damaged"] else ""), fill=colour)
    from ..files import save_image

    return save_image(sheet, out)
