"""The fast featurization path (ONNX Runtime, threaded decoding, cache) against the eager PyTorch model."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from imgclass.backbones import create_backbone
from imgclass.features import FeatureCache, Featurizer, FeaturizeOutOfMemoryError, Preprocess, _decoded_batches, is_out_of_memory
from imgclass.provenance import flip_average_of_stage3
from imgclass.fileio import save_npz
from imgclass.images import load_square
from imgclass.modelfile import ImageClassifier, ModelSpec, save_model

RES = 64
CLASSES = ("dotted", "leopard", "striped")


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return create_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def _refined(backbone: torch.nn.Module) -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(backbone, 1280, len(CLASSES), dropout=0.3)
    with torch.no_grad():
        model.head.weight.mul_(20)  # confident enough that wrong probabilities would show
    return model.eval()


def _spec(kind: str, resolution: int = RES, mode: str = "squash") -> ModelSpec:
    return ModelSpec("efficientnet_lite0", resolution, mode, kind=kind, classes=CLASSES if kind == "refined" else ())


@torch.inference_mode()
def _eager(model: torch.nn.Module, spec: ModelSpec, files: list[Path], flip: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference: the PyTorch model as written, eager, in float32, one image at a time."""
    pre = Preprocess.from_spec(spec)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    x = torch.stack([torch.from_numpy(load_square(f, spec.resolution, spec.resize_mode)).permute(2, 0, 1) for f in files])
    x = (x.float() / 255 - mean) / std
    assert pre.resolution == x.shape[-1]
    if isinstance(model, ImageClassifier):
        feats = [(model.features(x[i:i + 1]) + model.features(x[i:i + 1].flip(3))) / 2 if flip else model.features(x[i:i + 1])
                 for i in range(len(x))]
        feats = torch.cat(feats)
        return feats.numpy(), torch.softmax(model.head(feats), dim=1).numpy()
    feats = torch.cat([(model(x[i:i + 1]) + model(x[i:i + 1].flip(3))) / 2 if flip else model(x[i:i + 1]) for i in range(len(x))])
    return feats.numpy(), None


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    colors = [(200, 40, 40), (40, 190, 60), (40, 60, 200), (220, 200, 40), (120, 120, 120)]
    return [write_image(tmp_path / f"img{i}.jpg", c, size=(90 + 7 * i, 70), seed=i) for i, c in enumerate(colors)]


@pytest.mark.parametrize("kind", ["fixed", "refined"])
@pytest.mark.parametrize("flip", [False, True])
def test_fast_path_equals_eager_pytorch(kind: str, flip: bool, backbone: torch.nn.Module, export_dir: Path,
                                        photos: list[Path]) -> None:
    model = backbone if kind == "fixed" else _refined(backbone)
    spec = _spec(kind)
    fz = Featurizer(model, spec, batch_size=2, flip_average=flip, workers=2, engine="onnx", export_dir=export_dir)
    assert fz.engine.name == "onnxruntime-cpu"  # the CPU engine (also beside a GPU), not PyTorch again
    got = fz.featurize_paths(photos, progress=False)
    feats, probs = _eager(model, spec, photos, flip)
    assert got.features.shape == (len(photos), 1280) and got.features.dtype == np.float32
    assert _cosine(got.features, feats).min() >= 0.999
    if kind == "fixed":
        assert got.probs is None
    else:
        assert got.probs.shape == (len(photos), len(CLASSES))
        np.testing.assert_allclose(got.probs, probs, atol=2e-3)
        assert probs.max(axis=1).min() > 0.4  # a real, non-uniform softmax was compared
    # Already-decoded images take the same way through the network.
    arrays = np.stack([load_square(f, RES) for f in photos])
    np.testing.assert_allclose(fz.featurize_arrays(arrays).features, got.features, rtol=1e-4, atol=1e-4)


