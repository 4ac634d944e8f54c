"""Decode any photo a user brings into an RGB image the network can take.

Real folders hold surprises: phone photos rotated by an EXIF tag, iPhone HEIC files, CMYK JPEGs from print workflows,
16-bit PNGs, palette GIF-style PNGs with transparency, PNG or BMP files named `.jpg`, and 20-megapixel
originals. Every stage decodes through `load_rgb`, so training, evaluation and serving see the same
pixels.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import textwrap
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

try:  # HEIC/HEIF, the iPhone's format, needs the pillow-heif plugin; Pillow reads AVIF itself.
    from pillow_heif import register_heif_opener

    register_heif_opener()
    HEIF_SUPPORT = True
except ImportError:  # the service's slim install may lack it: such files then get a clear error
    HEIF_SUPPORT = False

# Netpbm and Targa: the formats of many research data sets (GTSRB's traffic signs are .ppm, the ORL and
# Yale faces .pgm). Read for training and scoring; the web service accepts what cameras and browsers send.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".apng", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif",
                    ".heic", ".heif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga")
HEIF_EXTENSIONS = (".heic", ".heif")
RESIZE_MODES = ("squash", "crop", "pad")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024  # square network input sides accepted (rf_inputResolution, model files)
# Pillow guards against decompression bombs by the pixel count in a file's header: it warns above
# Image.MAX_IMAGE_PIXELS (89 million by default) and refuses above twice that. Phones now take 108-
# and 200-megapixel photos: the warning was noise in every stage's output, and a 200-megapixel photo
# was refused with "could be decompression bomb DOS attack". Here an image is refused above
# MAX_PIXELS, with a reason that says so (the web service has its own, lower dep_maxPixels).
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
TOO_MANY_PIXELS = (f"more than {MAX_PIXELS // 1_000_000} million pixels, the limit for one image "
                   "(a decompression bomb, or a huge scan or panorama: downscale it)")
PAD_COLOR = (124, 116, 104)  # ImageNet mean colour: padding that the network treats as "nothing"
# JPEGs are decoded at a reduced DCT scale that keeps at least this many times the output side.
# libjpeg's 1/8 scale is an 8x8 block average, which aliases fine stripes and dots: decoding straight
# to ~224 px moved 405 of fashionTexture's 557 images' features below cosine 0.999 of a full decode
# (min 0.886), 2x still left 32 below (min 0.93); at 4x every image is >= 0.9995. The final bilinear
# resize (which low-passes properly) does the rest of the reduction.
DRAFT_OVERSAMPLE = 4
# Names how images are decoded; changed whenever some file decodes to other pixels than before
# (another JPEG draft scale; 0..1 floating-point images scaled since 2026-12-02), so that features
# cached from the old pixels (imgclass.features.FeatureCache) are made again, not reused.
DECODE_VERSION = f"draft{DRAFT_OVERSAMPLE}+float01"


# Images that decode to more pixels than this (after JPEG's reduced-scale decoding) are decoded one at
# a time in a process. A 15000x15000 PNG is 700 KB on disk and 1.8 GB while it is decoded and made RGB:
# the thread pools that check, download and hash images (8 threads at stage 0) held several at once
# (6.9 GB measured with 4). Photos below the limit (a 48 MP phone photo is 48 million) keep decoding in
# parallel.
BIG_DECODE_PIXELS = 50_000_000
_big_decode = threading.Lock()


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image; the message names the file and the reason, and
    `reason` is the reason alone (for a list of files that already names each)."""

    def __init__(self, name: str, reason: str | None = None) -> None:
        # One argument too: DataLoader workers and unpickling rebuild an exception from its message.
        super().__init__(name if reason is None else f"{name}: {reason}")
        self.reason = name if reason is None else reason


def _size_of(source: str | Path | bytes) -> int | None:
    if isinstance(source, bytes):
        return len(source)
    try:
        return os.path.getsize(source)
    except OSError:
        return None


def decode_reason(e: BaseException, source: str | Path | bytes, formats: Sequence[str] | None = None) -> str:
    """Pillow's complaint in a user's words. Its own say "cannot identify image file '<the full path
    again>'" for a text file named .jpg, and "image file is truncated (64 bytes not processed)" for a
    JPEG cut in half, which reads as if 64 bytes were missing."""
    size = _size_of(source)
    of_size = "" if size is None else f", {size} bytes"
    if isinstance(e, UnidentifiedImageError):
        if formats is not None:  # it may be an image of a format not tried
            return f"not an image in any of the formats {', '.join(formats)}" + ("" if size is None else f" ({size} bytes)")
        return f"not an image (unrecognised file format{of_size})"
    if isinstance(e, OSError) and str(e).startswith("image file is truncated"):
        return f"truncated: the file ends before its image data does (cut short{of_size})"
    if isinstance(e, OSError) and str(e) == "Truncated File Read":  # Pillow's words for a file cut in its header
        return f"truncated: the file ends inside its header (cut short{of_size})"
    return f"cannot decode as an image ({e})"


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


