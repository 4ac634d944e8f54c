"""Run the network over images: penultimate-layer features (and class probabilities for refined models).

Speed on a laptop CPU comes from three things, each measured in benchmarks/bench_featurize.py:
- the network runs in ONNX Runtime (exported on the fly from the PyTorch model and kept in a file
  named by the weights' hash), which is several times faster than eager PyTorch on a CPU; with a
  CUDA (or MPS) device the same code runs the PyTorch model there instead;
- each image is decoded once, at a reduced JPEG scale that keeps the features (images.load_square),
  in threads that decode the next batches while the network runs on this one (PIL and ONNX Runtime
  release the GIL);
- normalisation happens inside the exported graph, so uint8 pixels go straight in.
Memory stays flat in the number of images: a few batches of pixels are alive at any time, and the
features go into one preallocated array.

With `flip_average`, an image's features are the mean of its own and its mirror image's: cheap
test-time augmentation that makes the features less sensitive to which way a garment faces, at twice
the network cost. `FeatureCache` keeps features between runs, keyed by model file, preprocessing and
each image file's content, so featurizing a data set that did not change is not repeated.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgclass.backbones import static_padding
from imgclass.cpus import OutOfMemoryAdvice, usable_cpus
from imgclass.fileio import atomic_path, file_stamp, load_npz, save_npz
from imgclass.images import DECODE_VERSION, load_square
from imgclass.modelfile import ImageClassifier, ModelSpec
from imgclass.progress import progress_bar
from imgclass.provenance import file_hash

ENGINES = ("auto", "onnx", "torch")  # "auto": ONNX Runtime on a CPU, PyTorch on CUDA/MPS
CACHE_SAVE_SECONDS = 60.0  # how often featurize_paths writes what it computed to the cache (a full rewrite)

# How running out of memory reads on the CPU besides "out of memory": the allocator's mmap failing,
# oneDNN failing to set up a convolution for want of scratch memory (seen under a 4 GB limit), and
# ONNX Runtime's arena "Failed to allocate memory for requested buffer" (an exception of its own class).
_OOM_WORDS = ("memory", "unable to mmap", "could not create a primitive")


def is_out_of_memory(e: BaseException) -> bool:
    """Whether an exception of torch or ONNX Runtime says that an allocation failed."""
    text = str(e).lower()
    # "CUDA error: an illegal memory access was encountered" is a crash, not a lack of memory: advice
    # to lower the batch size would send the user the wrong way.
    return (isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)))
            or (any(w in text for w in _OOM_WORDS) and "illegal memory access" not in text))


def _oom_detail(e: BaseException) -> str:
    """The words of an out-of-memory error worth repeating: ONNX Runtime's sentence without the node
    name and source location before it."""
    text = " ".join(str(e).split())
    if (m := re.search(r"Failed to allocate memory.*", text)) is not None:
        return m.group(0)[:200]
    # torch's GPU allocators say what failed first ("CUDA out of memory. Tried to allocate 7.03 GiB. GPU 0
    # has a total capacity of ... of which ... is free.") and end with general tuning advice and a link,
    # which alone made the last 200 characters: the head is kept, cut after a whole sentence.
    if (m := re.search(r"(?:CUDA|MPS backend) out of memory.*", text)) is not None:
        head = m.group(0)
        if len(head) <= 200:
            return head
        cut = head.rfind(". ", 0, 200)
        return head[:cut + 1] if cut > 0 else head[:200]
    return text[-200:]


class FeaturizeOutOfMemoryError(OutOfMemoryAdvice):
    """The network ran out of memory on a batch of images; the message says what to lower."""


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the network's input: resize to a square, scale, normalise."""

    resolution: int
    resize_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Preprocess:
        return cls(spec.resolution, spec.resize_mode, spec.mean, spec.std)

    def load(self, source: str | Path | bytes) -> np.ndarray:
        """Decoded, resized image: HxWx3 uint8."""
        return load_square(source, self.resolution, self.resize_mode)

    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """(N, 3, R, R) uint8 -> float32 normalised, channels-last for faster CPU convolutions."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32, device=batch_uint8.device).view(1, 3, 1, 1) * 255.0
        x = (batch_uint8.float() - mean) / std
        return x.contiguous(memory_format=torch.channels_last)


class _PixelsToFeatures(torch.nn.Module):
    """uint8 NHWC pixels -> backbone features: the graph that is exported, normalisation included."""

    def __init__(self, body: torch.nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.body = body
        self.preprocess = preprocess

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(self.preprocess.normalize(pixels.permute(0, 3, 1, 2)))


def _weights_hash(module: torch.nn.Module) -> str:
    """Content hash of every parameter and buffer: names the exported file, so new weights re-export."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def default_export_dir() -> Path:
    """Where exported ONNX files go when the caller names no folder (stage 3 uses proc/<ds>/featcache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgclass" / "onnx"


def export_onnx(body: torch.nn.Module, preprocess: Preprocess, folder: str | Path) -> Path:
    """Export body (uint8 NHWC pixels in, features out) to ONNX once per weights and preprocessing.

    The file name holds the hash of the weights and the resolution, so a changed model never reuses
    a stale export; the file is written atomically, so a crash never leaves half an export.
    """
    # The graph depends on the weights, the input side and the normalisation, not on the resize mode.
    norm = hashlib.sha256(repr((preprocess.mean, preprocess.std)).encode()).hexdigest()[:8]
    # "sp": exported with static padding (exports from before that are not reused).
    key = f"{_weights_hash(body)}_{preprocess.resolution}_{norm}_sp"
    path = Path(folder) / f"features_{key}.onnx"
    if path.is_file():
        return path
    r = preprocess.resolution
    wrapper = _PixelsToFeatures(static_padding(body, r), preprocess).eval()
    example = torch.zeros((2, r, r, 3), dtype=torch.uint8)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, nothing actionable
        # The TorchScript exporter (dynamo=False) handles every backbone here in seconds, offline.
        torch.onnx.export(
            wrapper, (example,), str(tmp), input_names=["pixels"], output_names=["features"],
            dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}}, opset_version=17, dynamo=False,
        )
    # Each refined model is a new export; keep the newest few so proc/ does not grow without bound.
    for old in _newest_first(path.parent.glob("features_*.onnx"))[4:]:
        old.unlink(missing_ok=True)
    return path


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    """`paths` newest first by modification time, leaving out any gone since they were listed: a stage
    3 in another shell, pruning the same folder, may delete one between the listing and its stat."""
    dated = []
    for p in paths:
        try:
            dated.append((p.stat().st_mtime, p))
        except FileNotFoundError:
            continue
    return [p for _, p in sorted(dated, key=lambda d: d[0], reverse=True)]


class _OnnxEngine:
    """ONNX Runtime on the CPU, all cores, no busy-waiting (decode threads share the cores)."""

    def __init__(self, body: torch.nn.Module, preprocess: Preprocess, export_dir: str | Path | None) -> None:
        from imgclass.export import cpu_session

        path = export_onnx(body, preprocess, export_dir or default_export_dir())
        try:
            self.session = cpu_session(path)
        except Exception:  # noqa: BLE001 - ONNX Runtime's errors (InvalidProtobuf, Fail) are plain Exceptions
            # A cached export that does not load (cut short by a copy of the data folder, a damaged disk)
            # ended stage 3 in the same traceback at every rerun until it was deleted by hand: export again.
            path.unlink(missing_ok=True)
            path = export_onnx(body, preprocess, export_dir or default_export_dir())
            self.session = cpu_session(path)
        self.name = "onnxruntime-cpu"
        import onnxruntime as ort

        # A failed run raises with the same message that ONNX Runtime would also log in red first.
        self._quiet = ort.RunOptions()
        self._quiet.log_severity_level = 4

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels)}, self._quiet)[0]


class _TorchEngine:
    """The PyTorch model on any device (CUDA, MPS or CPU)."""

    def __init__(self, body: torch.nn.Module, preprocess: Preprocess, device: torch.device) -> None:
        self.device = device
        # A copy: Module.to moves (and re-lays out) a module in place, and the caller's model must stay
        # as it was (selectFeaturizer reuses one network for several candidates and saves it after).
        body = copy.deepcopy(body)
        self.module = _PixelsToFeatures(body, preprocess).eval().to(device).to(memory_format=torch.channels_last)
        self.name = f"torch-{device.type}"
        self._lock = threading.Lock()  # the cuDNN flag below is process-wide: one call at a time sets it

    @torch.inference_mode()
    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        # Not non_blocking on MPS: a non-blocking copy from pageable CPU memory there can read the source
        # after it is freed and silently corrupt the input (pytorch/pytorch#139550, #189690, open); the
        # np.ascontiguousarray copy of a strided batch is freed as soon as .to() returns.
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=self.device.type == "cuda")
        # Full float32 on a GPU too: with cuDNN's default TF32 convolutions Lite0's features lay up to
        # 2e-2 from the CPU engine's (1e-5 in float32; H200, 2026-12-01), and an SVM trained on one
        # device's features is served on another's (a bundle runs ONNX Runtime on a CPU).
        with self._lock, torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            return self.module(x).float().cpu().numpy()


@dataclass
class FeatureResult:
    features: np.ndarray  # (N, D) float32 penultimate-layer features
    probs: np.ndarray | None  # (N, K) class probabilities, refined models only


class Featurizer:
    """Features (and probabilities) for lists of image files or decoded images.

    `workers`: threads decoding images ahead of the network (0 = decode in the calling thread).
    `engine`: "auto" (ONNX Runtime on a CPU, PyTorch on CUDA/MPS), "onnx" or "torch".
    `export_dir`: folder for the exported ONNX file (default: default_export_dir(), under $XDG_CACHE_HOME or ~/.cache).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        batch_size: int = 32,
        flip_average: bool = True,
        workers: int = 2,
        device: str | torch.device | None = None,
        engine: str = "auto",
        export_dir: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}: must be >= 1")
        if workers < 0:
            raise ValueError(f"workers = {workers}: must be >= 0")
        if engine not in ENGINES:
            raise ValueError(f"engine = {engine!r}: allowed values are {', '.join(ENGINES)}")
        self.spec = spec
        self.preprocess = Preprocess.from_spec(spec)
        self.batch_size = batch_size
        self.flip_average = flip_average
        self.workers = workers
        if device is None:  # "onnx" forces ONNX Runtime, which runs on the CPU even beside a GPU
            device = "cpu" if engine == "onnx" else default_device()
        self.device = torch.device(device)
        if engine == "onnx" and self.device.type != "cpu":
            raise ValueError(f"engine 'onnx' runs on the CPU, not on device {self.device}")
        self.engine_name = engine if engine != "auto" else ("onnx" if self.device.type == "cpu" else "torch")
        self.export_dir = export_dir
        self.model = model.eval()
        self.body = model.backbone if isinstance(model, ImageClassifier) else model
        # The head runs in numpy on the (N, D) features: tiny, and the same for every engine.
        self._head: tuple[np.ndarray, np.ndarray] | None = None
        if isinstance(model, ImageClassifier):
            self._head = (model.head.weight.detach().cpu().float().numpy().T.copy(),
                          model.head.bias.detach().cpu().float().numpy().copy())
        self._engine: _OnnxEngine | _TorchEngine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> _OnnxEngine | _TorchEngine:
        """Built on first use, so a run whose features all come from the cache never exports."""
        with self._lock:
            if self._engine is None:
                if self.engine_name == "onnx":
                    self._engine = _OnnxEngine(self.body, self.preprocess, self.export_dir)
                else:
                    self._engine = _TorchEngine(self.body, self.preprocess, self.device)
            return self._engine

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        """(N, R, R, 3) uint8 -> (N, D) float32, flip-averaged when asked."""
        if not self.flip_average:
            return self._run(pixels)
        both = self._run(np.concatenate([pixels, pixels[:, :, ::-1]]))
        return (both[: len(pixels)] + both[len(pixels):]) * np.float32(0.5)

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        engine = self.engine
        try:
            return engine(pixels)
        except Exception as e:  # ONNX Runtime's errors are plain Exceptions, not RuntimeErrors
            if not is_out_of_memory(e):
                raise
            # Memory grows with the batch (flip averaging doubles it) and with the square of the side.
            n = len(pixels) // (2 if self.flip_average else 1)
            flipped = " and their mirror images (flip averaging)" if self.flip_average else ""
            if n > 1:
                advice = f"lower run_mbSize (now {self.batch_size}; try {n // 2}), or leave this process more memory"
            else:  # one image: a smaller run_mbSize there is not (it said "now 1; try 1")
                advice = "run_mbSize is 1 already: " + (
                    "set run_boFlipAverage = False (half the memory), or leave this process more memory"
                    if self.flip_average else "leave this process more memory")
            raise FeaturizeOutOfMemoryError(
                f"out of memory running {engine.name} on {n} image{'s' if n != 1 else ''}{flipped} of "
                f"{self.preprocess.resolution} px at once: {advice} ({_oom_detail(e)})") from e

    def _probs(self, feats: np.ndarray) -> np.ndarray | None:
        if self._head is None:
            return None
        logits = feats @ self._head[0] + self._head[1]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def _empty(self, n: int) -> FeatureResult:
        probs = np.zeros((n, len(self.spec.classes)), np.float32) if self._head is not None else None
        return FeatureResult(np.zeros((n, self.spec.feature_dim), np.float32), probs)

    def _put(self, out: FeatureResult, start: int, pixels: np.ndarray) -> None:
        feats = self._features(pixels)
        out.features[start:start + len(feats)] = feats
        if out.probs is not None:
            out.probs[start:start + len(feats)] = self._probs(feats)

    def featurize_arrays(self, images: np.ndarray) -> FeatureResult:
        """Images already decoded and resized: (N, R, R, 3) uint8."""
        images = np.asarray(images)
        r = self.preprocess.resolution
        if images.ndim != 4 or images.shape[1:] != (r, r, 3) or images.dtype != np.uint8:
            raise ValueError(f"images: expected (N, {r}, {r}, 3) uint8, got {images.shape} {images.dtype}")
        out = self._empty(len(images))
        for start in range(0, len(images), self.batch_size):
            self._put(out, start, images[start:start + self.batch_size])
        return out

    def featurize_paths(
        self,
        paths: Sequence[str | Path],
        progress: bool = True,
        desc: str = "featurize",
        cache: FeatureCache | None = None,
    ) -> FeatureResult:
        """Features of image files, in order. With `cache`, only files it does not hold are decoded,
        and what is computed goes into it every CACHE_SAVE_SECONDS and when the run stops for any
        reason (an interrupt, a file that no longer decodes): a rerun continues from there."""
        if isinstance(paths, (str, bytes, os.PathLike)):  # a str is a Sequence too: of one-letter "files"
            raise TypeError(f"paths = {paths!r}: expected a list of image files (one image: [path])")
        paths = list(paths)
        out = self._empty(len(paths))
        todo = list(range(len(paths)))
        keys: list[str] = []
        if cache is not None:
            keys = [cache.file_key(p) for p in paths]
            todo = cache.fill(keys, out)
        done: list[int] = []
        saved, last_save, save_every = 0, time.monotonic(), CACHE_SAVE_SECONDS
        try:
            # Nothing to compute (all from the cache): no bar, which would print a finished line twice.
            with progress_bar(total=len(paths), initial=len(paths) - len(todo), desc=desc, unit="img",
                              disable=not progress or not todo) as bar:
                for start, pixels in _decoded_batches([paths[i] for i in todo], self.preprocess, self.batch_size,
                                                      self.workers):
                    feats = self._features(pixels)
                    rows = todo[start:start + len(pixels)]
                    out.features[rows] = feats
                    if out.probs is not None:
                        out.probs[rows] = self._probs(feats)
                    done += rows
                    bar.update(len(pixels))
                    if cache is not None and time.monotonic() - last_save > save_every:
                        began = time.monotonic()
                        cache.update(keys, out, done)
                        saved, last_save = len(done), time.monotonic()
                        # Each save rewrites the whole cache: a large one is saved less often, so that
                        # saving takes at most about a tenth of the run.
                        save_every = max(CACHE_SAVE_SECONDS, 10 * (last_save - began))
        finally:
            if cache is not None and len(done) > saved:
                try:
                    cache.update(keys, out, done)
                except OSError as e:  # disk full, read-only folder: the error that stopped the run matters more
                    warnings.warn(f"could not save the features computed so far to {cache.path}: {e}", stacklevel=2)
        return out


