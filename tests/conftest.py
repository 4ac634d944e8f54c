"""Shared fixtures: small real images on disk, and a way to run stage scripts as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:  # torch is imported by the tests that need it, not by every test run
    import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
FASHION = ROOT.parent / "shared" / "datasets" / "fashionTexture"

# Tests never download: a backbone whose weights are missing must fail fast and clearly.
os.environ.setdefault("IMGCLASS_OFFLINE", "1")
# Run tracking (MLflow) adds ~2.5 s a stage: off in the suite except where a test turns it on
# (tracked_demo below, tests/test_tracking.py), and never aimed at a store outside the test's folder.
os.environ.setdefault("IMGCLASS_TRACKING", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """Figures a test made to look into (plot functions return them) are closed after it: left open,
    they piled up across the suite into matplotlib's "more than 20 figures" warning."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def write_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A small noisy image of one dominant colour, saved in the format its suffix names."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color, dtype=np.int16) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def color_dataset(tmp_path: Path) -> Path:
    """images/<ds>/{red,green,blue}/ with 6 JPEGs each: classes a linear model separates easily."""
    root = tmp_path / "images" / "colors"
    for c, rgb in {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}.items():
        for i in range(6):
            write_image(root / c / f"{c}_{i}.jpg", rgb, seed=i)
    return root


COLOR_CLASSES = ("blue", "green", "red")  # color_dataset's classes, in label order


def color_images(color_dataset: Path) -> tuple[list[Path], list[int]]:
    """color_dataset's images and their labels (indices into COLOR_CLASSES), class by class."""
    paths, labels = [], []
    for i, c in enumerate(COLOR_CLASSES):
        for p in sorted((color_dataset / c).iterdir()):
            paths.append(p)
            labels.append(i)
    return paths, labels


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every tensor of the two state dicts equal (BatchNorm statistics included)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_script(name: str, *args: str, data_dir: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run scripts/<name> in a subprocess with DATA_DIR pointed at a temp folder."""
    env = {**os.environ, "IMGCLASS_DATA_DIR": str(data_dir), "IMGCLASS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


TRACKED_SMALL = ["--set", "demoImagesPerClass=8", "--set", "rf_inputResolution=64", "--set", "run_mbSize=8",
                 "--set", "svm_cvFolds=3"]


@pytest.fixture(scope="session")
def tracked_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA_DIR after stages 0-5 on a small demo data set (64 px), with run tracking on.

    Shared by the tracking and notebook tests, so the pipeline runs once per session."""
    data_dir = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLASS_TRACKING", "1")
        for script in ("0_downloadData.py", "1_prepareData.py", "2_refineDNN.py", "3_runDNN.py",
                       "4_trainSVM.py", "5_evaluate.py"):
            run_script(script, *TRACKED_SMALL, data_dir=data_dir)
    return data_dir