def test_torch_engine_matches_onnx_engine(backbone: torch.nn.Module, export_dir: Path, photos: list[Path]) -> None:
    """The torch engine (the one CUDA uses) and the ONNX engine give the same features."""
    spec = _spec("fixed", mode="pad")
    a = Featurizer(backbone, spec, batch_size=3, flip_average=True, engine="onnx", export_dir=export_dir)
    b = Featurizer(backbone, spec, batch_size=3, flip_average=True, engine="torch", device="cpu")
    assert b.engine.name == "torch-cpu"
    assert _cosine(a.featurize_paths(photos, progress=False).features, b.featurize_paths(photos, progress=False).features).min() >= 0.9999


def test_the_torch_engine_leaves_the_callers_model_as_it_was(photos: list[Path]) -> None:
    """Module.to works in place: the engine must move and re-lay out a copy, so that a network reused
    for several candidates (selectFeaturizer) stays on its device and saves to the same bytes."""
    model = create_backbone("efficientnet_lite0")
    before = {k: (v.stride(), v.device, v.data_ptr()) for k, v in model.state_dict().items()}
    fz = Featurizer(model, _spec("fixed"), batch_size=2, flip_average=False, engine="torch", device="cpu")
    assert fz.featurize_paths(photos[:3], progress=False).features.shape == (3, 1280)
    assert {k: (v.stride(), v.device, v.data_ptr()) for k, v in model.state_dict().items()} == before


