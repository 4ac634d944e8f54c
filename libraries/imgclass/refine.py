"""Refine an ImageNet-pretrained network on the training images (the tutorial's Part 2).

A new last layer with one output per class goes on the penultimate features, with dropout before
it; then either the whole network is trained (default) or only that layer (`freeze_weights`).

Why it is fast on a CPU:
- every training image is decoded and resized ONCE into a uint8 cache in memory (slightly larger than
  the input, so random crops stay sharp); epochs then only augment tensors (augment.Augmenter);
- channels-last memory layout, which the CPU convolution kernels prefer;
- BatchNorm that keeps its statistics runs folded into the convolution before it
  (backbones.folded_batchnorm: same numbers and gradients, two memory passes fewer per layer);
- freed activation memory is kept for the next minibatch instead of being unmapped and
  page-faulted in again (keep_freed_memory, glibc);
- float32 on a CPU (bfloat16 autocast only on a CUDA GPU): bf16 was slower on CPUs with and without
  bf16 instructions (see bf16_supported).

The model saved at the end: the weights averaged over the last `average_last_epochs` epochs
(WeightAverage), then the last layer fitted again on the clean training features (`refit_last_layer`),
of the training images decoded as stage 3 decodes them.

What is reported per epoch: training loss and error (on the augmented minibatches, as the tutorial)
and the test error. The test set is only reported: the number of epochs and the learning rates are
fixed in advance, nothing is chosen by looking at it.

Deterministic on the CPU for a fixed seed: shuffling and augmentation draw from one seeded
generator, dropout from torch's seeded global one, and a checkpoint stores both, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgclass.augment import Augmenter
from imgclass.backbones import folded_batchnorm
from imgclass.cpus import OutOfMemoryAdvice, cgroup_memory_available
from imgclass.features import default_device, is_out_of_memory
from imgclass.fileio import atomic_path, hold_lock, lock_holder, read_json, write_json
from imgclass.images import MAX_RESOLUTION, MIN_RESOLUTION, load_square
from imgclass.modelfile import ImageClassifier, ModelSpec, build_model, load_model_extra
from imgclass.progress import progress_bar

if TYPE_CHECKING:
    from imgclass.params import Params

CACHE_MARGIN = 1.15  # training images are cached this much larger than the input, for crops


# Each RefineConfig field and the parameter of PARAMETERS.py it comes from.
PARAM_OF_FIELD = {
    "backbone": "rf_pretrainedModel", "resolution": "rf_inputResolution", "resize_mode": "rf_resizeMode",
    "dropout": "rf_dropoutRate", "mb_size": "rf_mbSize", "max_epochs": "rf_maxEpochs",
    "max_train_images": "rf_maxTrainImages", "lr_per_mb": "rf_lrPerMb", "head_lr_factor": "rf_headLrFactor",
    "momentum": "rf_momentumPerMb", "l2_reg_weight": "rf_l2RegWeight", "freeze_weights": "rf_boFreezeWeights",
    "freeze_batchnorm": "rf_boFreezeBatchNorm", "init_last_layer": "rf_boInitLastLayer",
    "refit_last_layer": "rf_boRefitLastLayer", "average_last_epochs": "rf_averageLastEpochs",
    "balance_training_set": "rf_boBalanceTrainingSet", "aug_crop_scale_min": "aug_cropScaleMin",
    "aug_rotation_deg": "aug_rotationDegrees", "aug_flip": "aug_boHorizontalFlip",
    "aug_color_jitter": "aug_colorJitter", "seed": "randomSeed", "workers": "rf_workers",
    "weights_dir": "rf_weightsDir", "max_grad_norm": "rf_maxGradNorm",
}

# Settings added after files were first written, with the value those files were made with: a
# checkpoint or model file without one was made so (not "with other settings").
ADDED_LATER = {"max_grad_norm": 0.0}

# What to do with a checkpoint that cannot be continued (stage 2 refuses to overwrite one silently).
RESTART = "start afresh with scripts/2_refineDNN.py --restart (it deletes the checkpoint)"


class RefineOutOfMemoryError(OutOfMemoryAdvice):
    """Training ran out of memory; the message says which parameters to lower."""


@dataclass(frozen=True)
class RefineConfig:
    """How to refine; names follow the tutorial's rf_* parameters (see PARAMETERS.py)."""

    backbone: str = "efficientnet_lite0"
    resolution: int = 320
    resize_mode: str = "crop"
    dropout: float = 0.5
    mb_size: int = 32
    max_epochs: int = 8
    max_train_images: int = 0  # 0 = all
    lr_per_mb: tuple[float, ...] = (0.0003,) * 6 + (0.0001,) * 2  # per epoch; the last value repeats
    head_lr_factor: float = 10.0
    momentum: float = 0.9
    l2_reg_weight: float = 5e-4
    freeze_weights: bool = False
    freeze_batchnorm: bool = True
    init_last_layer: bool = True
    refit_last_layer: bool = True
    average_last_epochs: int = 4  # all epochs if fewer; 0 or 1: keep the last epoch's weights
    balance_training_set: bool = False
    aug_crop_scale_min: float = 0.6
    aug_rotation_deg: float = 10.0
    aug_flip: bool = True
    aug_color_jitter: float = 0.2
    seed: int = 0
    workers: int = 2
    weights_dir: str = ""
    max_grad_norm: float = 0.0  # 0 = no clipping

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_per_mb", tuple(float(v) for v in self.lr_per_mb))
        checks = {  # name: (valid, what is expected)
            "mb_size": (self.mb_size >= 1, "at least 1"), "max_epochs": (self.max_epochs >= 1, "at least 1"),
            "max_train_images": (self.max_train_images >= 0, "0 (all) or more"),
            "lr_per_mb": (bool(self.lr_per_mb) and min(self.lr_per_mb) > 0, "one or more values, all above 0"),
            "momentum": (0.0 <= self.momentum < 1.0, "in [0, 1)"), "l2_reg_weight": (self.l2_reg_weight >= 0, "0 or more"),
            "dropout": (0.0 <= self.dropout < 1.0, "in [0, 1)"), "head_lr_factor": (self.head_lr_factor > 0, "above 0"),
            "resolution": (MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION,
                           f"{MIN_RESOLUTION} to {MAX_RESOLUTION} pixels"), "workers": (self.workers >= 0, "0 or more"),
            "average_last_epochs": (self.average_last_epochs >= 0, "0 or more"),
            "max_grad_norm": (self.max_grad_norm >= 0, "0 (off) or more"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"RefineConfig.{name} = {getattr(self, name)!r}: expected {expected}")
        self.augmenter()  # validates the aug_* values

    @classmethod
    def from_params(cls, p: Params) -> RefineConfig:
        return cls(**{name: p[param] for name, param in PARAM_OF_FIELD.items()})

    def averages(self, epoch: int) -> bool:
        """Whether the weights after `epoch` (0-based) go into the average of the last epochs."""
        return self.average_last_epochs >= 2 and epoch >= self.max_epochs - self.average_last_epochs

    def lr_at(self, epoch: int) -> float:
        return self.lr_per_mb[min(epoch, len(self.lr_per_mb) - 1)]

    def schedule_note(self) -> str:
        """A word when a shortened run is not the default schedule in brief: fewer epochs than rates
        leave the later (lower) rates unused, and fewer epochs than rf_averageLastEpochs put the
        first epochs, the furthest from where training ends, into the saved average."""
        notes = []
        unused = sorted(set(self.lr_per_mb[self.max_epochs:]) - set(self.lr_per_mb[:self.max_epochs]))
        if unused:
            notes.append(f"rf_lrPerMb lists {len(self.lr_per_mb)} rates and rf_maxEpochs = {self.max_epochs}: the "
                         f"rate(s) {', '.join(f'{v:g}' for v in unused)} of the later epochs are never used; give "
                         f"rf_lrPerMb one rate per epoch to shorten the schedule itself")
        if 2 <= self.max_epochs <= self.average_last_epochs:
            notes.append(f"rf_averageLastEpochs = {self.average_last_epochs} and rf_maxEpochs = {self.max_epochs}: the "
                         f"saved weights are the average of all {self.max_epochs} epochs, the first included; "
                         f"rf_averageLastEpochs = {self.max_epochs - 1} would leave it out")
        return "; and ".join(notes)

    def augmenter(self) -> Augmenter:
        return Augmenter(self.resolution, self.aug_crop_scale_min, self.aug_rotation_deg, self.aug_flip,
                         self.aug_color_jitter)

    @property
    def cache_size(self) -> int:
        return self.resolution if self.augmenter().is_identity else math.ceil(self.resolution * CACHE_MARGIN)

    def settings(self) -> dict[str, Any]:
        """The values that shaped the refined network, under their PARAMETERS.py names: every field but
        how many processes decode and where weights are read from. Stage 2 records them in the model
        file; stages 3-5 refuse other values (imgclass.provenance.check_model_settings)."""
        return {param: list(v) if isinstance(v := getattr(self, name), tuple) else v
                for name, param in PARAM_OF_FIELD.items() if name not in ("workers", "weights_dir")}

    def resume_key(self) -> dict[str, Any]:
        """What must match for a checkpoint to be continued (more epochs or other workers are fine)."""
        d = asdict(self)
        for free in ("max_epochs", "workers", "weights_dir", "refit_last_layer"):
            d.pop(free)
        d["lr_per_mb"] = list(d["lr_per_mb"])
        return d


@dataclass
class History:
    """Per-epoch figures; saved as training_curves.json (lists of equal length; stage 2 adds the saved
    model's `saved_test_error` and `saved_as`, which from_json ignores)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    test_error: list[float | None] = field(default_factory=list)  # None: no test set given
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, list]) -> History:
        return cls(**{k: list(v) for k, v in d.items() if k in cls.__dataclass_fields__})


class WeightAverage:
    """Running mean of a network's weights taken at the ends of epochs (stochastic weight averaging,
    Izmailov et al. 2018). With a constant or slowly falling rate, SGD's last epochs wander around a
    minimum; their mean lies nearer its centre, where a small training set's test error is less
    sensitive to which epoch training happened to stop at. Integer buffers keep the latest value."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.epochs: list[int] = []  # 1-based, as History.epoch

    @torch.no_grad()
    def add(self, model: torch.nn.Module, epoch: int) -> None:
        current = model.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in current.items()}
        else:
            weight = 1.0 / (len(self.epochs) + 1)
            for k, v in current.items():
                if v.is_floating_point():
                    self.state[k].add_(v - self.state[k], alpha=weight)
                else:
                    self.state[k].copy_(v)
        self.epochs.append(epoch)

    def span(self) -> str:
        return f"epochs {self.epochs[0]}-{self.epochs[-1]}" if len(self.epochs) > 1 else f"epoch {self.epochs[0]}"