# 16/32-bit grey images are scaled to 8 bits this many pixels at a time: the temporaries stay a few MB
# however large the image (whole-image float64 arrays cost ~430 MB for a 4000x4000 16-bit PNG).
_DEEP_BLOCK_PIXELS = 1 << 18


def _deep_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit grey ("I;16*", "I", "F") to "L": value / top * 255 + 0.5, clipped to 0..255, where
    top is 65535 for 16-bit files and for "I"/"F" images whose values pass 255, 1 for "F" images
    whose values stay within 1, else 255."""
    w, h = img.size
    step = max(1, _DEEP_BLOCK_PIXELS // max(1, w))

    def blocks():  # rows [y, y + step) as arrays, cut from the image one block at a time
        for y in range(0, h, step):
            yield y, np.asarray(img.crop((0, y, w, min(h, y + step))))

    # 16-bit files use the full 0..65535 range; scale instead of clipping at 255.
    if img.mode.startswith("I;16"):
        top = 65535
    elif w * h == 0:
        top = 255
    else:  # np.max, not getextrema: a NaN in an "F" image keeps top = 255, as it always did
        peak = np.max([b.max() for _, b in blocks()])
        # Floating-point images are most often 0..1 (scientific and HDR tools write them so): read
        # as 0..255 they came out black.
        top = 65535 if peak > 255 else 1.0 if img.mode == "F" and peak <= 1.0 else 255
    out = np.empty((h, w), np.uint8)
    for y, block in blocks():
        if img.mode == "F":
            scaled = np.clip(block.astype(np.float64) / top * 255.0 + 0.5, 0, 255)
        elif top == 65535:
            # Integers: floor(v / 65535 * 255 + 0.5) = floor(v / 257 + 0.5) = (2v + 257) // 514, exactly
            # (v / 257 + 0.5 is never within 1/514 of an integer, so float64 rounding never changed it).
            scaled = np.clip((block.astype(np.int64) * 2 + 257) // 514, 0, 255)
        else:  # top 255: v / 255 * 255 + 0.5 rounds back to v
            scaled = np.clip(block, 0, 255)
        out[y:y + len(block)] = scaled
    return Image.fromarray(out)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _deep_to_l(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV


@functools.lru_cache(maxsize=16)
def openers(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The Pillow openers for `formats`, for Image.open(formats=...), which fails on a name with none
    (MPO: JPEG's opener reads it). Cached: the web service asks for the same list on every upload.
    Openers registered later (a Pillow plugin imported afterwards) would not be seen; pillow-heif
    registers when this module is imported."""
    Image.init()
    return tuple(f for f in formats if f in Image.OPEN)


# EXIF orientation tag value -> the transposition that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says. ImageOps.exif_transpose also writes the EXIF
    anew for the turned image, and real cameras and editors write tags of the wrong type, which Pillow
    then cannot serialise (struct.error, TypeError ...): one such photo would stop a whole stage. The
    pixels need only the orientation tag, so where that rewrite fails the turn is done by hand.
    An image with no turn to make is returned as it is (exif_transpose copies it: a second copy of
    every decoded photo, 48 MB for 12 megapixels, in the memory of every decoding thread)."""
    try:
        if img.getexif().get(0x0112, 1) not in _ORIENTATION:
            return img
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - any failure of the EXIF rewrite; the pixels are fine
        try:
            orientation = img.getexif().get(0x0112)
        except Exception:  # noqa: BLE001 - EXIF unreadable: keep the image as stored
            return img
        method = _ORIENTATION.get(orientation) if isinstance(orientation, int) else None
        return img.transpose(method) if method is not None else img


def load_rgb(source: str | Path | bytes, min_size: int | None = None,
             formats: Sequence[str] | None = None) -> Image.Image:
    """Decode a file (or bytes) to an upright RGB image.

    `min_size`: when given, JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) that still
    leaves both sides >= min_size, which makes multi-megapixel photos several times faster to read
    without changing what the network sees after resizing.
    `formats`: when given, only these Pillow format names (e.g. "JPEG", "PNG") are tried; any other
    file fails as undecodable. The web service uses it so that uploads cannot reach decoders it
    does not need (EPS, for one, runs Ghostscript).
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        # Pillow takes a list or tuple only.
        with Image.open(fp, formats=None if formats is None else tuple(formats)) as img:
            if min_size is not None and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            with _big_decode if img.size[0] * img.size[1] > BIG_DECODE_PIXELS else contextlib.nullcontext():
                img.load()
                return _to_rgb(_upright(img))
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, TOO_MANY_PIXELS) from e
    # EOFError and RuntimeError: what pillow-heif raises for a damaged HEIC.
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, RuntimeError) as e:
        if not HEIF_SUPPORT and Path(name).suffix.lower() in HEIF_EXTENSIONS:
            raise ImageDecodeError(name, "HEIC/HEIF files need the pillow-heif package: "
                                         "pip install -r requirements.txt") from e
        if _is_empty(source):  # a copy or download that wrote nothing: say so, not "cannot identify"
            raise ImageDecodeError(name, "empty file (0 bytes)") from EmptyImageFile()
        raise ImageDecodeError(name, decode_reason(e, source, formats)) from e


