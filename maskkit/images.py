"""The one image reader: every path that decodes a photo (training, features, crop, predict, submit, generate,
suspects, the review page's images) goes through `read_rgb`, so that orientation, bit depth, colour modes and
pixel limits are handled once, the same way everywhere.

- EXIF orientation is applied (a phone photo taken sideways is read upright);
- 16-bit (and 32-bit integer) grayscale is scaled to 8 bits, not clipped to white; 16-bit RGB PNGs are read
  as 8-bit RGB by Pillow;
- CMYK, grayscale, palette and alpha images become RGB (alpha is dropped, as before);
- the pixel count is checked from the header before anything is decoded (`MASKKIT_MAX_PIXELS`, default
  50 megapixels), so a 13000 x 13000 PNG of 0.5 MB is one clear line instead of 6.5 GB of memory;
- an image smaller than MIN_SIDE pixels on a side is refused (no face fits in it);
- truncated JPEGs decode as far as they go (ingest flags them as damaged; the review page shows them).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import InvalidInput, MaskkitError

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE = 8


def max_pixels() -> int:
    raw = os.environ.get("MASKKIT_MAX_PIXELS")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"MASKKIT_MAX_PIXELS must be a whole number of pixels, got {raw!r}") from None
    if value < MIN_SIDE * MIN_SIDE:
        raise InvalidInput(f"MASKKIT_MAX_PIXELS must be at least {MIN_SIDE * MIN_SIDE}, got {value}")
    return value


class ImageTooLarge(InvalidInput):
    pass


def check_size(path, width: int, height: int, limit: int | None = None) -> None:
    limit = max_pixels() if limit is None else limit
    if width * height > limit:
        raise ImageTooLarge(f"{path}: {width} x {height} = {width * height:,} pixels, over the limit of {limit:,} "
                            "(MASKKIT_MAX_PIXELS raises it)")
    if min(width, height) < MIN_SIDE:
        raise InvalidInput(f"{path}: {width} x {height} pixels is too small to hold a face (at least {MIN_SIDE} a side)")


def open_image(path, *, limit: int | None = None, draft: tuple[int, int] | None = None):
    """The decoded, upright PIL image in mode RGB. `draft`: let JPEG decode at a reduced scale at least this big
    (thumbnails). Raises InvalidInput (too large / too small / unreadable), one line naming the file."""
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with warnings.catch_warnings():  # the size is checked below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{path}: {_reason(exc)} (over maskkit's limit of {max_pixels():,} too)") from None
    except FileNotFoundError:
        from .errors import NotFound

        raise NotFound(f"{path}: image not found", what="file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{path}: cannot read image ({_reason(exc)})") from None
    try:
        with img:
            check_size(path, *img.size, limit=limit)
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except MaskkitError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{path}: cannot read image ({_reason(exc)})") from None


def read_rgb(path, *, limit: int | None = None) -> np.ndarray:
    """A file's pixels as H x W x 3 uint8 RGB, upright. See the module's notes."""
    return np.array(open_image(path, limit=limit))  # writable: callers composite and crop in place


def _to_rgb(img):
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(img)
        if values.dtype != np.uint8:
            values = values.astype(np.int64)
            top = 65535 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255
            values = np.clip(values, 0, top) * 255 // top
        gray = values.astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = 255.0 if values.max(initial=0) > 1.0 else 1.0
        gray = np.clip(values / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def image_size(path) -> tuple[int, int]:
    """(width, height) from the header, upright (EXIF orientations 5-8 swap them); no pixels decoded."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)

