"""The synthetic demo data set: layout, determinism, valid JPEGs, and textures that really differ."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclass.synthetic import CLASSES, HEIGHT_RANGE, WIDTH_RANGE, generate_demo_dataset


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in _files(root).items() if k.endswith(".jpg")}


def test_classes_constant():
    assert CLASSES == ("dotted", "leopard", "striped")


def test_layout_counts_and_readme(tmp_path, capsys):
    counts = generate_demo_dataset(tmp_path, images_per_class=3, seed=0, progress=True)

    assert counts == {"dotted": 3, "leopard": 3, "striped": 3}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == list(CLASSES)
    for c in CLASSES:
        names = sorted(p.name for p in (tmp_path / c).iterdir())
        assert names == [f"{c}_0000.jpg", f"{c}_0001.jpg", f"{c}_0002.jpg"]
    # Atomic writes leave no temp files behind.
    assert not [p for p in tmp_path.rglob(".*")]

    readme = (tmp_path / "README.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme
    assert "not photographs" in readme.lower()
    assert "imgclass.synthetic" in readme
    assert "DATA_DIR/images/<datasetName>/<class>/" in readme
    assert "PARAMETERS.py" in readme
    # progress=True shows a tqdm bar (on stderr).
    assert "synthetic demo images" in capsys.readouterr().err


def test_no_progress_bar_when_disabled(tmp_path, capsys):
    generate_demo_dataset(tmp_path, images_per_class=1, seed=0, progress=False)
    assert "synthetic demo images" not in capsys.readouterr().err


def test_files_are_rgb_jpegs_of_varied_portraitish_sizes(tmp_path):
    generate_demo_dataset(tmp_path, images_per_class=4, seed=0, progress=False)
    sizes = set()
    for name, data in _images(tmp_path).items():
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG", name
            assert img.mode == "RGB", name
            img.load()  # decodes the whole file: a truncated JPEG fails here
            w, h = img.size
        assert WIDTH_RANGE[0] <= w <= WIDTH_RANGE[1], (name, w)
        assert HEIGHT_RANGE[0] <= h <= HEIGHT_RANGE[1], (name, h)
        sizes.add((w, h))
    assert len(_images(tmp_path)) == 12
    assert len(sizes) >= 6  # sizes vary from image to image, so size tells nothing about the class


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_demo_dataset(a, images_per_class=3, seed=7, progress=False)
    generate_demo_dataset(b, images_per_class=3, seed=7, progress=False)
    fa, fb = _files(a), _files(b)
    assert len(fa) == 3 * len(CLASSES) + 1  # images + README.txt
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name] == fb[name], name


def test_different_seed_gives_different_images(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_demo_dataset(a, images_per_class=3, seed=0, progress=False)
    generate_demo_dataset(b, images_per_class=3, seed=1, progress=False)
    ia, ib = _images(a), _images(b)
    assert ia.keys() == ib.keys()
    for name in ia:
        assert ia[name] != ib[name], name


def test_images_within_a_run_are_all_different(tmp_path):
    generate_demo_dataset(tmp_path, images_per_class=3, seed=0, progress=False)
    blobs = list(_images(tmp_path).values())
    assert len(set(blobs)) == len(blobs) == 9


def test_first_images_do_not_depend_on_images_per_class(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    generate_demo_dataset(small, images_per_class=2, seed=3, progress=False)
    generate_demo_dataset(big, images_per_class=4, seed=3, progress=False)
    s, b = _images(small), _images(big)
    assert len(s) == 6 and len(b) == 12
    for name, data in s.items():
        assert b[name] == data, name


def test_regenerating_keeps_good_files_and_repairs_bad_ones(tmp_path):
    generate_demo_dataset(tmp_path, images_per_class=2, seed=0, progress=False)
    before = _files(tmp_path)
    good = tmp_path / "leopard" / "leopard_0000.jpg"
    bad = tmp_path / "striped" / "striped_0001.jpg"
    good_mtime = good.stat().st_mtime_ns
    bad.write_bytes(b"not a jpeg")

    generate_demo_dataset(tmp_path, images_per_class=2, seed=0, progress=False)

    assert _files(tmp_path) == before  # the damaged file is rewritten with the same bytes
    assert good.stat().st_mtime_ns == good_mtime  # a file that was already right is not rewritten


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"images_per_class": 0}, "images_per_class"),
        ({"images_per_class": -3}, "images_per_class"),
        ({"images_per_class": 2.5}, "images_per_class"),
        ({"images_per_class": "3"}, "images_per_class"),
        ({"images_per_class": True}, "images_per_class"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": None}, "seed"),
    ],
)
def test_bad_arguments_fail_early_with_a_clear_message(tmp_path, kwargs, name):
    out = tmp_path / "demo"
    with pytest.raises(ValueError, match=name):
        generate_demo_dataset(out, **{"images_per_class": 2, "seed": 0, "progress": False, **kwargs})
    assert not out.exists()  # nothing written before the arguments were checked


def test_numpy_integers_are_accepted(tmp_path):
    counts = generate_demo_dataset(tmp_path, images_per_class=np.int64(1), seed=np.int32(2), progress=False)
    assert counts == {c: 1 for c in CLASSES}


def _coherence(data: bytes) -> float:
    """How much the gradients in the middle of the image share one direction: 0 for isotropic
    texture (dots), near 1 for parallel lines (stripes). The garment always covers the middle."""
    with Image.open(io.BytesIO(data)) as img:
        g = np.asarray(img.convert("L"), dtype=np.float64)
    h, w = g.shape
    c = g[int(h * 0.35):int(h * 0.7), int(w * 0.35):int(w * 0.65)]
    gx = c[1:-1, 2:] - c[1:-1, :-2]
    gy = c[2:, 1:-1] - c[:-2, 1:-1]
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-9))


def test_striped_images_are_far_more_directional_than_dotted(tmp_path):
    # Over 40 seeds x 4 images: striped averages ~0.93, dotted ~0.06, and the 4-image means never
    # came within 0.7 of each other, so a 0.3 margin is safe (and this seed is fixed anyway).
    generate_demo_dataset(tmp_path, images_per_class=4, seed=0, progress=False)
    imgs = _images(tmp_path)
    mean = {c: np.mean([_coherence(d) for n, d in imgs.items() if n.startswith(c + "/")]) for c in CLASSES}
    assert mean["striped"] > mean["dotted"] + 0.3, mean
    assert mean["striped"] > mean["leopard"] + 0.3, mean