def balanced_indices(labels: Sequence[int], n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices where every class appears as often as the largest one: each image once, plus randomly
    chosen duplicates of the smaller classes' images (spread evenly: no image twice before all once)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=n_classes)
    target = counts.max()
    out = []
    for c in range(n_classes):
        own = np.flatnonzero(labels == c)
        if len(own) == 0:
            continue
        extra = target - len(own)
        reps = [own] * (extra // len(own)) + [rng.choice(own, extra % len(own), replace=False)]
        out.append(np.concatenate([own, *reps]))
    return np.sort(np.concatenate(out))


def decode_images(paths: Sequence[str | Path], size: int, resize_mode: str, workers: int = 2,
                  desc: str = "decode", progress: bool = True, spill_dir: str | Path | None = None) -> torch.Tensor:
    """Decode and resize every image once: (N, 3, size, size) uint8, in `workers` processes.

    The result lives in memory when it takes at most half the memory available now; otherwise in a
    file in `spill_dir` (default: the system's temporary folder), mapped into memory and deleted once
    nothing uses it, so that a data set larger than memory trains instead of being killed by the OS."""
    paths = [str(p) for p in paths]
    if missing := [p for p in paths if not os.path.isfile(p)]:
        raise FileNotFoundError(f"{missing[0]}: no such file ({len(missing)} of the {len(paths)} images to decode are "
                                f"missing: moved or deleted since stage 1? rerun scripts/1_prepareData.py)")
    cache = _uint8_array((len(paths), 3, size, size), spill_dir, f"caching {len(paths)} images of {size} px",
                         progress)
    dataset = _Decoded(paths, size, resize_mode)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=16, num_workers=min(workers, max(1, len(paths) // 16)) if workers else 0,
        collate_fn=_stack_chw,
    )
    i = 0
    with progress_bar(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        try:
            for batch in loader:
                cache[i:i + len(batch)] = batch
                i += len(batch)
                bar.update(len(batch))
        except (OSError, ValueError) as e:  # ImageDecodeError is a ValueError
            if workers and len(str(e).splitlines()) > 1:
                # From a decoding process: torch puts the whole traceback in the message; its last
                # line is the error, which names the file.
                try:
                    clean = type(e)(_last_line(e))
                except TypeError:  # an error class that wants other arguments (UnicodeDecodeError)
                    clean = ValueError(_last_line(e))
                raise clean from e
            raise
    return cache


def _last_line(e: BaseException) -> str:
    """The last line of an error's message (for an error from a DataLoader process, the original
    error: torch puts its traceback before it), at most 300 characters."""
    last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    # The traceback's last line starts with the error's qualified class name: the message is what follows.
    for name in (f"{type(e).__module__}.{type(e).__qualname__}: ", f"{type(e).__qualname__}: "):
        last = last.removeprefix(name)
    return ("..." + last[-300:]) if len(last) > 300 else last


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping (None: unknown): the machine's,
    and no more than a cgroup memory limit leaves (`docker run --memory=4g` on a 128 GB host: at most
    4 GB, where the machine's figure alone would say ~100 GB and the OOM killer would end the process,
    without a message, while it filled them)."""
    known = [m for m in (_machine_available_memory(), cgroup_memory_available()) if m is not None]
    return min(known) if known else None


def _machine_available_memory() -> int | None:
    """The whole machine's available memory (psutil, else /proc/meminfo's MemAvailable; None: neither)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _uint8_array(shape: tuple[int, ...], spill_dir: str | Path | None, doing: str, progress: bool) -> torch.Tensor:
    """An uninitialised uint8 tensor: in memory if it fits comfortably, else file-backed (see decode_images).

    Linux lets a process allocate more than it can ever fill and kills it later, without a message,
    when it does; so the size is compared with the available memory first rather than trusting
    torch.empty to fail."""
    nbytes = math.prod(shape)
    available = available_memory()
    if available is None or nbytes <= available // 2:
        try:
            return torch.empty(shape, dtype=torch.uint8)
        except RuntimeError as e:
            raise _oom(e, doing) from e
    folder = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise RefineOutOfMemoryError(
            f"out of memory while {doing}: that needs {nbytes / 1e9:.1f} GB, more than half the "
            f"{available / 1e9:.1f} GB of memory available and more than the {free / 1e9:.1f} GB free in "
            f"{folder}; limit rf_maxTrainImages or lower rf_inputResolution")
    fd, name = tempfile.mkstemp(prefix="imgclass_decoded_", suffix=".u8", dir=folder)
    os.close(fd)
    array = np.memmap(name, dtype=np.uint8, mode="w+", shape=shape)
    try:
        os.unlink(name)  # POSIX: the mapping keeps the data; the disk space returns when it is dropped
    except OSError:  # Windows cannot delete a mapped file: delete it when the process ends
        import atexit

        def remove() -> None:
            # A mapping still open at exit keeps it locked: left in the temporary folder then,
            # rather than a PermissionError traceback after the stage's own last line.
            with contextlib.suppress(OSError):
                Path(name).unlink(missing_ok=True)

        atexit.register(remove)
    if progress:
        print(f"{doing}: {nbytes / 1e9:.1f} GB, more than half the {available / 1e9:.1f} GB of memory "
              f"available, so they go to a file in {folder} (mapped into memory; deleted afterwards)", flush=True)
    return torch.from_numpy(array)


def _stack_chw(items: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2)


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int, resize_mode: str) -> None:
        self.paths, self.size, self.resize_mode = paths, size, resize_mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return load_square(self.paths[i], self.size, self.resize_mode)


def _oom(e: BaseException, doing: str) -> BaseException:
    """Out-of-memory errors become advice; anything else passes through unchanged."""
    if not is_out_of_memory(e):
        return e
    return RefineOutOfMemoryError(
        f"out of memory while {doing}: lower rf_mbSize (now too large for this machine) or "
        f"rf_inputResolution, or limit rf_maxTrainImages, or leave this process more memory ({e})"
    )


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Deterministic kernels wherever torch has a choice (that matters on GPUs), restored on leaving.

    Without torch's companion default of filling every new tensor with NaN first: that is one more
    pass over every activation of every step, and it guards only against kernels reading memory they
    never wrote, which would break the same-seed-same-result test anyway.
    """
    import torch.utils.deterministic

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def keep_freed_memory() -> bool:
    """From now on, memory that a minibatch frees stays in this process for the next one (glibc only).

    glibc's malloc gives every block over 32 MB (each activation of a minibatch) its own fresh mapping
    from the OS and unmaps it when freed, so every training step page-faults in and zero-fills all
    its activations again: about a third of a CPU training step here (1.3 s instead of 2.0 s per
    minibatch of 32 at 224 px, measured). Serving large blocks from the heap and not trimming it
    avoids that; the price is that the process keeps its peak memory until it exits, which a stage
    script does right after training. The usual advice, preloading jemalloc or tcmalloc, needs a
    library installed and set up before Python starts; this needs neither. Returns whether it applied.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def _glibc() -> Any:
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def bf16_supported(device: torch.device) -> bool:
    """bfloat16 autocast on a CUDA GPU that has it; never on a CPU. Emulated bf16 (AVX2) is slower than
    float32, and so was native bf16 where measured: on a 2-core Xeon with AVX512-BF16 and AMX, this
    project's training steps ran at 13.6-15.2 img/s with bf16 against 21.3-25.6 img/s in float32
    (224 px, minibatch 32, EfficientNet-Lite0, alternating runs in one process, 2026-11-30): the
    depthwise convolutions and the casts cost more than the bf16 matrix units save. float32 on every
    CPU also keeps results comparable from one CPU to another."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else the one featurization uses (CUDA, else Apple MPS, else all CPU cores)."""
    return torch.device(device) if device is not None else default_device()


class Refiner:
    """fit(train images, labels[, test images, labels]) -> a refined ImageClassifier in `model_`.

    `checkpoint`: a file written (atomically) after every epoch; with `resume=True` a run continues
    from it. `on_epoch(history)` is called after every epoch (e.g. to redraw the curves).
    `spill_dir`: where decoded images go when they do not fit in memory (see decode_images).
    `held_out_name`: what the progress lines call the images passed to `fit` as test images.
    """

    def __init__(self, config: RefineConfig, classes: Sequence[str], device: str | torch.device | None = None,
                 progress: bool = True, mixed_precision: bool | None = None,
                 spill_dir: str | Path | None = None, held_out_name: str = "test") -> None:
        if len(classes) < 2:
            raise ValueError(f"need at least two classes, got {list(classes)}")
        if config.max_train_images and config.max_train_images < len(classes):  # said before any work starts
            raise ValueError(f"rf_maxTrainImages = {config.max_train_images} is fewer than the {len(classes)} classes: "
                             f"every class needs a training image (0 = all)")
        self.config = config
        self.classes = tuple(classes)
        self.device = pick_device(device)
        self.progress = progress
        self.spill_dir = spill_dir
        self.held_out_name = held_out_name
        self.class_averaged_error_: float | None = None  # of the last error_rate call
        self._data_key = ""  # identifies the training images and labels of the current fit
        self.mixed_precision = bf16_supported(self.device) if mixed_precision is None else mixed_precision
        self.spec = ModelSpec(config.backbone, config.resolution, config.resize_mode, kind="refined",
                              classes=self.classes, dropout=config.dropout)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels in [0, 255] on the device -> the backbone's normalised input, channels-last."""
        mean = torch.tensor(self.spec.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.spec.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    # -- data ----------------------------------------------------------------------------------
    def _select_train(self, labels: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed)
        idx = np.arange(len(labels))
        cap = self.config.max_train_images
        if cap and len(idx) > cap:
            # One image of every class first: a class the cap left out entirely would still have an
            # output, which the last-layer fit would learn never to choose.
            present = np.unique(labels)  # (the cap is at least the number of classes: see __init__)
            first = np.array([rng.choice(np.flatnonzero(labels == c)) for c in present])
            rest = rng.choice(np.setdiff1d(idx, first), cap - len(first), replace=False)
            idx = np.sort(np.concatenate([first, rest]))
        if self.config.balance_training_set:
            idx = idx[balanced_indices(labels[idx], len(self.classes), rng)]
        return idx

    # -- model ---------------------------------------------------------------------------------
    def _build(self) -> tuple[ImageClassifier, torch.optim.Optimizer]:
        c = self.config
        torch.manual_seed(c.seed)  # the new layer's initial weights
        model = build_model(self.spec, pretrained=True, weights_dir=c.weights_dir or None)
        assert isinstance(model, ImageClassifier)
        model = model.to(self.device).to(memory_format=torch.channels_last)
        if c.freeze_weights:
            for prm in model.backbone.parameters():
                prm.requires_grad_(False)
        # The new layer starts from random: it gets a larger step than the pretrained layers.
        groups = [{"params": list(model.head.parameters()), "lr_factor": c.head_lr_factor}]
        if not c.freeze_weights:
            groups.append({"params": list(model.backbone.parameters()), "lr_factor": 1.0})
        opt = torch.optim.SGD(groups, lr=c.lr_at(0), momentum=c.momentum, weight_decay=c.l2_reg_weight)
        return model, opt

    def _train_mode(self, model: ImageClassifier) -> None:
        model.train()
        if self.config.freeze_weights:
            model.backbone.eval()  # frozen means frozen: BatchNorm statistics too
        elif self.config.freeze_batchnorm:
            # Keep ImageNet's BatchNorm statistics: a few hundred images in minibatches of 32 make
            # noisy estimates, and training then sees the same normalisation as evaluation.
            for m in model.backbone.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # -- checkpoint ----------------------------------------------------------------------------
    def _save_checkpoint(self, path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                         gen: torch.Generator, history: History, average: WeightAverage) -> None:
        payload = {
            "average": average.state,
            "average_epochs_json": json.dumps(average.epochs),
            "key_json": json.dumps(self.config.resume_key()),
            "max_epochs": self.config.max_epochs,  # may change on resume (see _read_checkpoint), named when it matters
            "classes_json": json.dumps(list(self.classes)),
            "data_key": self._data_key,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            # Dropout on a GPU draws from the device's generator: resume must continue it too.
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            # ... and on Apple's GPU from the MPS generator (torch.manual_seed seeds it; nothing else restores it).
            **({"mps_rng": torch.mps.get_rng_state()} if self.device.type == "mps" else {}),
            "history_json": json.dumps(history.to_json()),
            # What collapse_note judges the refined features by: the fit came before the first epoch.
            "initial_fit_error_json": json.dumps(self.initial_fit_error_),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    def check_resumable(self, path: Path) -> None:
        """Refuse (ValueError) a checkpoint these settings and classes cannot continue, as fit(resume=True)
        would: a stage can say so before it describes a run that will not happen. (The training images
        are checked by fit.)"""
        self._check_settings(*self._load_checkpoint(path), path)

    def _read_checkpoint(self, path: Path) -> tuple[dict[str, Any], History]:
        """The checkpoint at `path` and its history, refused (ValueError) unless this run can continue
        it to the result an uninterrupted run would give. Read before the images are decoded, so a
        refusal costs no minutes of decoding."""
        payload, history = self._load_checkpoint(path)
        self._check_settings(payload, history, path)
        if payload.get("data_key", self._data_key) != self._data_key:
            raise ValueError(f"{path} was written while training on other images or labels (stage 1 ran "
                             f"again since?); {RESTART}")
        return payload, history

    def _load_checkpoint(self, path: Path) -> tuple[dict[str, Any], History]:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - one clear message for a damaged file
            # Not torch's own text: five lines advising weights_only=False (running the file's code) and
            # an issue report to PyTorch, for a file cut short by a crash or a full disk.
            what = "an empty file (0 bytes)" if path.stat().st_size == 0 else \
                f"damaged or not a PyTorch file: {type(e).__name__}"
            raise ValueError(f"{path}: not a refinement checkpoint ({what}); {RESTART}") from e
        try:
            for name in ("key_json", "classes_json"):  # read here: a damaged file is one clear error
                json.loads(payload[name])
            history = History.from_json(json.loads(payload["history_json"]))
        except Exception as e:  # noqa: BLE001 - one clear message for a damaged file
            raise ValueError(f"{path}: not a refinement checkpoint ({e}); {RESTART}") from e
        return payload, history

    def _check_settings(self, payload: dict[str, Any], history: History, path: Path) -> None:
        key = {**ADDED_LATER, **json.loads(payload["key_json"])}
        classes = json.loads(payload["classes_json"])
        mine = self.config.resume_key()
        if key != mine or classes != list(self.classes):
            # In the parameters' names, with the checkpoint's values: the usual cause is a --set
            # given to the interrupted run and not to this one.
            diff = [f"{PARAM_OF_FIELD.get(k, k)} = {key.get(k)!r} there, {mine.get(k)!r} now"
                    for k in sorted(set(key) | set(mine)) if key.get(k) != mine.get(k)]
            what = "; ".join(diff) if diff else f"classes {classes} there, {list(self.classes)} now"
            raise ValueError(f"{path} was written with other settings ({what}): give the same values again "
                             f"to continue it, or {RESTART}")
        if len(history.epoch) > self.config.max_epochs:
            raise ValueError(f"{path} has {len(history.epoch)} epochs done, more than rf_maxEpochs = "
                             f"{self.config.max_epochs}: set rf_maxEpochs >= {len(history.epoch)}, or {RESTART}")
        epochs = json.loads(payload.get("average_epochs_json", "[]"))
        # rf_maxEpochs may differ from the interrupted run's: the same result as a run of this many
        # epochs from the start needs the epochs done to be averaged as that run would have averaged them.
        wanted = [e for e in history.epoch if self.config.averages(e - 1)]
        if epochs != wanted and wanted:
            there = f" ({payload['max_epochs']} there)" if "max_epochs" in payload else ""
            raise ValueError(f"{path}: with rf_maxEpochs = {self.config.max_epochs}{there}, the saved weights are the "
                             f"average of epochs {wanted[0]}-{self.config.max_epochs}, but the interrupted run averaged "
                             f"{'epochs ' + str(epochs) if epochs else 'none of them'}: give the interrupted run's "
                             f"rf_maxEpochs again to continue it (the same result as an uninterrupted run), or {RESTART}")

    def _restore(self, payload: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                 gen: torch.Generator, average: WeightAverage) -> None:
        """Put the network, optimizer, random generators and weight average back as the checkpoint
        read by _read_checkpoint has them."""
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        self.initial_fit_error_ = json.loads(payload.get("initial_fit_error_json", "null"))  # older checkpoints: none
        gen.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        if self.device.type == "cuda" and payload.get("cuda_rng"):
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        if self.device.type == "mps" and "mps_rng" in payload:
            torch.mps.set_rng_state(payload["mps_rng"])
        epochs = json.loads(payload.get("average_epochs_json", "[]"))
        if epochs and all(self.config.averages(e - 1) for e in epochs):
            # Loaded onto the CPU; the running mean is updated where the model is (CUDA, MPS).
            average.state = {k: v.to(self.device) for k, v in payload["average"].items()}
            average.epochs = epochs
        elif epochs and self.progress:  # more epochs now: those averaged so far fall outside the window
            print(f"the checkpoint's weight average (epochs {epochs}) is outside the last "
                  f"{self.config.average_last_epochs} of {self.config.max_epochs} epochs; it starts afresh")

    # -- training ------------------------------------------------------------------------------
    def fit(self, train_paths: Sequence[str | Path], train_labels: Sequence[int],
            test_paths: Sequence[str | Path] = (), test_labels: Sequence[int] = (),
            checkpoint: str | Path | None = None, resume: bool = False,
            on_epoch: Callable[[History], None] | None = None) -> Refiner:
        keep_freed_memory()
        with deterministic_algorithms():
            try:
                return self._fit(train_paths, train_labels, test_paths, test_labels, checkpoint, resume, on_epoch)
            except RefineOutOfMemoryError:
                raise
            except RuntimeError as e:  # out of memory outside a training step: the last-layer fits, scoring
                advice = _oom(e, "fitting the last layer or scoring the images (in batches of "
                                 f"{self._eval_batch} images, twice rf_mbSize)")
                if advice is e:
                    raise
                raise advice from e

    @property
    def _eval_batch(self) -> int:
        """Images per batch where no gradients are kept (features, scoring): twice a training
        minibatch, which needs less memory than one training step; lowering rf_mbSize lowers it too."""
        return 2 * self.config.mb_size

    def _class_indices(self, paths: Sequence[str | Path], labels: Sequence[int], what: str,
                       empty_ok: bool) -> np.ndarray:
        """`labels` as int64, one per image of `paths`, each a class index; else a ValueError naming `what`."""
        y = np.asarray(labels, dtype=np.int64)
        if len(y) != len(paths) or (len(y) == 0 and not empty_ok):
            raise ValueError(f"{len(paths)} {what} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
            raise ValueError(f"{what} labels must be in 0..{len(self.classes) - 1}")
        return y

    def _fit(self, train_paths: Sequence[str | Path], train_labels: Sequence[int],
             test_paths: Sequence[str | Path], test_labels: Sequence[int], checkpoint: str | Path | None,
             resume: bool, on_epoch: Callable[[History], None] | None) -> Refiner:
        c = self.config
        labels = self._class_indices(train_paths, train_labels, "training", empty_ok=False)
        if len(present := np.unique(labels)) < 2:  # it would learn to answer that class whatever the image
            raise ValueError(f"every training image is of class {self.classes[int(present[0])]!r}: refining needs "
                             "images of two or more classes")
        # Checked here, not where the first epoch's test pass would fail on them with a tensor-shape error.
        test_y_np = self._class_indices(test_paths, test_labels, self.held_out_name, empty_ok=True)
        chosen = self._select_train(labels)
        # A checkpoint continues only the training it was written by: same images, same labels.
        self._data_key = hashlib.blake2b("\n".join(f"{Path(p).as_posix()}\t{y}" for p, y in zip(train_paths, labels))
                                         .encode("utf-8"), digest_size=16).hexdigest()
        ckpt = Path(checkpoint) if checkpoint is not None else None
        resumed = self._read_checkpoint(ckpt) if resume and ckpt is not None and ckpt.is_file() else None
        unique = np.unique(chosen)  # duplicates (class balancing) share one cached copy
        position_t = torch.from_numpy(np.searchsorted(unique, chosen))  # row of each chosen image in the cache
        train_cache = decode_images([train_paths[i] for i in unique], c.cache_size, c.resize_mode,
                                    c.workers, "decode train", self.progress, self.spill_dir)
        train_y = torch.from_numpy(labels[chosen])
        unique_y = torch.from_numpy(labels[unique])  # what the last-layer fits see, each image once
        # ... weighted by how often the epochs draw it, so that a balanced training set stays balanced
        # in the last-layer fits (else the refit would bring back the imbalanced class priors).
        unique_w = torch.from_numpy(np.bincount(np.searchsorted(unique, chosen), minlength=len(unique)).astype(np.float32)) \
            if c.balance_training_set else None
        test_cache = decode_images(test_paths, c.resolution, c.resize_mode, c.workers, f"decode {self.held_out_name}",
                                   self.progress, self.spill_dir) if len(test_paths) else None
        test_y = torch.from_numpy(test_y_np)

        model, opt = self._build()
        gen = torch.Generator().manual_seed(c.seed)
        torch.manual_seed(c.seed + 1)  # dropout
        history, average = History(), WeightAverage()
        # The last layer's training error on the pretrained features, to judge the refined ones by
        # (collapse_note); a resumed run has it from the checkpoint; with neither rf_boInitLastLayer
        # nor rf_boRefitLastLayer (or frozen without the first), none.
        self.initial_fit_error_: float | None = None
        self.collapse_note_ = ""
        self.fallback_ = ""  # "pretrained": refining diverged, the pretrained network saved; "first fit": frozen
        self.resumed_after_ = 0  # epochs the checkpoint had finished
        if resumed is not None:
            payload, history = resumed
            self._restore(payload, model, opt, gen, average)
            self.resumed_after_ = len(history.epoch)
            if self.progress:
                print(f"resuming from {ckpt} after epoch {len(history.epoch)}")
        self._train_mode(model)
        # BatchNorm layers that keep their statistics (in eval mode now) are folded into the
        # convolutions before them: same numbers and gradients, a quarter less time per CPU step.
        # BatchNorm that re-estimates its statistics is in training mode and left alone.
        with folded_batchnorm(model.backbone):
            if not history.epoch and c.init_last_layer:
                self.initial_fit_error_ = self.fit_last_layer(model, train_cache, unique_y, weights=unique_w)
            elif not history.epoch and c.refit_last_layer and not c.freeze_weights:
                # Refining from a random last layer: a fit on the pretrained features is still made, to
                # judge the refined ones by (collapse_note), then set aside; without it a diverged run
                # would be saved with no word.
                start = {k: v.clone() for k, v in model.head.state_dict().items()}
                self.initial_fit_error_ = self.fit_last_layer(
                    model, train_cache, unique_y, weights=unique_w,
                    what="the pretrained features (to judge the refined ones by; not kept)")
                model.head.load_state_dict(start)
            augment = c.augmenter()
            if history.epoch and history.test_error[-1] is None and test_cache is not None:
                # Interrupted in the last finished epoch's test pass: the checkpoint holds the network
                # that pass scored (written before it), so measure it now, as the uninterrupted run did,
                # rather than leave a gap in the curves (scoring draws no random numbers).
                history.test_error[-1] = self.error_rate(model, test_cache, test_y)
                if ckpt is not None:
                    self._save_checkpoint(ckpt, model, opt, gen, history, average)

            for epoch in range(len(history.epoch), c.max_epochs):
                lr = c.lr_at(epoch)
                for group in opt.param_groups:
                    group["lr"] = lr * group["lr_factor"]
                start = time.perf_counter()
                loss_mean, train_err, n_seen = self._train_epoch(model, opt, augment, train_cache, position_t, train_y,
                                                                 gen, epoch)
                seconds = time.perf_counter() - start
                history.epoch.append(epoch + 1)
                history.train_loss.append(loss_mean)
                history.train_error.append(train_err)
                history.test_error.append(None)
                history.lr.append(lr)
                history.seconds.append(round(seconds, 2))
                history.images_per_second.append(round(n_seen / seconds, 2))
                if c.averages(epoch):
                    average.add(model, epoch + 1)
                # The epoch's training is kept before its test pass, so a Ctrl-C or an out-of-memory
                # error there does not cost the epoch; then kept again with the test error, for the curves.
                if ckpt is not None:
                    self._save_checkpoint(ckpt, model, opt, gen, history, average)
                test_err = self.error_rate(model, test_cache, test_y) if test_cache is not None else None
                history.test_error[-1] = test_err
                if ckpt is not None and test_err is not None:
                    self._save_checkpoint(ckpt, model, opt, gen, history, average)
                if self.progress:
                    left = c.max_epochs - epoch - 1
                    eta = f", about {_duration(left * seconds)} to go" if left else ""
                    print(f"epoch {epoch + 1:>3}/{c.max_epochs}  lr {lr:<8g} train loss {loss_mean:.4f}  "
                          f"train error {100 * train_err:6.2f}%  {_pct(f'{self.held_out_name} error', test_err)}"
                          f"{self._class_avg(test_y) if test_err is not None else ''}  "
                          f"({seconds:.0f} s, {n_seen / seconds:.1f} img/s{eta})", flush=True)
                if on_epoch is not None:
                    on_epoch(history)
            self._finish(model, average, train_cache, [train_paths[i] for i in unique], unique_y, unique_w,
                         test_cache, test_y)
        self.model_ = model.eval()
        self.history_ = history
        return self

    def _finish(self, model: ImageClassifier, average: WeightAverage, train_cache: torch.Tensor,
                unique_paths: list[str | Path], unique_y: torch.Tensor, unique_w: torch.Tensor | None,
                test_cache: torch.Tensor | None, test_y: torch.Tensor) -> None:
        """After the last epoch, make `model` what is saved: the averaged weights, the last layer refit
        on the clean features (or the pretrained network where refining diverged, the first fit where
        training a frozen network's last layer wore it down); sets last_epoch_state_, saved_as_, fallback_,
        collapse_note_ and saved_test_error_. `unique_paths`: the training images of `train_cache`."""
        c = self.config
        done = []
        self.last_epoch_state_ = None
        if len(average.epochs) > 1:
            self.last_epoch_state_ = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(average.state)
            self._reestimate_batchnorm(model, train_cache)
            done.append(f"weights averaged over {average.span()}")
        if c.refit_last_layer and not c.freeze_weights:
            # The last layer was trained on augmented, dropped-out features of a moving network; once
            # the network is fixed, a fit on the clean features of the training images is a better one.
            # It will score stage 3's features, of images decoded straight to the input side: the
            # cache's (15% larger, resized again) give other features (pretrained Lite0 on
            # fashionTexture: cosine 0.987 on average), so the refit sees stage 3's pixels.
            refit_on = "last layer refit"
            if c.cache_size != c.resolution:
                train_cache, fallback = self._stage3_pixels(unique_paths, train_cache)
                if fallback:
                    refit_on += f" on the training cache's pixels ({fallback})"
            refit_error = self.fit_last_layer(model, train_cache, unique_y, what="the refined features",
                                              weights=unique_w)
            done.append(refit_on)
            self.collapse_note_ = collapse_note(self.initial_fit_error_, refit_error)
            if self.collapse_note_:
                # Judged on the training images alone: a network whose features a last layer can no
                # longer fit to them has lost what the pretrained one had. Keeping it would hand the
                # user a model worse than no refining at all (digits at 96 px: 57.67% held-out error
                # against 18.00%), so the pretrained network, with a last layer fitted on its
                # features, is what is saved; the curves still show the run.
                kept_error = self._first_fit_again(model, train_cache, unique_y, unique_w)
                done = ["the PRETRAINED network with a last layer fitted on its features, as refining diverged"]
                self.fallback_ = "pretrained"
                self.collapse_note_ += (f". Saved instead of the refined network: the pretrained one, with a last "
                                        f"layer fitted on its features (training error {100 * kept_error:.2f}%)")
        elif c.freeze_weights and self.initial_fit_error_ is not None:
            # Frozen, only the last layer trained, and its fit on the clean features is the first
            # one: no refit. But SGD under dropout and augmentation can still wear that fit down
            # (8x8 digits at 128 px: 70.00% test accuracy, against 84.67% for the first fit):
            # judged on the training images, as above, the first fit is kept where it was better.
            if c.cache_size != c.resolution:
                train_cache, _ = self._stage3_pixels(unique_paths, train_cache)
            trained_error = self.error_rate(model, train_cache, unique_y)
            if collapse_note(self.initial_fit_error_, trained_error):
                kept_error = self._first_fit_again(model, train_cache, unique_y, unique_w)
                done = ["the last layer fitted on the features, as training it further made it worse"]
                self.fallback_ = "first fit"
                self.collapse_note_ = (f"training the last layer made it worse on the training images: it errs "
                                       f"on {100 * trained_error:.2f}% of them; saved instead: the last layer "
                                       f"fitted on the features (training error {100 * kept_error:.2f}%)")
        if self.fallback_ and self.progress:
            print(f"warning: {self.collapse_note_}", flush=True)
        # The curves end before these steps; say what the model that is saved scores.
        self.saved_as_ = ", ".join(done) or "the last epoch's weights"
        self.saved_test_error_ = None
        if test_cache is not None:
            self.saved_test_error_ = self.error_rate(model, test_cache, test_y)
            if self.progress:
                error = _pct(f"{self.held_out_name} error", self.saved_test_error_) + self._class_avg(test_y)
                # The test set chooses nothing; held-out training images (selectClassifier) do.
                only = " (reported only)" if self.held_out_name == "test" else ""
                print(f"saved model ({self.saved_as_}): {error}{only}", flush=True)

    def _first_fit_again(self, model: ImageClassifier, cache: torch.Tensor, labels: torch.Tensor,
                         weights: torch.Tensor | None) -> float:
        """`model` made the pretrained network again (a frozen one is already), with a last layer fitted
        on its features from the same start as the first fit, not from what training left; returns
        that fit's training error."""
        pretrained, _ = self._build()
        model.backbone.load_state_dict(pretrained.backbone.state_dict())
        model.head.load_state_dict(pretrained.head.state_dict())
        return self.fit_last_layer(model, cache, labels, weights=weights)

    def _stage3_pixels(self, paths: list[str | Path], cache: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The training images decoded again as stage 3 decodes them (for the refit), and "" ; or,
        where that fails, the training cache and the reason. Files can be moved or deleted while a
        long refinement runs (dedupImages, activeLearning, a synced folder): a refit on the cache's
        pixels (what it used before 2026-11-30) is better than losing the trained network at its last step."""
        c = self.config
        try:
            return decode_images(paths, c.resolution, c.resize_mode, c.workers, "decode train as stage 3 does",
                                 self.progress, self.spill_dir), ""
        except (OSError, ValueError, RuntimeError, MemoryError) as e:  # a file gone or changed; out of memory
            reason = f"the images could not be decoded again: {_last_line(e)}"
            if self.progress:
                print(f"refit of the last layer: {reason}; it uses the training cache's pixels", flush=True)
            return cache, reason

    def _train_epoch(self, model: ImageClassifier, opt: torch.optim.Optimizer, augment: Augmenter,
                     cache: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                     epoch: int) -> tuple[float, float, int]:
        """One pass over the training images (image i is cache[rows[i]], uint8) in random minibatches,
        each augmented afresh. Returns the mean training loss, the training error and how many images
        were seen."""
        c = self.config
        self._train_mode(model)
        loss_fn = torch.nn.CrossEntropyLoss()
        batches = list(torch.split(torch.randperm(len(labels), generator=gen), c.mb_size))
        if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on one image
            batches.pop()
        n_seen, loss_sum, wrong = 0, 0.0, 0
        bar = progress_bar(batches, desc=f"epoch {epoch + 1}/{c.max_epochs}", unit="batch", disable=not self.progress, leave=False)
        for idx in bar:
            try:
                # Augmented where the network runs: a GPU would otherwise wait for the CPU to warp and
                # colour every minibatch. The random draws stay on the CPU generator: same seed, same
                # crops. (Inside the try: out of memory here is the minibatch's too.)
                x = self._normalize(augment(cache[rows[idx]].to(self.device), gen))
                y = labels[idx].to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
                    if c.freeze_weights:
                        with torch.no_grad():
                            feats = model.backbone(x)
                        logits = model.head(model.dropout(feats))
                    else:
                        logits = model(x)
                    loss = loss_fn(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if c.max_grad_norm > 0:  # a bound on each step, where brittle features make huge gradients
                    torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"]], c.max_grad_norm)
                opt.step()
            except RuntimeError as e:
                raise _oom(e, f"training on minibatches of {c.mb_size} images of {c.resolution} px") from e
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} in epoch {epoch + 1}: "
                                         f"lower rf_lrPerMb (now {c.lr_at(epoch):g})")
            n_seen += len(idx)
            loss_sum += loss.item() * len(idx)
            wrong += int((logits.argmax(1) != y).sum())
            bar.set_postfix(loss=f"{loss_sum / n_seen:.3f}", refresh=False)  # drawn with the next step
        return loss_sum / n_seen, wrong / n_seen, n_seen

    def _plain_batches(self, cache: torch.Tensor, batch_size: int, equal: bool = False) -> Iterator[torch.Tensor]:
        """Cached uint8 images, un-augmented (resized to the input resolution), normalised, in batches
        of `batch_size`; with `equal`, in as many batches of sizes that differ by one at most."""
        plain = Augmenter(self.config.resolution, 1.0, 0.0, False, 0.0)
        n = len(cache)
        n_batches = -(-n // batch_size)
        bounds = [round(k * n / n_batches) for k in range(n_batches + 1)] if equal else \
            [*range(0, n, batch_size), n]
        for a, b in zip(bounds, bounds[1:]):
            yield self._normalize(plain(cache[a:b].to(self.device), torch.Generator()))

    @torch.no_grad()
    def _reestimate_batchnorm(self, model: ImageClassifier, cache: torch.Tensor, batch_size: int = 32) -> None:
        """BatchNorm layers that learn their statistics (rf_boFreezeBatchNorm off) estimate them afresh
        for averaged weights, which no minibatch has seen; kept statistics need nothing."""
        self._train_mode(model)
        learning = [m for m in model.backbone.modules()
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
        if not learning:
            return
        momenta = [m.momentum for m in learning]
        for m in learning:
            m.reset_running_stats()
            m.momentum = None  # a plain mean over all the batches
        # momentum None: each batch's statistics count alike, so the batches are made as equal as
        # possible (33 images: 17 + 16, not 32 + 1, where one image would weigh as much as 32).
        # Not rf_mbSize: the mean of small batches' variances underestimates the variance over all images.
        for x in self._plain_batches(cache, batch_size, equal=True):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
                model.backbone(x)
        for m, momentum in zip(learning, momenta):
            m.momentum = momentum

    @torch.no_grad()
    def features(self, backbone: torch.nn.Module, cache: torch.Tensor, flip: bool = False,
                 batch_size: int | None = None) -> torch.Tensor:
        """Penultimate features (float32, on the device) of cached uint8 images, un-augmented: resized
        to the input resolution, eval mode; with `flip`, averaged with the mirror image's.

        Computed in full float32 even where training runs in bfloat16 autocast (a CUDA GPU), with
        cuDNN's TF32 off, as stage 3's features are (features.Featurizer): the last layer fitted on
        these (rf_boRefitLastLayer) and the SVMs of selectClassifier.py are then used on stage 3's
        features (bfloat16 keeps about 3 significant digits). One pass without gradients: cheap beside training."""
        backbone.eval()
        feats = []
        batch_size = batch_size or self._eval_batch
        batches = progress_bar(self._plain_batches(cache, batch_size), total=-(-len(cache) // batch_size), unit="batch",
                               desc="features of the training images", leave=False, disable=not self.progress)
        try:
            with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
                for x in batches:
                    f = backbone(x).float()
                    if flip:
                        f = (f + backbone(x.flip(3)).float()) / 2
                    feats.append(f)
            return torch.cat(feats)
        except RuntimeError as e:  # here, not only in fit(): selectClassifier.py calls this after fitting
            advice = _oom(e, f"computing the features of {len(cache)} images (in batches of {batch_size} images, "
                             "twice rf_mbSize)")
            if advice is e:
                raise
            raise advice from e

    def fit_last_layer(self, model: ImageClassifier, cache: torch.Tensor, labels: torch.Tensor,
                       l2: float = 1e-3, what: str = "the pretrained features",
                       weights: torch.Tensor | None = None) -> float:
        """Fit the last layer (L2-regularised logistic regression) on the backbone's features of the
        un-augmented training images. Before refining, on the pretrained features: a random last layer
        would send large, meaningless gradients into the pretrained layers during the first epoch.
        After refining (`refit_last_layer`), on the refined ones. `weights`: one per image (how many
        times the balanced training set holds it); None weighs every image once. Returns the fitted
        layer's error on these images."""
        model.eval()
        f, y = self.features(model.backbone, cache), labels.to(self.device)
        w = None if weights is None else (weights / weights.sum()).to(self.device)
        head = model.head
        opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            if w is None:
                fit = torch.nn.functional.cross_entropy(head(f), y)
            else:
                fit = (torch.nn.functional.cross_entropy(head(f), y, reduction="none") * w).sum()
            loss = fit + l2 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        err = float((head(f).argmax(1) != y).float().mean())
        if self.progress:
            print(f"last layer fitted on {what}: training error {100 * err:.2f}%", flush=True)
        self._train_mode(model)
        return err

    @torch.no_grad()
    def error_rate(self, model: torch.nn.Module, cache: torch.Tensor, labels: torch.Tensor,
                   batch_size: int | None = None) -> float:
        """Fraction misclassified of images already decoded at the input resolution (eval mode).
        The mean of the per-class error rates is kept in `class_averaged_error_` (for the progress
        lines: with 30 "ok" and 4 "defect" images, 5.88% can be half the defects missed)."""
        was_training = model.training
        model.eval()
        wrong = 0
        wrong_by_class = torch.zeros(len(self.classes), dtype=torch.int64)
        # A pass over a large test set takes minutes on a CPU: show it (leave=False: the epoch's line stays).
        batch_size = batch_size or self._eval_batch
        for i in progress_bar(range(0, len(cache), batch_size), unit="batch", desc=f"{self.held_out_name} error",
                              leave=False, disable=not self.progress):
            x = self._normalize(cache[i:i + batch_size].to(self.device).float())
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
                pred = model(x).argmax(1).cpu()
            missed = pred != labels[i:i + batch_size]
            wrong += int(missed.sum())
            wrong_by_class += torch.bincount(labels[i:i + batch_size][missed], minlength=len(self.classes))
        if was_training:  # back to how training had it (frozen parts stay in eval mode)
            self._train_mode(model)
        counts = torch.bincount(labels[:len(cache)], minlength=len(self.classes))
        present = counts > 0
        self.class_averaged_error_ = float((wrong_by_class[present] / counts[present]).mean()) if present.any() else None
        return wrong / max(1, len(cache))

    def _class_avg(self, labels: torch.Tensor) -> str:
        """" (class-avg x%)" after an error rate just computed on `labels`, where their classes differ
        in size by 2x or more (else the two figures tell the same)."""
        counts = torch.bincount(labels, minlength=len(self.classes))
        counts = counts[counts > 0]
        if self.class_averaged_error_ is None or len(counts) < 2 or counts.max() < 2 * counts.min():
            return ""
        return f" (class-avg {100 * self.class_averaged_error_:.2f}%)"


REFINE_LOCK = ".refine.lock"  # in proc/<datasetName>/: held by the stage 2 that refines it now


def refining_alone(proc_dir: Path) -> None:
    """Refuse (ValueError) while another process refines this data set: both would train into one
    checkpoint, and the second would be told the first's is 'an interrupted refinement' to --resume
    or --restart (deleting it under the running one). Once alone, delete the temp files of a
    refinement killed while writing (kill -9, a power cut: no cleanup ran), a checkpoint's size each."""
    holder = hold_lock(proc_dir / REFINE_LOCK)
    if holder is not None:
        raise ValueError(f"another 2_refineDNN.py{f' (process {holder})' if holder else ''} is refining this data set "
                         f"now, in {proc_dir}: wait for it to finish, or stop it (then --resume continues it)")
    for stale in (*proc_dir.glob(".refine_checkpoint.pt.*.tmp"), *proc_dir.glob(".model_refined.pt.*.tmp")):
        stale.unlink(missing_ok=True)


def pending_refinement_note(proc_dir: Path, model_name: str) -> str | None:
    """What a stage using the refined network says when a refinement is under way in proc_dir: one
    running now (another shell holds REFINE_LOCK) or one interrupted (its checkpoint is left); None
    when neither. A running one is not 'interrupted': --resume would be refused while it runs."""
    checkpoint = proc_dir / "refine_checkpoint.pt"
    holder = lock_holder(proc_dir / REFINE_LOCK)
    if holder is not None:
        return (f"2_refineDNN.py{f' (process {holder})' if holder else ''} is refining this data set now; this uses "
                f"the last finished network, {model_name}: to use the new one, run this again once it has finished")
    if checkpoint.is_file():
        # Stage 2 was stopped (Ctrl-C, out of memory) half-way: the network here is the earlier one.
        return (f"{checkpoint.name} holds an interrupted refinement; this uses the last finished one, "
                f"{model_name}: to use the new one, finish it first (scripts/2_refineDNN.py --resume)")
    return None


def stored_refinement(model_path: Path) -> dict | None:
    """What stage 2 stored beside the weights of the refined network at `model_path`, None when there
    is none (or a damaged or foreign file, which replacing is what the user wants). Read it once: the
    file is big."""
    try:
        return load_model_extra(model_path) if model_path.is_file() else None
    except (ValueError, OSError):
        return None


def write_stored_curves(stored: dict, results_dir: Path, title: str, classifier: str) -> list[Path]:
    """training_curves.json and .png in a classifier's results folder, from the curves stage 2 stored
    in the refined network's file (`stored`: stored_refinement); [] when it stored none. dnn and
    svmDnnRefined share the network but not the folder: stage 3 writes them for the classifier it
    featurizes for, so that curves of an earlier network do not stay beside the results of this one."""
    if "history" not in stored:
        return []
    saved = {k: stored[k] for k in ("saved_test_error", "saved_as") if k in stored}
    json_path, png_path = results_dir / "training_curves.json", results_dir / "training_curves.png"
    curves = {**stored["history"], **saved}
    try:
        if png_path.is_file() and read_json(json_path) == json.loads(json.dumps(curves)):
            return []  # these already: written again, the run history would get every epoch twice
    except (OSError, ValueError):  # none, or damaged: written anew
        pass
    write_json(json_path, curves)
    plot_history(History.from_json(stored["history"]), png_path, title=title, **saved,
                 svm_after=classifier == "svmDnnRefined")
    return [json_path, png_path]


def replacing_note(model_path: Path, stored: dict | None, settings: dict) -> str:
    """dnn and svmDnnRefined share the refined network: refining for one with other settings
    replaces the other's too, and its stages 3-5 then refuse its files. Said before it happens."""
    if stored is None:
        return ""
    before = stored.get("params", {})
    differ = [f"{k} = {before[k]!r} there" for k in settings if k in before and before[k] != settings[k]]
    if not differ:
        return ""
    return (f"this replaces {model_path.name} ({', '.join(differ)}), the refined network of both dnn and "
            f"svmDnnRefined: the classifier that used it needs stages 3-5 again, or these values back")


def already_refined(stored: dict | None, settings: dict, split: str) -> bool:
    """Whether the refined network there is (`stored`: see stored_refinement) is a refinement with
    these `settings` on this split (its split.json hash). dnn and svmDnnRefined share it: stage 2 for the
    second must not refine it again (the file would change, and with it every result made from it)."""
    made_so = {PARAM_OF_FIELD[k]: v for k, v in ADDED_LATER.items()}  # settings files written before them lack
    return stored is not None and stored.get("split_hash") == split and {**made_so, **stored.get("params", {})} == settings


def collapse_note(before: float | None, after: float) -> str:
    """A warning when refining made the features worse for the training images themselves: a last
    layer fitted on them errs on `after` of them, against `before` on the pretrained features. Read
    from training images only (the test set chooses nothing). On sklearn's digits at 96 px the
    refinement diverged (0.00% -> 52.67%, 57.67% held-out error against 18% before it) and nothing
    said so; where refining works (fashionTexture: 0.00% -> 0.00%) nothing is said."""
    if before is None or not (after > before + 0.05 and after > 2 * before):
        return ""
    return (f"refining made the features worse on the training images themselves: a last layer fitted on the "
            f"refined features errs on {100 * after:.2f}% of them, on the pretrained ones {100 * before:.2f}%. "
            "The refined network is likely broken (training diverged): try a larger rf_inputResolution (small images "
            "scaled up give brittle features), milder augmentation (aug_*) or rf_dropoutRate, rf_maxGradNorm = 1, "
            "a lower rf_lrPerMb, rf_boInitLastLayer = False (on 8x8 digits at 96-128 px it kept refining from "
            "diverging), or classifier = 'svm' "
            "(scripts/selectClassifier.py compares them on held-out training images)")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _pct(name: str, value: float | None) -> str:
    return f"{name} {100 * value:6.2f}%" if value is not None else ""


def plot_history(history: History, path: str | Path, title: str = "", saved_test_error: float | None = None,
                 saved_as: str = "", held_out: str = "test error (reported only)", svm_after: bool = False) -> Path:
    """The tutorial's figure: training and test error per epoch (and the training loss). With
    `saved_test_error`, a star after the last epoch marks the test error of the model as saved
    (weights averaged, last layer refit: `saved_as`), which the per-epoch points do not show;
    `svm_after` (svmDnnRefined): it is the network's own, and stage 5 scores an SVM on its features.
    `held_out`: the label of the second curve (`history.test_error`), for images other than the test set."""
    from matplotlib.ticker import MaxNLocator

    from imgclass.evaluate import plt  # the file-only backend
    from imgclass.fileio import save_figure

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"wspace": 0.3})  # room for ax2's label
    errors = [100 * e for e in history.train_error]
    ax1.plot(history.epoch, errors, "o-", label="training error")
    if any(e is not None for e in history.test_error):
        # Dashed and hollow: where the two curves coincide (both 0% on an easy set), both still show.
        held = [float("nan") if e is None else 100 * e for e in history.test_error]
        ax1.plot(history.epoch, held, "s--", mfc="none", markersize=8, label=held_out)
        errors += [e for e in held if e == e]
    xlabel = "epoch"
    if saved_test_error is not None and history.epoch:
        star = (f"saved network's own last layer: {100 * saved_test_error:.2f}% test error (stage 5 scores "
                "the SVM on its features)" if svm_after else f"saved model: {100 * saved_test_error:.2f}% test error")
        ax1.plot([history.epoch[-1] + 0.5], [100 * saved_test_error], "*", color="C3", markersize=14, label=star)
        if saved_as:
            xlabel += f"\n(saved model: {saved_as})"
        errors.append(100 * saved_test_error)
    ax1.set(xlabel=xlabel, ylabel="error (%)", title=title or "error per epoch")
    top = max(5.0, 1.15 * max(errors, default=0.0))  # errors of 0%: not an axis from -0.04 to 0.04
    ax1.set_ylim(-0.04 * top, top)  # a little below 0, so that points at 0% show whole
    # Below the plot: inside, it covered the star of the saved model at the right end.
    ax1.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25 if saved_as else -0.15), ncol=2)
    ax1.grid(alpha=0.3)
    ax2.plot(history.epoch, history.train_loss, "o-", color="C2")
    ax2.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):  # whole epochs only: a tick at epoch 1.25 means nothing
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)
