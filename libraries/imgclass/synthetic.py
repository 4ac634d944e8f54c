"""The offline DEMO data set: synthetic, photo-like pictures of upper-body garments in three textures.

Stage 0 can download a data set from a list of URLs, but that needs a network; this generator lets
the pipeline run end to end without one (stage 0 uses it for datasetName = "fashionTextureDemo").
Every image shows a garment (t-shirt, sweater, blouse, vest...) printed with one of three textures
(`CLASSES`) in a cluttered, unevenly lit scene, then blurred, noised and JPEG-compressed like a
phone photo.

The classifier must learn the *texture*: image size, background, garment shape, pose, lighting and
the plain clothes around the garment are drawn from the same distributions for every class, from a
random stream that never sees the class.

Determinism: each image depends only on (seed, class, index), through its own numpy Generator, so
  - the same seed gives byte-identical files (on the same numpy / Pillow / libjpeg versions), and
  - generating 10 per class gives exactly the first 10 of the 100-per-class data set.

These images are SYNTHETIC. Accuracy on them shows the pipeline works; it says nothing about photos.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math
import operator
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from imgclass.fileio import write_bytes
from imgclass.progress import progress_bar

CLASSES: tuple[str, ...] = ("dotted", "leopard", "striped")
README_FILE = "README.txt"  # written after every image: a folder without it is an unfinished generation

# Mixed into every image's SeedSequence so that these streams never coincide with other uses of the
# same user seed (the train/test split, SVM cross-validation...). Changing it changes every image.
_STREAM_TAG = 0x5EED_C1A5
_SUPERSAMPLE = 2  # garment and clothes masks are drawn at 2x and box-reduced: anti-aliased edges
_TABLE = 64  # per-cell random tables (dot jitter, rosette shape) repeat every 64 cells: never visible

WIDTH_RANGE = (280, 420)  # inclusive; portrait-ish sizes, drawn independently of the class
HEIGHT_RANGE = (320, 480)
JPEG_QUALITY_RANGE = (60, 95)  # inclusive

# A texture maps garment coordinates (u, v, in pixels) of N pixels to their (N, 3) colours; the third
# argument gives each pixel's flat index into a half-size (_half) field, for smooth per-pixel noise.
Texture = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def generate_demo_dataset(
    out_dir: str | Path, images_per_class: int = 100, seed: int = 0, progress: bool = True
) -> dict[str, int]:
    """Write `out_dir/<class>/<class>_<NNNN>.jpg` for every class in CLASSES, plus `out_dir/README.txt`.

    Returns {class: number of images written for it}. Every file is written atomically (temp file,
    then rename), so an interrupted run never leaves a truncated JPEG. A file whose bytes are already
    right is left untouched (same seed => same bytes), so rerunning keeps modification times.
    Images with index >= images_per_class from an earlier, larger run are NOT deleted.
    """
    images_per_class = _check_int("images_per_class", images_per_class, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    out_dir = Path(out_dir)

    counts = {c: 0 for c in CLASSES}
    jobs = [(ci, i) for ci in range(len(CLASSES)) for i in range(images_per_class)]
    for ci, i in progress_bar(jobs, desc="synthetic demo images", unit="img", disable=not progress):
        name = CLASSES[ci]
        _write_if_changed(out_dir / name / f"{name}_{i:04d}.jpg", _render_jpeg(ci, i, seed))
        counts[name] += 1
    _write_if_changed(out_dir / README_FILE, _readme(images_per_class, seed).encode("utf-8"))
    return counts


def generated_per_class(out_dir: str | Path) -> int | None:
    """The images per class a finished generation in `out_dir` was asked for (its README.txt says),
    or None where there is no such README (none yet, or not a demo folder)."""
    readme = Path(out_dir) / README_FILE
    try:
        text = readme.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None
    m = re.search(r"seed=\d+,\s+(\d+) images per class", text)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int) -> int:
    # bool is an int subclass, but `seed=True` is surely a mistake; numpy integers are fine.
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        value = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_bytes(path, data)


def _readme(images_per_class: int, seed: int) -> str:
    classes = ", ".join(CLASSES)
    return f"""\
SYNTHETIC DEMO IMAGES -- THESE ARE NOT PHOTOGRAPHS
===================================================

Every image in this folder was GENERATED by imgclass.synthetic (generate_demo_dataset, seed={seed},
{images_per_class} images per class). They are drawn garments with a polka-dot, leopard or striped
texture, placed in a drawn scene and degraded like a phone photo (blur, noise, JPEG artefacts).

Classes (one folder each): {classes}

They exist so that the whole pipeline can run offline, end to end, without downloading anything.
Accuracy measured on them shows that the pipeline works; it says nothing about real photos.
Regenerating with the same seed gives byte-identical files.

To use real photos instead
--------------------------
1. Put them in DATA_DIR/images/<datasetName>/<class>/ -- one folder per class, for example
   DATA_DIR/images/myPhotos/dotted/img001.jpg, DATA_DIR/images/myPhotos/striped/img002.jpg, ...
   (DATA_DIR is set in PARAMETERS.py; the environment variable IMGCLASS_DATA_DIR overrides it.)
2. Set datasetName = "<datasetName>" in PARAMETERS.py (e.g. datasetName = "myPhotos"),
   or pass --set datasetName=myPhotos to each stage script.