class EmptyImageFile(ValueError):
    """A file of 0 bytes where an image was expected."""

    def __str__(self) -> str:
        return "empty file (0 bytes)"


def _is_empty(source: str | Path | bytes) -> bool:
    return _size_of(source) == 0


def check_image(path: str | Path) -> str | None:
    """None when `path` decodes as an image, else the reason. Cheap: JPEGs decode at 1/8 scale."""
    try:
        load_rgb(path, min_size=8)
    except ImageDecodeError as e:
        return e.reason  # (for a decompression bomb not Pillow's words, which call the photo a DOS attack)
    return None


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image as stored, read from its header (nothing decoded; EXIF rotation not
    applied); None if unreadable (gone, not an image, over Pillow's pixel guard)."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, EOFError, RuntimeError, Image.DecompressionBombError):
        return None


def shorter_side(path: str | Path) -> int | None:
    """The shorter side of an image in pixels, read from its header (nothing decoded); None if unreadable."""
    size = header_size(path)
    return None if size is None else min(size)


def check_images(paths: Sequence[str | Path], progress: bool = False) -> list[str | None]:
    """check_image for every path, in threads (PIL releases the GIL while decoding), with an optional
    progress bar: a folder of thousands of phone photos takes a minute to check."""
    from imgclass.cpus import usable_cpus
    from imgclass.progress import progress_bar

    with ThreadPoolExecutor(max_workers=min(8, usable_cpus())) as pool:
        return list(progress_bar(pool.map(check_image, paths), total=len(paths), desc="check images", unit="img",
                                 disable=not progress))


def fit_square(img: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """Resize to size x size: "squash" keeps the whole photo (aspect changes), "crop" keeps the
    centre (aspect kept, borders lost), "pad" keeps everything and the aspect (letterbox)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}: allowed values are {', '.join(RESIZE_MODES)}")
    if mode == "squash":
        return img.resize((size, size), Image.BILINEAR)
    w, h = img.size
    if mode == "crop":
        # Resample only the centre square (as ImageOps.fit does), not the borders that are cut away.
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        return img.resize((size, size), Image.BILINEAR, box=box)
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), PAD_COLOR)
    canvas.paste(img.resize((nw, nh), Image.BILINEAR), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def load_square(source: str | Path | bytes, size: int, mode: str = "squash",
                formats: Sequence[str] | None = None) -> np.ndarray:
    """Decode and resize in one step: an HxWx3 uint8 array of side `size`, the same (cosine >= 0.999
    in the network's features) as a full-size decode would give, but faster for large JPEGs.
    `formats`: as for load_rgb."""
    img = load_rgb(source, min_size=DRAFT_OVERSAMPLE * size, formats=formats)
    return np.array(fit_square(img, size, mode), dtype=np.uint8)


def contact_sheet(items: Sequence[tuple[str | Path, str]], path: str | Path | None = None, columns: int = 5,
                  thumb: int = 160, title: str = "") -> Figure:
    """A grid of thumbnails, each titled (saved as a PNG when `path` is given). An image that no
    longer decodes gets an empty square with its title, not an error: the sheet is for looking.
    `title`: above the grid, what the pictures are (a PNG opened on its own has no terminal beside it)."""
    import matplotlib.pyplot as plt  # here: no backend forced, so a notebook keeps its inline display

    from imgclass.fileio import save_figure
    from imgclass.fonts import fit_fonts

    columns = max(1, min(columns, len(items)))  # a few images are not drawn at a fifth of the width each
    rows = max(1, -(-len(items) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (source, caption) in zip(axes.ravel(), items):
        try:
            ax.imshow(fit_square(load_rgb(source, min_size=thumb), thumb, "pad"))
        except (ImageDecodeError, OSError) as e:  # deleted or damaged since
            ax.imshow(Image.new("RGB", (thumb, thumb), PAD_COLOR))
            caption += f"\n(cannot read: {str(e)[-40:]})"
        ax.set_title(caption, fontsize=8)
    if title:
        # Wrapped to the sheet's width (~36 characters of 10 pt to a 3-inch column): one or two
        # pictures make a sheet narrower than a line of explanation.
        lines = [w for line in title.splitlines() for w in textwrap.wrap(line, width=36 * columns) or [""]]
        fig.suptitle("\n".join(lines), fontsize=10)
    fit_fonts(fig)  # class and file names in any script
    # Until it settles: each pass spaces the rows for the slots the square thumbnails are then shrunk
    # into, which the spacing changes (after one pass, with 2 rows of 5, the captions of the second row
    # rose into the first row's pictures; a few passes leave them the usual padding).
    for _ in range(6):
        before = (fig.subplotpars.hspace, fig.subplotpars.top)
        fig.tight_layout()
        if np.allclose(before, (fig.subplotpars.hspace, fig.subplotpars.top), atol=1e-3):
            break
    if path is not None:
        save_figure(fig, path, dpi=80)
    return fig