def test_engine_onnx_runs_on_the_cpu_beside_a_gpu(backbone: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_engine = "onnx" forces ONNX Runtime even where the default device would be a GPU."""
    from imgclass import features

    monkeypatch.setattr(features, "default_device", lambda: torch.device("cuda"))
    fz = Featurizer(backbone, _spec("fixed"), engine="onnx")
    assert fz.device.type == "cpu" and fz.engine_name == "onnx"
    assert Featurizer(backbone, _spec("fixed")).engine_name == "torch"  # "auto" follows the device
    with pytest.raises(ValueError, match="engine 'onnx' runs on the CPU"):
        Featurizer(backbone, _spec("fixed"), engine="onnx", device="cuda")


def _odd_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    # smooth random shapes: a 1-pixel shift or JPEG noise changes them little, a wrong rotation a lot
    rgb = np.asarray(Image.fromarray(rng.integers(0, 256, (7, 10, 3), dtype=np.uint8)).resize((100, 70), Image.BICUBIC))
    files = []
    p = folder / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(p, quality=95)
    files.append(p)
    p = folder / "deep16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(p)  # mode I;16
    files.append(p)
    p = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(p, exif=exif, quality=95)
    files.append(p)
    p = folder / "really_png.jpg"
    Image.fromarray(rgb).save(p, format="PNG")
    files.append(p)
    return files


def test_odd_images_decode_the_same_on_both_paths(backbone: torch.nn.Module, export_dir: Path, tmp_path: Path) -> None:
    files = _odd_images(tmp_path)
    spec = _spec("fixed", mode="crop")
    got = Featurizer(backbone, spec, batch_size=4, workers=2, flip_average=False, export_dir=export_dir).featurize_paths(files, progress=False)
    feats, _ = _eager(backbone, spec, files, flip=False)
    assert _cosine(got.features, feats).min() >= 0.999
    # The EXIF rotation was applied on the way: the upright crop matches the rotated pixels.
    rotated = load_square(files[2], RES, "crop").astype(int)
    upright = np.asarray(Image.open(files[3]).rotate(-90, expand=True).convert("RGB").resize((RES, RES * 100 // 70))).astype(int)
    top = (upright.shape[0] - RES) // 2
    assert np.abs(rotated - upright[top:top + RES]).mean() < 6
    assert np.abs(rotated - upright[top:top + RES][::-1, ::-1]).mean() > 15  # rotated the other way: far off


def test_decoding_runs_only_a_few_batches_ahead(tmp_path: Path) -> None:
    """Memory stays flat: when the first batch is handed over, only `ahead` more batches were started."""
    files = [write_image(tmp_path / f"{i}.png", (100, 100, 100), size=(20, 20), seed=i) for i in range(40)]
    started = []
    lock = threading.Lock()

    class Counting(Preprocess):
        def load(self, source):  # type: ignore[override]
            with lock:
                started.append(source)
            return super().load(source)

    pre = Counting(16, "squash", (0.5,) * 3, (0.5,) * 3)
    batches = _decoded_batches(files, pre, batch_size=4, workers=2, ahead=2)
    start, first = next(batches)
    assert start == 0 and first.shape == (4, 16, 16, 3)
    assert len(started) <= 3 * 4
    rest = list(batches)
    assert [s for s, _ in rest] == list(range(4, 40, 4)) and len(started) == 40
    np.testing.assert_array_equal(rest[-1][1][-1], load_square(files[-1], 16))


def test_decode_error_names_the_file(backbone: torch.nn.Module, export_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    fz = Featurizer(backbone, _spec("fixed"), batch_size=2, workers=2, export_dir=export_dir)
    with pytest.raises(ValueError, match="broken.jpg"):
        fz.featurize_paths(photos + [bad], progress=False)



def test_one_path_instead_of_a_list_says_so(backbone: torch.nn.Module, export_dir: Path, photos: list[Path]) -> None:
    fz = Featurizer(backbone, _spec("fixed"), batch_size=2, workers=0, export_dir=export_dir)
    # A str was featurized letter by letter: "/: cannot decode as an image ([Errno 21] Is a directory: '/')".
    for one in (str(photos[0]), photos[0]):
        with pytest.raises(TypeError, match=r"expected a list of image files \(one image: \[path\]\)"):
            fz.featurize_paths(one, progress=False)  # type: ignore[arg-type]
    assert fz.featurize_paths([photos[0]], progress=False).features.shape == (1, fz.spec.feature_dim)


_OOM_RUN = """
import resource, sys
import numpy as np
from imgclass.backbones import create_backbone
from imgclass.features import Featurizer
from imgclass.modelfile import ModelSpec
folder, batch, flip, margin_mb = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "flip", int(sys.argv[4])
fz = Featurizer(create_backbone("efficientnet_lite0"), ModelSpec("efficientnet_lite0", 320, "squash"),
                batch_size=batch, flip_average=flip, workers=0, export_dir=folder)
fz.engine  # exported and loaded with memory to spare: the limit is for running it
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + margin_mb * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
fz.featurize_arrays(np.zeros((batch, 320, 320, 3), np.uint8))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc and address-space limits")
def test_running_out_of_memory_says_to_lower_run_mbSize(tmp_path: Path) -> None:
    # A real allocation failure: 96 images of 320 px (48 and their mirror images) need far more than
    # the 150 MB that the address-space limit leaves this process.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _OOM_RUN, str(tmp_path), "48", "flip", "150"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("imgclass.features.FeaturizeOutOfMemoryError: out of memory running onnxruntime-cpu on 48 images "
                           "and their mirror images (flip averaging) of 320 px at once: lower run_mbSize (now 48; try 24)"), last
    assert "Failed to allocate memory" in last
    assert "[E:onnxruntime" not in run.stderr  # ONNX Runtime's own red log line of the same failure is not shown


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc and address-space limits")
@pytest.mark.parametrize("flip, advice", [
    ("noflip", "on 1 image of 320 px at once: run_mbSize is 1 already: leave this process more memory ("),
    ("flip", "on 1 image and their mirror images (flip averaging) of 320 px at once: run_mbSize is 1 already: "
             "set run_boFlipAverage = False (half the memory), or leave this process more memory ("),
])
def test_running_out_of_memory_on_one_image_does_not_say_to_lower_run_mbSize_to_1(tmp_path: Path, flip: str,
                                                                                   advice: str) -> None:
    """At run_mbSize = 1 it said 'lower run_mbSize (now 1; try 1)', about '1 images'. A 4 MB margin: the
    network's first buffer for one 320 px image is larger. glibc's malloc is told to map every block
    over 128 kB anew: otherwise one image's buffers may fit in room its arenas had reserved before the
    limit, and the run succeeds now and then."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _OOM_RUN, str(tmp_path), "1", flip, "4"], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("imgclass.features.FeaturizeOutOfMemoryError: out of memory running onnxruntime-cpu "
                           + advice), last


# What torch 2.14's CUDA caching allocator and MPS allocator raise (texts from c10/cuda/CUDACachingAllocator.cpp
# and aten/src/ATen/mps/MPSAllocator.mm): what failed and how much is free come first, tuning advice and a link last.
_CUDA_OOM = ("CUDA out of memory. Tried to allocate 7.03 GiB. GPU 0 has a total capacity of 139.80 GiB of which 2.19 GiB "
             "is free. Including non-PyTorch memory, this process has 137.60 GiB memory in use. Of the allocated memory "
             "130.91 GiB is allocated by PyTorch, and 6.02 GiB is reserved by PyTorch but unallocated. If reserved but "
             "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
             "fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/"
             "cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)")
_MPS_OOM = ("MPS backend out of memory (MPS allocated: 17.02 GB, other allocations: 1.20 MB, max allowed: 18.13 GB). "
            "Tried to allocate 1.50 GB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper "
            "limit for memory allocations (may cause system failure).")


class _OutOfGpuMemory(torch.nn.Module):
    """A network whose every run fails as a GPU's allocator fails (no GPU here: the same exception, raised)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError(self.message)


