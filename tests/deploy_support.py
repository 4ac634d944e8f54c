"""What the deployment tests share: a small trained bundle, and the real server in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from conftest import ROOT, SCRIPTS, write_image

COLORS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}
RESOLUTION = 64
_BUNDLES: dict[str, Path] = {}


def color_bundle(root: Path) -> Path:
    """A bundle of the real EfficientNet-Lite0 + an SVM trained on red/green/blue photos (cached per run)."""
    if "color" in _BUNDLES:
        return _BUNDLES["color"]
    from imgclass.export import export_model
    from imgclass.features import Featurizer
    from imgclass.modelfile import ModelSpec, build_model
    from imgclass.svm import LinearSvm

    paths, labels = [], []
    for k, (name, rgb) in enumerate(COLORS.items()):
        for i in range(6):
            paths.append(write_image(root / "train" / name / f"{i}.jpg", rgb, size=(90, 70), seed=100 + i))
            labels.append(k)
    spec = ModelSpec("efficientnet_lite0", RESOLUTION)
    model = build_model(spec)
    feats = Featurizer(model, spec, batch_size=18, flip_average=True, workers=0,
                       export_dir=root / "onnx").featurize_paths(paths, progress=False).features
    svm = LinearSvm([1.0], cv_folds=3).fit(feats, np.array(labels))
    svm.classes = list(COLORS)
    bundle = export_model(model, spec, root / "bundle", "svm", svm=svm, flip_average=True,
                          metrics={"overall_accuracy": 1.0, "note": "test bundle"})
    _BUNDLES["color"] = bundle.path
    return bundle.path


def jpeg_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (80, 60), seed: int = 7) -> bytes:
    """A fresh photo of one colour (not one the SVM was trained on)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb, np.int16) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(bundle: Path, *sets: str, workers: int = 1, timeout: float = 60, pids: list[int] | None = None) -> Iterator[str]:
    """scripts/6_deploy.py --bundle serving on a free port of 127.0.0.1; yields its base URL (and
    appends the server's process id to `pids` when given)."""
    port = free_port()
    args = [sys.executable, str(SCRIPTS / "6_deploy.py"), "--bundle", str(bundle), "--port", str(port),
            "--workers", str(workers), "--set", "dep_threads=1"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not answer /health in time")
            time.sleep(0.2)
        yield url
        assert proc.poll() is None, "the server died during the test"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