3. Run the stage scripts in scripts/ again, from stage 1 on.
"""


# ------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------


def _render_jpeg(class_index: int, index: int, seed: int) -> bytes:
    """The JPEG bytes of image `index` of class CLASSES[class_index]; depends on nothing else."""
    root = np.random.SeedSequence([_STREAM_TAG, seed, class_index, index])
    # Two independent streams: `scene` never sees the class, so size, background, garment shape,
    # pose, lighting, other clothes and camera effects have the same distribution in every class;
    # `tex` draws only the texture. However many numbers a texture consumes, the scene is unaffected.
    scene_ss, tex_ss = root.spawn(2)
    rng = np.random.default_rng(scene_ss)
    tex_rng = np.random.default_rng(tex_ss)

    W = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    H = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    scene = _background(rng, H, W)
    g = _garment_geometry(rng, H, W)

    if rng.random() < 0.4:  # plain trousers or skirt below the garment
        _plain_piece(rng, scene, _bottoms_polys(rng, g), g)
    if g["person"]:
        _draw_person(rng, scene, g)
    elif rng.random() < 0.4:
        _draw_hanger(rng, scene, g)

    masks = _garment_masks(g, H, W)
    _cast_shadow(rng, scene, masks["all"], g["sw"])
    texture = _TEXTURES[CLASSES[class_index]](tex_rng, g["sw"], H, W)
    _paint_garment(rng, scene, g, masks, texture)

    if rng.random() < 0.2:  # a plain open jacket partly over the garment
        jacket = _jacket_polys(rng, g)
        alpha = _polys_alpha(jacket, g, H, W)
        _cast_shadow(rng, scene, alpha, g["sw"] * 0.5)
        _plain_piece(rng, scene, jacket, g, alpha=alpha)

    return _camera(rng, scene)


# ------------------------------------------------------------------------------------------------
# Colours and noise
# ------------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _fabric_colour(rng: np.random.Generator) -> np.ndarray:
    r = rng.random()
    if r < 0.15:  # white / cream
        return _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.12), rng.uniform(0.86, 0.98))
    if r < 0.27:  # black / charcoal
        return _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.06, 0.22))
    if r < 0.37:  # navy
        return _hsv(rng.uniform(0.58, 0.67), rng.uniform(0.5, 0.85), rng.uniform(0.2, 0.45))
    return _hsv(rng.random(), rng.uniform(0.3, 0.95), rng.uniform(0.3, 0.95))


def _contrasting(rng: np.random.Generator, other: np.ndarray, min_diff: float = 0.28) -> np.ndarray:
    # A print is only a print if its colours differ; try a few, else take black or white.
    for _ in range(12):
        c = _fabric_colour(rng)
        if abs(_luma(c) - _luma(other)) >= min_diff:
            return c
    return np.array([0.95, 0.94, 0.92] if _luma(other) < 0.5 else [0.08, 0.08, 0.1], np.float32)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.15:
        return _hsv(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.9))
    return _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.95))


def _smooth_noise(rng: np.random.Generator, H: int, W: int, gy: float, gx: float) -> np.ndarray:
    """(H, W) smooth random field, roughly zero mean and unit scale, with ~gy x gx blobs."""
    gy, gx = max(2, int(round(gy)) + 1), max(2, int(round(gx)) + 1)
    grid = rng.standard_normal((gy, gx), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((W, H), Image.Resampling.BICUBIC))


def _half(H: int, W: int) -> tuple[int, int]:
    """The size of the half-resolution grid on which smooth fields are computed."""
    return (H + 1) // 2, (W + 1) // 2


def _half_index(idx: np.ndarray, W: int) -> np.ndarray:
    """Flat full-size pixel indices -> flat indices of the same spots in a half-size field (nearest:
    the fields are smooth, so the 2x2 steps are invisible)."""
    return (idx // W // 2) * ((W + 1) // 2) + (idx % W) // 2


@functools.lru_cache(maxsize=8)
def _grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates, (H, W) float32 each; cached, so never written to."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


def _grain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance pixel noise. The sum of two random bytes (a triangular density) looks
    the same as Gaussian noise once blurred and JPEG-compressed, at a tenth of the cost."""
    b = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
    return (b[0].astype(np.float32) + b[1] - 255.0) * np.float32(1 / 104.5)


