"""Refinement speed: training images per second at 224 px, the project's refinement against the plain
eager PyTorch loop a user would write, over the same backbone, photos, minibatch size and epochs.

    flock /tmp/imgclass_cpu.lock python benchmarks/bench_refine.py [--images 64] [--epochs 3]

The plain loop: a Dataset that opens each photo with PIL every epoch, torchvision's
RandomResizedCrop / RandomHorizontalFlip / RandomRotation / ColorJitter / ToTensor / Normalize,
a DataLoader (no worker processes, as in most tutorials), then `model(x)`, `loss.backward()`,
`opt.step()` in float32 NCHW. The project: imgclass.refine.Refiner (decode + resize once in worker
processes into a uint8 cache, batch augmentation on tensors, channels-last, bf16 only where native).
Both figures include decoding; both run in this process, one after the other, so the machine's
load (shared CPU) affects them alike. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from imgclass.backbones import create_backbone, get_info
from imgclass.data import list_class_dirs, list_images
from imgclass.fileio import write_json
from imgclass.images import load_rgb
from imgclass.refine import RefineConfig, Refiner

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT.parent / "shared" / "datasets" / "fashionTexture"


class PlainDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], labels: list[int], tf: transforms.Compose) -> None:
        self.paths, self.labels, self.tf = paths, labels, tf

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as img:
            return self.tf(img.convert("RGB")), self.labels[i]


def plain_loop(paths: list[Path], labels: list[int], n_classes: int, res: int, mb: int, epochs: int) -> float:
    """Images per second of the textbook loop."""
    info = get_info("efficientnet_lite0")
    tf = transforms.Compose([
        transforms.RandomResizedCrop(res, scale=(0.6, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomRotation(10),
        transforms.ColorJitter(0.2, 0.2, 0.2),
        transforms.ToTensor(),
        transforms.Normalize(info.mean, info.std),
    ])
    loader = torch.utils.data.DataLoader(PlainDataset(paths, labels, tf), batch_size=mb, shuffle=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(create_backbone("efficientnet_lite0"), torch.nn.Dropout(0.5),
                                torch.nn.Linear(info.feature_dim, n_classes)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    start, n = time.perf_counter(), 0
    for epoch in range(epochs):
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(y)
        print(f"  plain loop epoch {epoch + 1}: {n / (time.perf_counter() - start):.2f} img/s so far", flush=True)
    return n / (time.perf_counter() - start)


def project(paths: list[Path], labels: list[int], classes: list[str], res: int, mb: int, epochs: int) -> tuple[float, float]:
    """Images per second of imgclass.refine, overall (with the one-time decoding) and per epoch."""
    cfg = RefineConfig(resolution=res, mb_size=mb, max_epochs=epochs, workers=os.cpu_count() or 1)
    refiner = Refiner(cfg, classes, device="cpu", progress=False)
    start = time.perf_counter()
    refiner.fit(paths, labels)
    total = time.perf_counter() - start
    n = sum(len(labels) // mb * mb + (len(labels) % mb if len(labels) % mb >= 2 else 0) for _ in range(epochs))
    for e, ips in zip(refiner.history_.epoch, refiner.history_.images_per_second):
        print(f"  project epoch {e}: {ips:.2f} img/s (training steps only)")
    return n / total, max(refiner.history_.images_per_second)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="photos used (spread over the classes)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=32)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--folder", type=Path, default=FASHION)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    a = ap.parse_args()
    if not a.folder.is_dir():
        raise SystemExit(f"{a.folder} not found: point --folder at a folder of class folders of photos")
    torch.set_num_threads(os.cpu_count() or 1)
    classes = list_class_dirs(a.folder)
    per_class = {c: list_images(a.folder / c) for c in classes}
    paths, labels = [], []
    for i in range(a.images):  # round-robin over the classes, evenly through each class's files
        c = i % len(classes)
        files = per_class[classes[c]]
        k = i // len(classes)
        paths.append(files[(k * 7919) % len(files)])
        labels.append(c)
    for p in paths:  # same start for both: files in the OS cache, and every one decodes
        load_rgb(p, min_size=8)
    print(f"{len(paths)} photos from {a.folder}, {a.epochs} epochs, minibatch {a.mb}, {a.resolution} px, "
          f"{torch.get_num_threads()} threads")
    plain = plain_loop(paths, labels, len(classes), a.resolution, a.mb, a.epochs)
    ours, ours_epoch = project(paths, labels, classes, a.resolution, a.mb, a.epochs)
    print(f"plain eager PyTorch loop: {plain:7.2f} img/s")
    print(f"imgclass refinement:      {ours:7.2f} img/s  (steady-state epoch: {ours_epoch:.2f} img/s)")
    print(f"ratio:                    {ours / plain:7.2f}x")
    if a.out:
        write_json(a.out, {"plain_img_s": plain, "project_img_s": ours, "project_epoch_img_s": ours_epoch,
                                     "ratio": ours / plain, **vars(a), "folder": str(a.folder), "out": str(a.out)})


if __name__ == "__main__":
    main()
