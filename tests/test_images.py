from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclass.images import ImageDecodeError, check_image, fit_square, load_rgb, load_square


def _gradient(w: int = 64, h: int = 40) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)
    arr = np.stack([np.tile(x, (h, 1)), np.full((h, w), 128.0), np.tile(x[::-1], (h, 1))], axis=2)
    return arr.astype(np.uint8)


def test_png_named_jpg_decodes(tmp_path: Path) -> None:
    p = tmp_path / "really_png.jpg"
    Image.fromarray(_gradient()).save(p, format="PNG")
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (64, 40)
    assert np.array_equal(np.asarray(img), _gradient())


def test_bmp_named_jpg_decodes(tmp_path: Path) -> None:
    p = tmp_path / "really_bmp.jpg"
    Image.fromarray(_gradient()).save(p, format="BMP")
    assert np.array_equal(np.asarray(load_rgb(p)), _gradient())


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    p = tmp_path / "rotated.jpg"
    img = Image.fromarray(_gradient(64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(p, exif=exif, quality=95)
    out = load_rgb(p)
    assert out.size == (40, 64)  # width and height swapped


@pytest.mark.parametrize("suffix", [".heic", ".avif"])
def test_phone_formats_heic_and_avif_decode(tmp_path: Path, suffix: str) -> None:
    from imgclass.data import list_images

    p = tmp_path / "cls" / f"IMG_0001{suffix.upper()}"  # phones write upper-case names
    p.parent.mkdir()
    Image.fromarray(_gradient()).save(p, quality=95)  # pillow-heif, registered by imgclass.images, writes HEIC
    assert list_images(tmp_path / "cls") == [p]
    out = np.asarray(load_rgb(p), dtype=np.float32)
    assert out.shape == (40, 64, 3) and np.abs(out - _gradient()).mean() < 6  # lossy, but the same picture
    assert check_image(p) is None


def test_heic_without_the_plugin_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imgclass.images as images

    p = tmp_path / "x.heic"
    Image.fromarray(_gradient()).save(p)
    # As in an install without pillow-heif: Pillow alone does not know the format.
    Image.init()  # every plugin registered first, so the patched tables below are complete
    monkeypatch.setattr(images, "HEIF_SUPPORT", False)
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    monkeypatch.setattr(Image, "OPEN", {k: v for k, v in Image.OPEN.items() if k != "HEIF"})
    with pytest.raises(ImageDecodeError, match=r"x\.heic: HEIC/HEIF files need the pillow-heif package"):
        load_rgb(p)


def test_cmyk_grayscale_palette_alpha_16bit(tmp_path: Path) -> None:
    rgb = Image.fromarray(_gradient())
    cases = {
        "cmyk.jpg": rgb.convert("CMYK"),
        "gray.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "alpha.png": rgb.convert("RGBA"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (64, 40), name
    # 16-bit gray: values scaled to 8 bits, not clipped to white.
    arr16 = (np.tile(np.linspace(0, 65535, 64), (40, 1))).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    out = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert out[:, 0].max() < 5 and out[:, -1].min() > 250 and 100 < out[:, 32].mean() < 160


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    img.save(tmp_path / "clear.png")
    assert np.asarray(load_rgb(tmp_path / "clear.png")).min() == 255


def test_undecodable_file_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"<html>not an image</html>")
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        load_rgb(p)
    assert check_image(p) is not None
    truncated = tmp_path / "truncated.jpg"
    buf = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buf, format="JPEG")
    truncated.write_bytes(buf.getvalue()[:300])
    assert check_image(truncated) is not None


def test_draft_decoding_keeps_at_least_target_size(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1600, 2400, 3), dtype=np.uint8)).save(p)
    small = load_rgb(p, min_size=224)
    assert min(small.size) >= 224 and small.size[0] < 2400
    assert load_square(p, 224).shape == (224, 224, 3)


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_fit_square_modes(mode: str) -> None:
    img = Image.fromarray(_gradient(100, 50))
    out = fit_square(img, 32, mode)
    assert out.size == (32, 32)
    arr = np.asarray(out)
    if mode == "pad":  # letterbox: top and bottom rows are padding
        assert np.array_equal(arr[0, 0], np.array([124, 116, 104]))
    if mode == "crop":  # centre crop loses the left edge's dark red
        assert arr[:, 0, 0].mean() > 40
    if mode == "squash":
        assert arr[:, 0, 0].mean() < 20
    with pytest.raises(ValueError, match="allowed values"):
        fit_square(img, 32, "stretch")