def _soften(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur of a PIL image. Wide blurs are done at reduced size, which looks the same and is
    several times faster (stage 0 must stay quick)."""
    if radius < 2.0:
        return img.filter(ImageFilter.GaussianBlur(radius))
    f = int(min(8, max(2, radius // 1.5)))
    small = img.reduce(f).filter(ImageFilter.GaussianBlur(radius / f))
    return small.resize(img.size, Image.Resampling.BILINEAR)


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float field in [0, 1] (through an 8-bit image: plenty for masks)."""
    img = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(_soften(img, radius), dtype=np.float32) / 255.0


def _blend(scene: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> None:
    """scene = scene * (1 - alpha) + colour * alpha, in place, only where alpha > 0."""
    rows = np.flatnonzero(alpha.any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero(alpha[rows[0]:rows[-1] + 1].any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    if colour.ndim == 3:
        colour = colour[box]
    scene[box] += (colour - scene[box]) * alpha[box][..., None]


# ------------------------------------------------------------------------------------------------
# Background
# ------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """A wall, backdrop or room: colour gradient, uneven light, an edge, blurred clutter.

    Everything here is smooth or out of focus, so it is drawn at half size and scaled up: the same
    look at a quarter of the cost."""
    h, w = _half(H, W)
    ys, xs = _grid(h, w)
    c1 = _muted_colour(rng)
    c2 = np.clip(c1 * rng.uniform(0.6, 1.25) + rng.normal(0, 0.06, 3), 0, 1).astype(np.float32)
    if rng.random() < 0.3:
        c2 = _muted_colour(rng)
    ang = rng.uniform(0, 2 * np.pi)
    t = xs * math.cos(ang) + ys * math.sin(ang)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c1 + (c2 - c1) * t[..., None]

    if rng.random() < 0.35:  # a wall/floor or table edge: a second surface across the bottom
        y0 = rng.uniform(0.55, 0.95) * h + (xs - w / 2) * rng.uniform(-0.15, 0.15)
        edge = np.clip((ys - y0) / rng.uniform(0.5, 3.0) + 0.5, 0, 1)
        _blend(bg, _muted_colour(rng), edge)

    # Lighting: a soft spot light falling off over the frame, plus blotchy low-frequency variation.
    lx, ly = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.3, 0.8) * h
    d2 = ((xs - lx) ** 2 + (ys - ly) ** 2) / float(w * w + h * h)
    light = 1.15 - rng.uniform(0.2, 0.7) * d2
    light += rng.uniform(0.02, 0.08) * _smooth_noise(rng, h, w, rng.uniform(2, 6), rng.uniform(2, 6))
    bg *= light[..., None]

    _clutter(rng, bg, h, w)
    small = Image.fromarray(np.clip(bg * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(small.resize((W, H), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _clutter(rng: np.random.Generator, bg: np.ndarray, H: int, W: int) -> None:
    """A few out-of-focus shapes and lines: furniture, props, door frames, cables."""
    n = int(rng.integers(0, 7))
    if n == 0:
        return
    layer = Image.new("RGB", (W, H))
    alpha = Image.new("L", (W, H), 0)
    dl, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(n):
        col = tuple(int(v * 255) for v in _muted_colour(rng))
        op = int(rng.uniform(0.3, 0.9) * 255)
        kind = rng.integers(0, 4)
        x0, y0 = rng.uniform(-0.2, 1.0) * W, rng.uniform(-0.2, 1.0) * H
        x1, y1 = x0 + rng.uniform(0.05, 0.6) * W, y0 + rng.uniform(0.05, 0.6) * H
        if kind == 0:
            for d, v in ((dl, col), (da, op)):
                d.ellipse((x0, y0, x1, y1), fill=v)
        elif kind == 1:
            for d, v in ((dl, col), (da, op)):
                d.rectangle((x0, y0, x1, y1), fill=v)
        elif kind == 2:
            width = int(rng.integers(1, 6))
            pts = [(x0, y0), (x1 + rng.normal(0, W * 0.3), y1 + rng.normal(0, H * 0.3))]
            for d, v in ((dl, col), (da, op)):
                d.line(pts, fill=v, width=width)
        else:
            n_pts = int(rng.integers(3, 6))
            pts = [(x0 + rng.uniform(0, 0.5) * W, y0 + rng.uniform(0, 0.5) * H) for _ in range(n_pts)]
            for d, v in ((dl, col), (da, op)):
                d.polygon(pts, fill=v)
    radius = rng.uniform(0.5, 4.5)  # depth of field: the background is rarely sharp (half-size pixels)
    lay = np.asarray(_soften(layer, radius), dtype=np.float32) / 255.0
    a = np.asarray(_soften(alpha, radius), dtype=np.float32) / 255.0
    # Colour was drawn without alpha, so blurring it mixes in black at shape edges; divide it out.
    amask = np.asarray(_soften(alpha.point(lambda v: 255 if v else 0), radius), dtype=np.float32) / 255.0
    lay = lay / np.maximum(amask, 1e-3)[..., None]
    _blend(bg, np.clip(lay, 0, 1), a)


# ------------------------------------------------------------------------------------------------
# Garment geometry (in units of the shoulder width `sw`, origin at the neck, y pointing down)
# ------------------------------------------------------------------------------------------------


def _garment_geometry(rng: np.random.Generator, H: int, W: int) -> dict:
    kind = ["tshirt", "sweater", "blouse", "vest"][int(rng.choice(4, p=[0.35, 0.25, 0.2, 0.2]))]
    L = rng.uniform(1.05, 1.45)  # body length / shoulder width
    sw = rng.uniform(0.42, 0.62) * W
    sw = min(sw, rng.uniform(0.62, 0.85) * H / L)
    cx = W / 2 + rng.uniform(-0.08, 0.08) * W
    cy = rng.uniform(0.1, 0.26) * H
    angle = math.radians(rng.uniform(-10, 10))

    nh = rng.uniform(0.13, 0.21)  # half-width of the neck opening
    sy = rng.uniform(0.04, 0.12)  # shoulder slope
    if kind == "vest":
        shx, ax, ay = rng.uniform(0.32, 0.42), rng.uniform(0.44, 0.5), rng.uniform(0.42, 0.55)
    else:
        shx, ax, ay = 0.5, rng.uniform(0.44, 0.49), rng.uniform(0.34, 0.48)
    wx = rng.uniform(0.4, 0.5)
    hx = rng.uniform(0.5, 0.62) if kind == "blouse" else rng.uniform(0.42, 0.54)
    curve = rng.uniform(-0.03, 0.06)
    left = [(-nh, 0.0), (-shx, sy)]
    if kind == "vest":  # a concave armhole instead of a sleeve
        left.append((-shx + rng.uniform(0.0, 0.04), sy + (ay - sy) * 0.6))
    left += [(-ax, ay), (-wx, L * 0.6), (-hx, L)]
    hem = [(x, L + curve * (1 - (x / hx) ** 2)) for x in np.linspace(-hx, hx, 7)[1:-1]]
    body = left + hem + [(-x, y) for x, y in reversed(left)]

    neck = ["crew", "crew", "scoop", "v", "collar"][int(rng.integers(0, 5))]
    if kind in ("sweater", "vest") and neck == "collar":  # a collar would stick out past a vest's straps
        neck = "crew"
    depth = {"crew": rng.uniform(0.06, 0.12), "scoop": rng.uniform(0.14, 0.24)}.get(neck, rng.uniform(0.18, 0.32))

    sleeves = []
    if kind != "vest":
        long_ = (
            kind == "sweater"
            or (kind == "blouse" and rng.random() < 0.6)
            or (kind == "tshirt" and rng.random() < 0.15)
        )
        theta = math.radians(rng.uniform(12, 40) if long_ else rng.uniform(25, 55))
        length = rng.uniform(0.8, 1.1) if long_ else rng.uniform(0.22, 0.38)
        cuff = rng.uniform(0.12, 0.19) if long_ else rng.uniform(0.2, 0.3)
        for side in (-1, 1):
            S, A = np.array([side * shx, sy]), np.array([side * ax, ay])
            d = np.array([side * math.sin(theta), math.cos(theta)])  # down the arm
            perp = np.array([-side * math.cos(theta), math.sin(theta)])  # across it, toward the body
            E1 = S + d * length
            E2 = E1 + perp * cuff
            sleeves.append({"poly": [tuple(S), tuple(E1), tuple(E2), tuple(A)], "S": S, "d": d, "perp": perp,
                            "E1": E1, "E2": E2, "long": long_})

    return {"kind": kind, "L": L, "sw": sw, "cx": cx, "cy": cy, "angle": angle, "nh": nh, "sy": sy,
            "shx": shx, "ax": ax, "ay": ay, "hx": hx, "body": body, "neck": neck, "depth": depth,
            "sleeves": sleeves, "person": bool(rng.random() < 0.35),
            "buttons": kind == "blouse" and rng.random() < 0.5, "H": H, "W": W}


def _to_px(g: dict, pts, scale: float = 1.0) -> list[tuple[float, float]]:
    """Garment units -> pixel coordinates (rotated about the neck point), times `scale`."""
    c, s, sw = math.cos(g["angle"]), math.sin(g["angle"]), g["sw"]
    out = []
    for x, y in pts:
        X, Y = x * sw, y * sw
        out.append(((g["cx"] + c * X - s * Y) * scale, (g["cy"] + s * X + c * Y) * scale))
    return out


def _local(g: dict, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices -> garment coordinates in pixels (u across, v down the garment)."""
    W = g["W"]
    px = (idx % W).astype(np.float32) + 0.5 - g["cx"]
    py = (idx // W).astype(np.float32) + 0.5 - g["cy"]
    c, s = math.cos(g["angle"]), math.sin(g["angle"])
    return c * px + s * py, -s * px + c * py


def _new_mask(H: int, W: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (W * _SUPERSAMPLE, H * _SUPERSAMPLE), 0)
    return img, ImageDraw.Draw(img)


def _mask_alpha(img: Image.Image) -> np.ndarray:
    return np.asarray(img.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0


def _neck_cut(
    draw: ImageDraw.ImageDraw, g: dict, depth: float, widen: float = 0.0, fill: int = 0, top: float = -0.2
) -> None:
    """Fill the neck opening (round, or V for deep non-round necks), from `depth` below the neck
    points up to `top` (above the garment)."""
    nh = g["nh"] + widen
    if g["neck"] in ("crew", "scoop") or depth < 0.1:
        pts = [(nh * math.cos(t), depth * math.sin(t)) for t in np.linspace(0, np.pi, 17)]
        pts += [(-nh, top), (nh, top)]
    else:
        pts = [(-nh, top), (-nh, 0.0), (0.0, depth), (nh, 0.0), (nh, top)]
    draw.polygon(_to_px(g, pts, _SUPERSAMPLE), fill=fill)


def _garment_masks(g: dict, H: int, W: int) -> dict[str, np.ndarray]:
    body_img, body = _new_mask(H, W)
    body.polygon(_to_px(g, g["body"], _SUPERSAMPLE), fill=255)
    _neck_cut(body, g, g["depth"])
    inner_img, inner = _new_mask(H, W)
    if not g["person"]:
        # Through the neck opening one sees the inside of the back panel, whose neckline is higher.
        _neck_cut(inner, g, g["depth"], fill=255)
        # Wider and taller than the opening, so that no sliver of its rotated outline survives.
        _neck_cut(inner, g, g["depth"] * 0.3 + 0.02, widen=0.01, top=-0.3)
        body.bitmap((0, 0), inner_img, fill=255)
    if g["neck"] == "collar":
        nh, dp = g["nh"], g["depth"]
        for side in (-1, 1):
            body.polygon(_to_px(g, [(side * (nh + 0.02), -0.03), (side * 0.015, dp * 0.95),
                                    (side * (nh + 0.1), 0.17)], _SUPERSAMPLE), fill=255)
    sleeves = []
    for sl in g["sleeves"]:
        img, d = _new_mask(H, W)
        d.polygon(_to_px(g, sl["poly"], _SUPERSAMPLE), fill=255)
        sleeves.append(_mask_alpha(img))
    b = _mask_alpha(body_img)
    allm = b.copy()
    for s in sleeves:
        np.maximum(allm, s, out=allm)
    return {"body": b, "inner": _mask_alpha(inner_img), "sleeves": sleeves, "all": allm}


def _polys_alpha(polys: list[list[tuple[float, float]]], g: dict, H: int, W: int) -> np.ndarray:
    img, d = _new_mask(H, W)
    for p in polys:
        d.polygon(_to_px(g, p, _SUPERSAMPLE), fill=255)
    return _mask_alpha(img)


# ------------------------------------------------------------------------------------------------
# Shading and painting
# ------------------------------------------------------------------------------------------------


def _fabric_shading(rng: np.random.Generator, g: dict, alpha: np.ndarray) -> np.ndarray:
    """Multiplicative light over a piece of clothing: gradient, folds, darker edges.

    All of it is smooth, so it is computed at half size and scaled up once."""
    H, W = alpha.shape
    h, w = _half(H, W)
    ys, xs = _grid(h, w)
    ang = rng.uniform(0, 2 * np.pi)
    grad = (xs - w / 2) * math.cos(ang) + (ys - h / 2) * math.sin(ang)
    shade = 1.0 + rng.uniform(0.1, 0.35) * grad / max(w, h)
    # Folds run mostly down the garment: a noise grid with more columns than rows.
    amp = rng.uniform(0.04, 0.12)
    shade += amp * _smooth_noise(rng, h, w, rng.uniform(2, 5), W / g["sw"] * rng.uniform(4, 9))
    shade += rng.uniform(0.02, 0.06) * _smooth_noise(rng, h, w, 4, 4)
    # Cloth curves away from the camera at its edges: darken a band inside the outline.
    small = Image.fromarray(np.clip(alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)).reduce(2)
    edge = np.asarray(_soften(small, max(1.0, g["sw"] * rng.uniform(0.015, 0.035))), dtype=np.float32) / 255.0
    shade *= 0.72 + 0.28 * np.sqrt(np.clip(edge * 2.0, 0, 1))
    shade = np.clip(shade, 0.25, 1.4)
    return np.array(Image.fromarray(shade).resize((W, H), Image.Resampling.BILINEAR))  # writable copy


def _paint_garment(rng: np.random.Generator, scene: np.ndarray, g: dict, masks: dict, texture: Texture) -> None:
    H, W = scene.shape[:2]
    shade = _fabric_shading(rng, g, masks["all"])
    shade *= 1.0 - masks["inner"] * rng.uniform(0.35, 0.55)  # the inside of the back is in shadow
    shade *= _seams(rng, g, H, W)

    # Fabric is not flat: a smooth displacement makes straight stripes and dot rows wobble.
    wob = rng.uniform(0.5, 3.5)
    h, w = _half(H, W)
    gy, gx = H / g["sw"] * 3, W / g["sw"] * 3
    du = _smooth_noise(rng, h, w, gy, gx).ravel() * wob  # half size, read through _half_index
    dv = _smooth_noise(rng, h, w, gy, gx).ravel() * wob

    colour = np.zeros((H * W, 3), np.float32)
    idx = np.flatnonzero(masks["body"] > 0)
    u, v = _local(g, idx)
    hidx = _half_index(idx, W)
    colour[idx] = texture(u + du[hidx], v + dv[hidx], hidx)
    for sl, m in zip(g["sleeves"], masks["sleeves"]):
        # Sleeves are cut separately: their print follows the arm, not the body, and is offset.
        sidx = np.flatnonzero(m > 0)
        u, v = _local(g, sidx)
        u, v = u - float(sl["S"][0] * g["sw"]), v - float(sl["S"][1] * g["sw"])
        (pu, pv), (du_, dv_) = (float(x) for x in sl["perp"]), (float(x) for x in sl["d"])
        su = u * pu + v * pv + rng.uniform(0, 100)
        sv = u * du_ + v * dv_ + rng.uniform(0, 100)
        hidx = _half_index(sidx, W)
        sc = texture(su + du[hidx], sv + dv[hidx], hidx)
        # Where the body is absent the sleeve's own colour must be used unweighted: the edge
        # pixel's coverage is applied once, by the final blend with masks["all"].
        a = np.where(masks["body"].ravel()[sidx] > 0, m.ravel()[sidx], 1.0)[:, None]
        colour[sidx] = colour[sidx] * (1 - a) + sc * a

    colour = colour.reshape(H, W, 3) * shade[..., None]
    if g["buttons"]:
        colour = _buttons(rng, g, colour)
    _blend(scene, colour, masks["all"])


def _seams(rng: np.random.Generator, g: dict, H: int, W: int) -> np.ndarray:
    """Stitch lines (shoulders, armholes, hem, cuffs) as a slightly darker multiplicative layer."""
    img, d = _new_mask(H, W)  # drawn at 2x and reduced: soft, anti-aliased lines
    width = max(2, int(round(g["sw"] * 0.008 * _SUPERSAMPLE)))
    nh, shx, sy, ax, ay, L, hx = g["nh"], g["shx"], g["sy"], g["ax"], g["ay"], g["L"], g["hx"]

    def line(pts) -> None:
        d.line(_to_px(g, pts, _SUPERSAMPLE), fill=255, width=width)

    for side in (-1, 1):
        line([(side * nh, 0.0), (side * shx, sy)])
        if g["sleeves"]:
            line([(side * shx, sy), (side * ax, ay)])
    band = rng.uniform(0.03, 0.08)
    line([(-hx, L - band), (hx, L - band)])
    for sl in g["sleeves"]:
        k = 0.12 if sl["long"] else 0.05
        line([tuple(sl["E1"] - sl["d"] * k), tuple(sl["E2"] - sl["d"] * k)])
    return 1.0 - _mask_alpha(img) * rng.uniform(0.12, 0.3)


def _buttons(rng: np.random.Generator, g: dict, colour: np.ndarray) -> np.ndarray:
    img = Image.fromarray(np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    col = tuple(int(v * 255) for v in _fabric_colour(rng))
    r = max(1.5, g["sw"] * 0.014)
    ys = np.linspace(g["depth"] + 0.08, g["L"] - 0.12, int(rng.integers(4, 7)))
    for x, y in _to_px(g, [(0.0, t) for t in ys]):
        d.ellipse((x - r, y - r, x + r, y + r), fill=col)
    return np.asarray(img, dtype=np.float32) / 255.0


def _cast_shadow(rng: np.random.Generator, scene: np.ndarray, alpha: np.ndarray, size: float) -> None:
    """Darken the scene under a soft, slightly offset copy of `alpha` (cloth lies on or near it)."""
    H, W = alpha.shape
    dx, dy = (int(round(v)) for v in rng.uniform(-0.04, 0.04, 2) * size)
    shifted = np.zeros_like(alpha)  # a shift, not np.roll: nothing may wrap round to the other edge
    shifted[max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        alpha[max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    s = _blur(shifted, max(1.5, size * rng.uniform(0.03, 0.08)))
    scene *= (1.0 - rng.uniform(0.15, 0.45) * s)[..., None]


def _plain_piece(
    rng: np.random.Generator, scene: np.ndarray, polys, g: dict, alpha: np.ndarray | None = None
) -> None:
    """Plain-coloured clothing (trousers, skirt, jacket): same lighting model, no print."""
    H, W = scene.shape[:2]
    if alpha is None:
        alpha = _polys_alpha(polys, g, H, W)
    col = _fabric_colour(rng)
    shade = _fabric_shading(rng, g, alpha)
    _blend(scene, col * shade[..., None], alpha)


def _bottoms_polys(rng: np.random.Generator, g: dict) -> list[list[tuple[float, float]]]:
    L, hx = g["L"], g["hx"]
    top, bottom = L - rng.uniform(0.1, 0.25), L + 1.5  # past the bottom of the frame
    w = min(hx, 0.5) * rng.uniform(0.85, 1.0)
    if rng.random() < 0.5:  # trousers: two legs
        gap = rng.uniform(0.01, 0.05)
        knee = rng.uniform(0.0, 0.08)
        return [[(-w, top), (w, top), (w + knee, bottom), (gap, bottom), (0.0, top + 0.35), (-gap, bottom),
                 (-w - knee, bottom)]]
    flare = rng.uniform(0.05, 0.35)  # skirt
    return [[(-w, top), (w, top), (w + flare, bottom), (-w - flare, bottom)]]


def _jacket_polys(rng: np.random.Generator, g: dict) -> list[list[tuple[float, float]]]:
    L, nh, sy = g["L"], g["nh"], g["sy"]
    open_ = rng.uniform(0.18, 0.32)  # half-width of the garment left visible: the print must stay clear
    out = rng.uniform(0.52, 0.6)
    bottom = L + rng.uniform(-0.05, 0.2)
    theta = math.radians(rng.uniform(8, 25))
    polys = []
    for side in (-1, 1):
        polys.append([(side * (nh + 0.02), -0.03), (side * out, sy - 0.02), (side * (out + 0.02), bottom),
                      (side * open_, bottom), (side * (open_ * 0.8), 0.45), (side * (nh * 0.6), 0.1)])
        S = np.array([side * out, sy - 0.02])
        d = np.array([side * math.sin(theta), math.cos(theta)])
        perp = np.array([-side * math.cos(theta), math.sin(theta)])
        E1 = S + d * rng.uniform(0.9, 1.15)
        polys.append([tuple(S), tuple(E1), tuple(E1 + perp * 0.2), (side * (out - 0.06), 0.5)])
    return polys


def _draw_person(rng: np.random.Generator, scene: np.ndarray, g: dict) -> None:
    """A wearer (or mannequin) behind the garment: neck, head (often cropped) and arms."""
    H, W = scene.shape[:2]
    if rng.random() < 0.7:
        skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    else:  # mannequin
        skin = _hsv(rng.random(), rng.uniform(0.0, 0.15), rng.choice([0.15, 0.6, 0.92]))
    nw, hw, hh = rng.uniform(0.075, 0.1), rng.uniform(0.15, 0.19), rng.uniform(0.21, 0.25)
    polys = [[(-nw * 1.15, 0.1), (-nw, -0.2), (nw, -0.2), (nw * 1.15, 0.1)]]
    polys.append([(hw * math.cos(t), -0.18 - hh + hh * math.sin(t)) for t in np.linspace(0, 2 * np.pi, 32)])
    for sl in g["sleeves"]:
        # Arms hang closer to vertical than the sleeve's axis; they start inside the sleeve.
        d = sl["d"] + np.array([0.0, 1.0])
        d /= np.linalg.norm(d)
        w = np.linalg.norm(sl["E2"] - sl["E1"]) * 0.6
        mid = (sl["E1"] + sl["E2"]) / 2 - sl["d"] * 0.08
        across = np.array([d[1], -d[0]]) * w / 2
        end = (g["L"] + 0.15 - mid[1]) / d[1]
        if end > 0.1:
            polys.append([tuple(mid - across), tuple(mid + across), tuple(mid + across * 0.8 + d * end),
                          tuple(mid - across * 0.8 + d * end)])
    if not g["sleeves"]:
        for side in (-1, 1):
            S = np.array([side * g["shx"], g["sy"]])
            polys.append([tuple(S), (side * (g["shx"] + 0.14), g["sy"] + 0.05),
                          (side * (g["ax"] + 0.12), g["L"]), (side * (g["ax"] - 0.02), g["L"])])
    alpha = _polys_alpha(polys, g, H, W)
    shade = _fabric_shading(rng, g, alpha)
    _blend(scene, skin * shade[..., None], alpha)


def _draw_hanger(rng: np.random.Generator, scene: np.ndarray, g: dict) -> None:
    H, W = scene.shape[:2]
    img = Image.new("L", (W * _SUPERSAMPLE, H * _SUPERSAMPLE), 0)
    d = ImageDraw.Draw(img)
    width = max(2, int(g["sw"] * 0.02 * _SUPERSAMPLE))
    pts = _to_px(g, [(0.0, 0.02), (0.0, -0.1)], _SUPERSAMPLE)
    d.line(pts, fill=255, width=width)
    (x, y) = pts[1]
    r = g["sw"] * 0.05 * _SUPERSAMPLE
    d.arc((x, y - r, x + 2 * r, y + r), start=180, end=30, fill=255, width=width)  # the hook
    alpha = np.asarray(img.reduce(_SUPERSAMPLE), dtype=np.float32) / 255.0
    col = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.6), rng.uniform(0.3, 0.85))
    _blend(scene, col, alpha)


# ------------------------------------------------------------------------------------------------
# Textures: each returns a function (u, v, flat pixel idx) -> colours, u and v in pixels
# ------------------------------------------------------------------------------------------------


def _cell_tables(rng: np.random.Generator, n: int) -> np.ndarray:
    """n per-cell random tables in [0, 1), each flat (_TABLE * _TABLE,): indexed by `_nearest_cell`."""
    return rng.random((n, _TABLE * _TABLE), dtype=np.float32)


def _nearest_cell(
    u: np.ndarray, v: np.ndarray, cell: float, jx: np.ndarray, jy: np.ndarray, radius: np.ndarray,
    hexa: bool = False, reach: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cellular (Worley) noise: one feature point per cell of a `cell`-pixel grid, jittered by
    (jx, jy) cells, with its own `radius` (pixels). For every (u, v): the flat table index of the
    feature point nearest relative to its radius, the offset (du, dv) from it, and that distance over
    the radius. `reach` = 0 looks only in the point's own cell (enough when features stay inside it);
    `hexa` shifts odd rows by half a cell (a hexagonal dot layout)."""
    n = (2 * reach + 1) ** 2
    DU = np.empty((n, u.size), np.float32)
    DV = np.empty((n, u.size), np.float32)
    D = np.empty((n, u.size), np.float32)
    FI = np.empty((n, u.size), np.int32)
    inv_r2 = 1.0 / (radius * radius)
    row0 = np.floor(v / cell).astype(np.int32)
    k = 0
    for dy in range(-reach, reach + 1):
        row = row0 + dy
        off = (0.5 * (row & 1)).astype(np.float32) if hexa else np.float32(0.0)
        col0 = np.floor(u / cell - off).astype(np.int32)
        rbase = (row % _TABLE) * _TABLE
        rowf = row.astype(np.float32) + np.float32(0.5)
        for dx in range(-reach, reach + 1):
            col = col0 + dx
            fi = rbase + col % _TABLE
            DU[k] = u - (col.astype(np.float32) + (off + np.float32(0.5)) + jx.take(fi)) * cell
            DV[k] = v - (rowf + jy.take(fi)) * cell
            D[k] = (DU[k] * DU[k] + DV[k] * DV[k]) * inv_r2.take(fi)
            FI[k] = fi
            k += 1
    if n == 1:
        return FI[0], DU[0], DV[0], np.sqrt(D[0])
    best = np.argmin(D, axis=0)
    cols = np.arange(u.size)
    return FI[best, cols], DU[best, cols], DV[best, cols], np.sqrt(D[best, cols])


def _dotted(rng: np.random.Generator, sw: float, H: int, W: int) -> Texture:
    """Polka dots: a square or hexagonal grid, mostly regular, sometimes scattered; 1-3 dot colours."""
    sp = max(9.0, sw * rng.uniform(0.06, 0.17))
    scattered = rng.random() < 0.25
    jit = rng.uniform(0.3, 0.5) if scattered else rng.uniform(0.0, 0.06)
    hexa = (not scattered) and rng.random() < 0.5
    r = sp * (rng.uniform(0.15, 0.28) if scattered else rng.uniform(0.16, 0.35))
    rvar = rng.uniform(0.15, 0.45) if scattered else rng.uniform(0.0, 0.1)
    base = _fabric_colour(rng)
    palette = [_contrasting(rng, base)]
    if rng.random() < 0.3:
        palette += [_contrasting(rng, base) for _ in range(int(rng.integers(1, 3)))]
    palette = np.stack(palette)
    tj = _cell_tables(rng, 4)
    jx, jy = (tj[0] * 2 - 1) * jit, (tj[1] * 2 - 1) * jit
    rad = r * (1 + rvar * (tj[2] * 2 - 1))
    cidx = (tj[3] * len(palette)).astype(np.int64).clip(0, len(palette) - 1)
    rot = rng.uniform(-0.15, 0.15) + (math.pi / 4 if rng.random() < 0.15 else 0.0)
    c, s = math.cos(rot), math.sin(rot)
    ou, ov = rng.uniform(0, sp, 2)
    # On a regular grid every dot stays inside its own cell (radius <= 0.385, jitter <= 0.06 cells,
    # and the 0.5 px rim fits in the 0.055 cell = 0.5 px left of a cell >= 9 px), so only that cell
    # need be looked at: 9x less work for three dotted images in four.
    reach = 1 if scattered else 0

    def tex(u: np.ndarray, v: np.ndarray, idx: np.ndarray) -> np.ndarray:
        u, v = c * u + s * v + ou, -s * u + c * v + ov
        fi, _, _, rn = _nearest_cell(u, v, sp, jx, jy, rad, hexa=hexa, reach=reach)
        a = np.clip(0.5 - (rn - 1.0) * rad.take(fi), 0.0, 1.0)[:, None]  # a one-pixel anti-aliased rim
        return base * (1 - a) + palette[cidx.take(fi)] * a

    return tex


def _striped(rng: np.random.Generator, sw: float, H: int, W: int) -> Texture:
    """Stripes: mostly horizontal, sometimes vertical or diagonal; two colours or a multi-colour band."""
    period = max(8.0, sw * rng.uniform(0.05, 0.2))
    r = rng.random()
    if r < 0.6:
        phi = rng.uniform(-0.05, 0.05)  # horizontal
    elif r < 0.8:
        phi = math.pi / 2 + rng.uniform(-0.05, 0.05)
    else:
        phi = rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
    base = _fabric_colour(rng)
    if rng.random() < 0.65:
        duty = rng.uniform(0.15, 0.85)
        widths = np.array([duty, 1 - duty]) * period
        cols = [base, _contrasting(rng, base)]
    else:
        k = int(rng.integers(3, 6))
        widths = rng.dirichlet(np.full(k, 2.0)) * period
        cols = [base]
        for _ in range(k - 1):
            cols.append(_contrasting(rng, cols[-1], min_diff=0.18))
        if abs(_luma(cols[-1]) - _luma(base)) < 0.1:  # keep the wrap-around edge visible
            cols[-1] = _contrasting(rng, base, min_diff=0.18)
    widths = np.maximum(widths, 2.0)  # no stripe thinner than 2 px: it would vanish in the JPEG
    bounds = np.concatenate([[0.0], np.cumsum(widths)]).astype(np.float32)
    total = float(bounds[-1])
    cols = np.stack(cols)
    K = len(cols)
    c, s = math.cos(phi), math.sin(phi)
    off = rng.uniform(0, total)

    def tex(u: np.ndarray, v: np.ndarray, idx: np.ndarray) -> np.ndarray:
        p = np.mod(-u * s + v * c + off, total)
        k = np.clip(np.searchsorted(bounds, p, side="right") - 1, 0, K - 1)
        a = np.clip(0.5 - (p - bounds[k]), 0, 0.5)[:, None]  # anti-alias against the previous band
        b = np.clip(0.5 - (bounds[k + 1] - p), 0, 0.5)[:, None]  # and the next
        return cols[k] * (1 - a - b) + cols[(k - 1) % K] * a + cols[(k + 1) % K] * b

    return tex


def _leopard(rng: np.random.Generator, sw: float, H: int, W: int) -> Texture:
    """Leopard print: broken dark rings of 2-5 blobs around darker-orange centres, solid spots, specks.

    Built on cellular (Worley) noise: each cell holds one rosette with its own position, size,
    ellipticity and orientation; the ring is cut into blobs by a sine of the angle around the centre,
    and smooth noise roughens every edge.
    """
    C = max(14.0, sw * rng.uniform(0.1, 0.21))
    if rng.random() < 0.7:  # the classic tan/camel
        base = _hsv(rng.uniform(0.07, 0.12), rng.uniform(0.35, 0.75), rng.uniform(0.62, 0.92))
        centre = np.clip(base * np.array([0.82, 0.62, 0.42]) * rng.uniform(0.85, 1.05), 0, 1)
        dark = _hsv(rng.uniform(0.04, 0.1), rng.uniform(0.4, 0.8), rng.uniform(0.05, 0.18))
    else:  # snow leopard, pink, red, blue, white... fashion colourways
        base = _fabric_colour(rng)
        if _luma(base) < 0.35:
            base = np.clip(base + 0.45, 0, 1).astype(np.float32)
        centre = np.clip(base * rng.uniform(0.6, 0.85) + rng.normal(0, 0.05, 3), 0, 1)
        dark = np.clip(base * rng.uniform(0.05, 0.25), 0, 1)
    base, centre, dark = (np.asarray(x, np.float32) for x in (base, centre, dark))

    t = _cell_tables(rng, 8)
    jx, jy = (t[0] * 2 - 1) * 0.42, (t[1] * 2 - 1) * 0.42
    rad = C * rng.uniform(0.32, 0.42) * (0.78 + 0.44 * t[2])
    aspect = 0.7 + 0.6 * t[3]
    psi = t[4] * math.pi
    cos_p, sin_p = np.cos(psi), np.sin(psi)
    nblobs = np.floor(2 + t[5] * 3.999)
    phase = t[6] * 2 * math.pi
    solid = t[7] < rng.uniform(0.1, 0.3)
    ring_r = rng.uniform(0.72, 0.85)  # ring centre line, in units of the rosette radius
    half_w = rng.uniform(0.15, 0.27)  # ring half-width at its thickest
    gap = rng.uniform(0.2, 0.45)  # how much of the ring is missing: higher = more separate clumps
    h, w = _half(H, W)
    n1 = _smooth_noise(rng, h, w, H / C * 3, W / C * 3).ravel()  # edge roughness
    n2 = _smooth_noise(rng, h, w, H / C * 2, W / C * 2).ravel()  # clump shapes
    n3 = _smooth_noise(rng, h, w, H / C * 2.5, W / C * 2.5).ravel()  # small specks between rosettes
    tone = _smooth_noise(rng, h, w, 3, 3).ravel() * rng.uniform(0.02, 0.07)  # uneven dyeing
    ou, ov = rng.uniform(0, C * _TABLE, 2)

    def tex(u: np.ndarray, v: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # Nearest rosette by round distance (cheap), then the rosette's own elliptical distance.
        fi, du, dv, _ = _nearest_cell(u + ou, v + ov, C, jx, jy, rad)
        cp, sp_, a = cos_p.take(fi), sin_p.take(fi), aspect.take(fi)
        p = du * cp + dv * sp_
        q = dv * cp - du * sp_
        R = rad.take(fi)
        rn = np.sqrt((p * a) ** 2 + (q / a) ** 2) / R + 0.13 * n1[idx]
        aa = 1.0 / R  # one pixel, in units of the rosette radius
        ang = np.arctan2(q, p)
        m = 0.5 + 0.5 * np.sin(nblobs.take(fi) * ang + phase.take(fi)) + 0.3 * n2[idx]
        half = half_w * np.sqrt(np.clip((m - gap) / (1 - gap), 0, 1))  # fat clumps, sharp gaps
        is_solid = solid.take(fi)
        ring = np.clip((half - np.abs(rn - ring_r)) / aa + 0.5, 0, 1) * ~is_solid
        inside = np.clip((ring_r - rn) / aa + 0.5, 0, 1) * ~is_solid
        spot = np.clip((0.62 - rn) / aa + 0.5, 0, 1) * is_solid
        speck = np.clip((n3[idx] - 1.45) * 6.0, 0, 1) * (rn > 1.15)
        darkness = np.maximum(np.maximum(ring, spot), speck)[:, None]
        col = base * (1.0 + tone[idx])[:, None]
        col = col * (1 - inside[:, None]) + centre * inside[:, None]
        return col * (1 - darkness) + dark * darkness

    return tex


_TEXTURES: dict[str, Callable[[np.random.Generator, float, int, int], Texture]] = {
    "dotted": _dotted,
    "leopard": _leopard,
    "striped": _striped,
}


# ------------------------------------------------------------------------------------------------
# Camera
# ------------------------------------------------------------------------------------------------


def _camera(rng: np.random.Generator, scene: np.ndarray) -> bytes:
    """Exposure, white balance, vignetting, lens softness, sensor noise and JPEG: a phone-photo look."""
    H, W = scene.shape[:2]
    ys, xs = _grid(H, W)
    vignette = 1.0 - rng.uniform(0.0, 0.3) * 2.0 * ((xs / W - 0.5) ** 2 + (ys / H - 0.5) ** 2)
    gain = (rng.uniform(0.85, 1.12) * 255.0 * (1.0 + rng.normal(0, 0.035, 3))).astype(np.float32)
    scene *= vignette[..., None]
    scene *= gain
    img = Image.fromarray(np.clip(scene + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.75:
        # Lens softness / digital zoom: down- and up-sampling blurs like a Gaussian of ~0.3-1 px,
        # at a fraction of the cost of a full-size Gaussian blur of an RGB image.
        f = rng.uniform(1.15, 1.8)
        img = img.resize((max(1, round(W / f)), max(1, round(H / f))), Image.Resampling.BILINEAR)
        img = img.resize((W, H), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    arr += _grain(rng, (H, W, 3)) * rng.uniform(1.0, 6.0)
    arr = np.clip(arr + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