@pytest.mark.parametrize("message, shown", [
    (_CUDA_OOM, "(CUDA out of memory. Tried to allocate 7.03 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
                "2.19 GiB is free. Including non-PyTorch memory, this process has 137.60 GiB memory in use.)"),
    (_MPS_OOM, "(MPS backend out of memory (MPS allocated: 17.02 GB, other allocations: 1.20 MB, max allowed: 18.13 GB). "
               "Tried to allocate 1.50 GB on private pool.)"),
])
def test_running_out_of_gpu_memory_says_how_much_was_asked_and_free(message: str, shown: str) -> None:
    """The last 200 characters of CUDA's message are its tuning advice and link: the advice ended in
    '(... See documentation for Memory Management (https://...))', without a word of GPU or size."""
    fz = Featurizer(_OutOfGpuMemory(message), _spec("fixed"), batch_size=4, flip_average=False, workers=0,
                    engine="torch", device="cpu")
    with pytest.raises(FeaturizeOutOfMemoryError) as caught:
        fz.featurize_arrays(np.zeros((4, RES, RES, 3), np.uint8))
    text = str(caught.value)
    assert "\n" not in text and text.endswith(shown), text
    assert "lower run_mbSize (now 4; try 2)" in text


def test_cache_hits_and_invalidation(backbone: torch.nn.Module, export_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    spec = _spec("fixed")
    model_file = save_model(tmp_path / "model_fixed.pt", backbone, spec)
    folder = tmp_path / "featcache"

    def run(spec: ModelSpec = spec, flip: bool = False) -> tuple[Featurizer, FeatureCache, np.ndarray]:
        fz = Featurizer(backbone, spec, batch_size=2, flip_average=flip, workers=2, export_dir=export_dir)
        cache = FeatureCache(folder, model_file, spec, flip)
        return fz, cache, fz.featurize_paths(photos, progress=False, cache=cache).features

    _, cache, first = run()
    assert (cache.hits, cache.misses) == (0, len(photos)) and cache.path.is_file()
    fz, cache, again = run()
    assert (cache.hits, cache.misses) == (len(photos), 0)
    assert fz._engine is None  # nothing was decoded or run: the network was never even loaded
    np.testing.assert_array_equal(again, first)

    # A changed image file is featurized again; the others still come from the cache.
    write_image(photos[1], (10, 240, 240), size=(90, 70), seed=99)
    _, cache, changed = run()
    assert (cache.hits, cache.misses) == (len(photos) - 1, 1)
    assert _cosine(changed[1:2], first[1:2])[0] < 0.99
    np.testing.assert_array_equal(np.delete(changed, 1, axis=0), np.delete(first, 1, axis=0))

    # A different resolution or flip setting is another configuration: nothing is reused.
    _, cache, _ = run(spec=_spec("fixed", resolution=72))
    assert (cache.hits, cache.misses) == (0, len(photos))
    _, cache, _ = run(flip=True)
    assert (cache.hits, cache.misses) == (0, len(photos))
    # Images decoded another way (a fix that gives some files other pixels): nothing is reused.
    import imgclass.features

    with pytest.MonkeyPatch.context() as m:
        m.setattr(imgclass.features, "DECODE_VERSION", imgclass.features.DECODE_VERSION + "+next")
        _, cache, _ = run()
        assert (cache.hits, cache.misses) == (0, len(photos))

    # A changed model file (other weights) invalidates everything.
    with torch.no_grad():
        altered = create_backbone("efficientnet_lite0")
        next(altered.parameters()).mul_(0.5)
    save_model(model_file, altered, spec)
    _, cache, _ = run()
    assert (cache.hits, cache.misses) == (0, len(photos))
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp files


def _fine_textures(folder: Path) -> list[Path]:
    """Large JPEGs of the fine stripes and dots that a block-average decode aliases into moire."""
    yy, xx = np.mgrid[0:1500, 0:2000].astype(np.float32)
    patterns = {
        "stripes5": np.sin(2 * np.pi * (xx + 0.3 * yy) / 5.3),
        "stripes9": np.sin(2 * np.pi * (0.8 * xx - yy) / 9.1),
        "dots": np.sin(2 * np.pi * xx / 6.7) * np.sin(2 * np.pi * yy / 6.7),
    }
    paths = []
    for name, wave in patterns.items():
        gray = (127 + 110 * wave).astype(np.uint8)
        rgb = np.stack([gray, np.roll(gray, 3, axis=1), 255 - gray], axis=2)
        paths.append(folder / f"{name}.jpg")
        Image.fromarray(rgb).save(paths[-1], quality=92)
    return paths


def test_reduced_jpeg_decode_keeps_the_features(backbone: torch.nn.Module, export_dir: Path, tmp_path: Path) -> None:
    """Stage 3 decodes large JPEGs at a reduced scale for speed; the network must not see the difference
    (cosine >= 0.999 against decoding every pixel and resizing), even on textures that alias."""
    from PIL import ImageOps

    files = _fine_textures(tmp_path)
    spec = _spec("fixed", resolution=224, mode="crop")
    fz = Featurizer(backbone, spec, batch_size=4, flip_average=False, workers=0, export_dir=export_dir)
    fast = fz.featurize_paths(files, progress=False).features
    with Image.open(files[0]) as im:
        im.draft("RGB", (224, 224))
        assert im.size[0] < 2000  # the shortcut really is taken for these files
    full = np.stack([np.asarray(ImageOps.fit(Image.open(f).convert("RGB"), (224, 224), Image.BILINEAR)) for f in files])
    reference = fz.featurize_arrays(full).features
    cos = _cosine(fast, reference)
    assert cos.min() >= 0.999, cos


def test_scoring_later_uses_the_mirror_averaging_stage_3_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = save_npz(tmp_path / "features_fixed_train.npz", features=np.zeros((2, 4), np.float32),
                        flip_average=np.array(True))
    assert flip_average_of_stage3(recorded, requested=False) is True
    assert "stage 3 featurized with True" in capsys.readouterr().out
    assert flip_average_of_stage3(recorded, requested=True) is True
    assert capsys.readouterr().out == ""
    older = save_npz(tmp_path / "old.npz", features=np.zeros((2, 4), np.float32))  # before it was recorded
    assert flip_average_of_stage3(older, requested=False) is False
    assert flip_average_of_stage3(tmp_path / "missing.npz", requested=True) is True



@pytest.mark.parametrize("save_seconds", [60.0, 0.0])  # saved as the run stops / after every batch
def test_features_computed_before_a_run_stops_are_kept_in_the_cache(backbone: torch.nn.Module, export_dir: Path,
                                                                     photos: list[Path], tmp_path: Path,
                                                                     save_seconds: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage 3 that stops part way (Ctrl-C, a file that no longer decodes) keeps what it computed:
    the rerun featurizes only the rest, with the same features."""
    monkeypatch.setattr("imgclass.features.CACHE_SAVE_SECONDS", save_seconds)
    spec = _spec("fixed")
    model_file = save_model(tmp_path / "model_fixed.pt", backbone, spec)
    folder = tmp_path / "featcache"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    fz = Featurizer(backbone, spec, batch_size=2, workers=0, export_dir=export_dir)
    with pytest.raises(ValueError, match="broken.jpg"):  # the 5th of 6 files: batches 1 and 2 are done
        fz.featurize_paths(photos[:4] + [bad, photos[4]], progress=False, cache=FeatureCache(folder, model_file, spec, False))
    cache = FeatureCache(folder, model_file, spec, False)
    again = fz.featurize_paths(photos, progress=False, cache=cache)
    assert (cache.hits, cache.misses) == (4, 1)
    fresh = fz.featurize_paths(photos, progress=False)
    np.testing.assert_array_equal(again.features, fresh.features)


def test_a_cache_that_cannot_be_saved_does_not_hide_why_the_run_stopped(backbone: torch.nn.Module, export_dir: Path,
                                                                        photos: list[Path], tmp_path: Path) -> None:
    spec = _spec("fixed")
    model_file = save_model(tmp_path / "model_fixed.pt", backbone, spec)
    blocker = tmp_path / "not a folder"
    blocker.write_text("a file where the cache folder should be")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    fz = Featurizer(backbone, spec, batch_size=2, workers=0, export_dir=export_dir)
    with pytest.warns(UserWarning, match="could not save the features computed so far"), \
            pytest.raises(ValueError, match="broken.jpg"):
        fz.featurize_paths(photos[:2] + [bad], progress=False, cache=FeatureCache(blocker, model_file, spec, False))


def test_a_cache_file_another_stage_3_pruned_meanwhile_is_no_error(tmp_path: Path) -> None:
    """Two stage 3s (two shells) prune one featcache/ folder: a file that the other deleted between this
    one's listing and its reading of the file's time raised FileNotFoundError, a traceback after the
    features were written. A link to nothing is that file: listed, then gone."""
    import os
    from types import SimpleNamespace

    from imgclass.features import export_onnx

    folder = tmp_path / "featcache"
    folder.mkdir()
    model_file = tmp_path / "model_fixed.pt"
    model_file.write_bytes(b"weights")
    for i in range(5):  # earlier configurations, oldest first
        old = folder / f"features_fixed_{i:016x}.npz"
        old.write_bytes(b"x")
        os.utime(old, (1000 + i, 1000 + i))
    (folder / "features_fixed_gone.npz").symlink_to(folder / "deleted by the other process")
    cache = FeatureCache(folder, model_file, _spec("fixed"), False)
    cache.update(["k"], SimpleNamespace(features=np.zeros((1, 4), np.float32), probs=None))  # type: ignore[arg-type]
    # The newest four are kept: this run's and the three newest earlier ones.
    assert sorted(p.name for p in folder.glob("features_fixed_*.npz") if p.exists()) == sorted(
        [cache.path.name, *(f"features_fixed_{i:016x}.npz" for i in (2, 3, 4))])
    # The ONNX exports of a folder are pruned alike.
    for i in range(4):
        (folder / f"features_{i}_64_x_sp.onnx").write_bytes(b"x")
    (folder / "features_gone_64_x_sp.onnx").symlink_to(folder / "deleted too")
    export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                Preprocess.from_spec(_spec("fixed")), folder)
    assert len([p for p in folder.glob("features_*.onnx") if p.exists()]) == 4


def test_a_cached_onnx_export_that_does_not_load_is_exported_again(tmp_path: Path) -> None:
    """A featcache/ export cut short (a copied data folder, a damaged disk) ended stage 3 in ONNX
    Runtime's InvalidProtobuf traceback at every rerun, until the file was deleted by hand."""
    from imgclass.features import _OnnxEngine, export_onnx

    body = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    pre = Preprocess.from_spec(_spec("fixed"))
    path = export_onnx(body, pre, tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:500])
    engine = _OnnxEngine(body, pre, tmp_path)
    assert path.read_bytes() == whole  # the same file, written again whole
    assert engine(np.zeros((1, RES, RES, 3), np.uint8)).shape == (1, 2)


def test_mirror_averaging_of_classes_a_mirror_changes_is_noted() -> None:
    from imgclass.features import mirror_note

    assert mirror_note(flip_average=False, train_flips=False) is None  # the default: nothing to say
    assert mirror_note(flip_average=True, train_flips=True) is None
    note = mirror_note(flip_average=True, train_flips=False)
    assert note is not None and "set run_boFlipAverage = False" in note and "aug_boHorizontalFlip = False" in note


def test_a_crash_reading_memory_is_not_taken_for_a_lack_of_it() -> None:
    """Errors are told apart by their words ("memory" among them): CUDA's "illegal memory access" (a
    crash) was answered with advice to lower run_mbSize. Real allocation failures still are."""
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    try:
        torch.empty(2 ** 50, dtype=torch.uint8)  # torch's own error when the allocator refuses
    except RuntimeError as e:
        assert is_out_of_memory(e), e
    else:
        pytest.fail("an allocation of a petabyte succeeded")
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 7.03 GiB. GPU 0 has a total "
                                         "capacity of 79.1 GiB of which 1.2 GiB is free."))