def _decoded_batches(
    paths: list[str | Path], preprocess: Preprocess, batch_size: int, workers: int, ahead: int = 2
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, (n, R, R, 3) uint8) batches in order; threads decode up to `ahead` batches ahead.

    Only `ahead` + 1 batches of pixels exist at any time, whatever the number of images.
    """
    r = preprocess.resolution

    def decode_into(buf: np.ndarray, j: int, path: str | Path) -> None:
        buf[j] = preprocess.load(path)

    starts = list(range(0, len(paths), batch_size))
    if workers == 0:
        for s in starts:
            chunk = paths[s:s + batch_size]
            buf = np.empty((len(chunk), r, r, 3), np.uint8)
            for j, p in enumerate(chunk):
                decode_into(buf, j, p)
            yield s, buf
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[int, np.ndarray, list[Future[Any]]]] = deque()

        def submit(s: int) -> None:
            chunk = paths[s:s + batch_size]
            buf = np.empty((len(chunk), r, r, 3), np.uint8)
            pending.append((s, buf, [pool.submit(decode_into, buf, j, p) for j, p in enumerate(chunk)]))

        next_batch = 0
        try:
            while next_batch < len(starts) or pending:
                while next_batch < len(starts) and len(pending) <= ahead:
                    submit(starts[next_batch])
                    next_batch += 1
                s, buf, futures = pending.popleft()
                for f in futures:
                    f.result()  # re-raises a decode error, which names the file
                yield s, buf
        finally:
            for _, _, futures in pending:
                for f in futures:
                    f.cancel()


class FeatureCache:
    """Features from earlier runs, reused when the model file, preprocessing and image bytes match.

    One .npz per configuration under `folder`, named by the hash of (model file content, resolution,
    resize mode, flip averaging); inside, one row per image content hash. A changed image gets a new
    content hash (so it is recomputed), a changed model file or resolution a new cache file. File
    hashes are remembered with each file's size and mtime, so unchanged files are not re-read.
    The newest `keep` configurations are kept; older cache files are deleted.
    """

    def __init__(self, folder: str | Path, model_file: str | Path, spec: ModelSpec, flip_average: bool, keep: int = 4) -> None:
        self.folder = Path(folder)
        self.keep = keep
        config = {"model": file_hash(model_file), "resolution": spec.resolution, "resize_mode": spec.resize_mode,
                  "flip_average": bool(flip_average), "kind": spec.kind,
                  "decode": DECODE_VERSION}  # features of images decoded otherwise are stale
        self.key = hashlib.sha256(repr(sorted(config.items())).encode()).hexdigest()[:16]
        self.path = self.folder / f"features_{spec.kind}_{self.key}.npz"
        self._stats: dict[str, tuple[tuple[int, int, int], str]] = {}  # path -> (fileio.file_stamp, content hash)
        self._rows: dict[str, int] = {}
        self._data: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0
        if self.path.is_file():
            try:
                self._data = load_npz(self.path)
                self._rows = {k: i for i, k in enumerate(self._data["keys"].tolist())}
                # A cache written before inodes were recorded: -1, so each file is hashed once more
                # (its features are kept: they are found by the content hash).
                inodes = self._data["stat_inodes"].tolist() if "stat_inodes" in self._data else \
                    [-1] * len(self._data["stat_paths"])
                for p, size, mtime, ino, key in zip(self._data["stat_paths"].tolist(), self._data["stat_sizes"].tolist(),
                                                    self._data["stat_mtimes"].tolist(), inodes,
                                                    self._data["stat_keys"].tolist()):
                    self._stats[p] = ((size, mtime, ino), key)
            except (OSError, ValueError, KeyError):
                self._data, self._rows, self._stats = {}, {}, {}  # unreadable cache: recompute, then overwrite

    def file_key(self, path: str | Path) -> str:
        """Content hash of an image file, re-read only when its size, mtime or inode changed."""
        stamp = file_stamp(path)
        name = str(Path(path).resolve())
        known = self._stats.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        key = file_hash(path)
        self._stats[name] = (stamp, key)
        return key

    def fill(self, keys: list[str], out: FeatureResult) -> list[int]:
        """Copy cached rows into `out`; return the indices that still need computing."""
        todo = []
        for i, k in enumerate(keys):
            row = self._rows.get(k)
            if row is None or (out.probs is not None) != ("probs" in self._data):
                todo.append(i)
                continue
            out.features[i] = self._data["features"][row]
            if out.probs is not None:
                out.probs[i] = self._data["probs"][row]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        return todo

    def update(self, keys: list[str], result: FeatureResult, rows: Sequence[int] | None = None) -> Path:
        """Add these rows (only `rows` of them when given: those computed so far; old rows stay: train
        and test share one cache) and write atomically."""
        new = {keys[i]: i for i in (range(len(keys)) if rows is None else rows) if keys[i] not in self._rows}
        old_keys = list(self._rows)
        all_keys = old_keys + list(new)
        idx = list(new.values())
        features = result.features[idx]
        if old_keys:
            features = np.concatenate([self._data["features"], features])
        arrays = {"keys": np.array(all_keys, dtype="U32"), "features": features}
        if result.probs is not None:
            probs = result.probs[idx]
            arrays["probs"] = np.concatenate([self._data["probs"], probs]) if old_keys else probs
        stat_items = list(self._stats.items())
        arrays["stat_paths"] = np.array([p for p, _ in stat_items], dtype=str)
        arrays["stat_sizes"] = np.array([s[0][0] for _, s in stat_items], dtype=np.int64)
        arrays["stat_mtimes"] = np.array([s[0][1] for _, s in stat_items], dtype=np.int64)
        # uint64: inode numbers of some file systems use all 64 bits (-1, "not recorded", wraps to the largest).
        arrays["stat_inodes"] = np.array([s[0][2] % 2 ** 64 for _, s in stat_items], dtype=np.uint64)
        arrays["stat_keys"] = np.array([s[1] for _, s in stat_items], dtype="U32")
        save_npz(self.path, **arrays)
        self._data = arrays
        self._rows = {k: i for i, k in enumerate(all_keys)}
        self._prune()
        return self.path

    def _prune(self) -> None:
        kind = self.path.name.split("_")[1]
        others = _newest_first(self.folder.glob(f"features_{kind}_*.npz"))
        for old in others[self.keep:]:
            old.unlink(missing_ok=True)


def default_device() -> torch.device:
    """CUDA, else Apple MPS, else the CPU (with all its cores for the convolutions)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    torch.set_num_threads(usable_cpus())
    return torch.device("cpu")


def mirror_note(flip_average: bool, train_flips: bool) -> str | None:
    """A word when the parameters disagree about mirror images: aug_boHorizontalFlip = False says a
    mirror image may be of another class (text, a left-facing logo), and run_boFlipAverage = True
    then averages each image's features with those of what may be another class."""
    if not flip_average or train_flips:
        return None
    return ("run_boFlipAverage = True averages each image's features with its mirror image's, while "
            "aug_boHorizontalFlip = False says a mirror image may change the class: for such classes set "
            "run_boFlipAverage = False")


def device_name(device: torch.device) -> str:
    """What a stage prints for where it runs: "cuda:0 (NVIDIA H200)", "mps (Apple GPU)", "cpu (2 threads)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
