"""The one image reader (maskkit.images): orientation, bit depth, colour modes, pixel limits, through the
library and through the paths that use it (training input, crops, the review page's thumbnails)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskkit.errors import InvalidInput, NotFound
from maskkit.images import ImageTooLarge, read_rgb


def _marked(w=40, h=30) -> np.ndarray:
    """A picture whose top-left quarter is red, the rest blue: orientation shows where red ends up."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 2] = 200
    rgb[: h // 2, : w // 2] = (220, 0, 0)
    return rgb


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(_marked())
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    rgb = read_rgb(tmp_path / "o.jpg")
    assert rgb.shape == (40, 30, 3)  # upright: width and height swapped
    assert rgb[5, -5, 0] > 150 and rgb[-5, 5, 0] < 60  # the red corner is now top-right
    from maskkit.images import image_size

    assert image_size(tmp_path / "o.jpg") == (30, 40)


def test_16_bit_grayscale_is_scaled_not_white(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as check:
        assert check.mode.startswith("I")  # really a 16-bit file
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    assert rgb.min() <= 2 and rgb.max() >= 253 and 100 < rgb.mean() < 155  # the ramp survives, not all 255
    assert abs(int(rgb[24, 32, 0]) - int(ramp[24, 32]) // 257) <= 1


@pytest.mark.parametrize("mode", ["CMYK", "L", "LA", "P", "RGBA", "1"])
def test_colour_modes_become_rgb(tmp_path, mode):
    base = Image.fromarray(_marked())
    img = base.convert(mode) if mode != "P" else base.convert("P", palette=Image.ADAPTIVE, colors=8)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    img.save(tmp_path / f"x{suffix}")
    rgb = read_rgb(tmp_path / f"x{suffix}")
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    if mode not in ("L", "LA", "1"):
        assert rgb[3, 3, 0] > rgb[3, 3, 2] and rgb[-3, -3, 2] > rgb[-3, -3, 0]  # red stays red, blue stays blue


def test_palette_with_transparency(tmp_path):
    img = Image.fromarray(_marked()).convert("P", palette=Image.ADAPTIVE, colors=4)
    img.info["transparency"] = 0
    img.save(tmp_path / "t.png", transparency=0)
    assert read_rgb(tmp_path / "t.png").shape == (30, 40, 3)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    # 13000 x 13000 of one colour compresses to a few hundred kB: the reader must refuse it before decoding
    Image.new("L", (13000, 13000)).save(tmp_path / "bomb.png", optimize=False)
    assert (tmp_path / "bomb.png").stat().st_size < 2_000_000
    with pytest.raises(ImageTooLarge, match=r"13000 x 13000 = 169,000,000 pixels, over the limit"):
        read_rgb(tmp_path / "bomb.png")
    monkeypatch.setenv("MASKKIT_MAX_PIXELS", "1000")
    Image.fromarray(_marked()).save(tmp_path / "small.png")
    with pytest.raises(ImageTooLarge, match="over the limit of 1,000"):
        read_rgb(tmp_path / "small.png")
    monkeypatch.setenv("MASKKIT_MAX_PIXELS", "many")
    with pytest.raises(InvalidInput, match="MASKKIT_MAX_PIXELS"):
        read_rgb(tmp_path / "small.png")


def test_tiny_missing_and_garbage_files_are_one_line(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    with pytest.raises(InvalidInput, match="1 x 1 pixels is too small"):
        read_rgb(tmp_path / "one.png")
    with pytest.raises(NotFound):
        read_rgb(tmp_path / "gone.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InvalidInput, match="junk.jpg: cannot read image"):
        read_rgb(tmp_path / "junk.jpg")


def test_truncated_jpeg_decodes_as_far_as_it_goes(tmp_path):
    Image.fromarray(_marked(200, 150)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert read_rgb(tmp_path / "cut.jpg").shape == (150, 200, 3)


def test_every_reader_path_sees_the_same_upright_pixels(tmp_path):
    """Training input, the crop stage, generate and the review thumbnails use the one reader."""
    from maskkit.faces.generate import read_rgb as generate_read
    from maskkit.faces.preprocess import _read_rgb as crop_read
    from maskkit.review.thumbs import _render
    from maskkit.train.data import load_rgb

    img = Image.fromarray(_marked())
    exif = img.getexif()
    exif[0x0112] = 8
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    ref = read_rgb(tmp_path / "r.jpg")
    for reader in (load_rgb, crop_read, generate_read):
        assert np.array_equal(reader(str(tmp_path / "r.jpg")), ref)
    import io

    thumb = Image.open(io.BytesIO(_render(tmp_path / "r.jpg", 64)))
    assert thumb.size[1] > thumb.size[0]  # portrait, as displayed
    # the crop stage answers None (and records why) instead of raising
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    assert crop_read(tmp_path / "one.png") is None


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_ingest_flags_a_bomb_without_decoding_it(tmp_path):
    from maskkit.catalog.imagefiles import inspect_file

    Image.new("L", (9000, 9000)).save(tmp_path / "big.png")
    facts = inspect_file(tmp_path / "big.png")
    assert facts.damaged and "over the limit" in facts.damage_reason and facts.width == 9000