def test_the_cache_tells_apart_two_photos_of_one_size_and_time_that_swapped_paths(tmp_path: Path) -> None:
    """Unpacked from one archive (one modification time) and of one size (BMPs of one shape), two
    photos swapped paths between class folders: size and time alone took both for unchanged, and
    each path kept the other photo's content hash, so its features. The inode tells them apart; an
    unchanged file is still not read again."""
    from types import SimpleNamespace

    a, b = tmp_path / "cat" / "1.bmp", tmp_path / "dog" / "1.bmp"
    for path, colour in ((a, (200, 20, 20)), (b, (20, 20, 200))):
        path.parent.mkdir()
        Image.new("RGB", (40, 30), colour).save(path)
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    assert a.stat().st_size == b.stat().st_size
    model_file = tmp_path / "model_fixed.pt"
    model_file.write_bytes(b"weights")
    cache = FeatureCache(tmp_path / "featcache", model_file, _spec("fixed"), False)
    keys = [cache.file_key(a), cache.file_key(b)]
    cache.update(keys, SimpleNamespace(features=np.zeros((2, 4), np.float32), probs=None))  # type: ignore[arg-type]
    swap = tmp_path / "swap.bmp"
    a.rename(swap), b.rename(a), swap.rename(b)
    assert (a.stat().st_size, a.stat().st_mtime_ns) == (b.stat().st_size, b.stat().st_mtime_ns)  # alike as before
    again = FeatureCache(tmp_path / "featcache", model_file, _spec("fixed"), False)
    assert [again.file_key(a), again.file_key(b)] == keys[::-1]
    again.update(keys[::-1], SimpleNamespace(features=np.zeros((2, 4), np.float32), probs=None))  # type: ignore[arg-type]
    # A file left where it is since is not read again: its recorded hash comes back as recorded.
    stays = FeatureCache(tmp_path / "featcache", model_file, _spec("fixed"), False)
    stays._stats[str(a.resolve())] = (stays._stats[str(a.resolve())][0], "recorded")
    assert stays.file_key(a) == "recorded"
