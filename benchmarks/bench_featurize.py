"""Stage 3's featurization against a plain PyTorch loop, on the same images, in one run.

    flock /tmp/imgclass_cpu.lock env PYTHONPATH=libraries python benchmarks/bench_featurize.py

Images: the real photos of ../shared/datasets/fashionTexture when that folder exists, else generated
photo-sized JPEGs (--images DIR picks another folder). Each measurement runs in its own process so
that its peak memory (ru_maxrss) is its own:
- baseline: PIL decode (full size) + centre-crop resize (ImageOps.fit), the timm model in eager PyTorch, batch 32, fp32;
- project: imgclass.features.Featurizer as scripts/3_runDNN.py uses it (decode, preprocess, network,
  write the .npz), with flip averaging off and on; the one-off ONNX export is timed separately;
- scaling: the project on N and 4N generated images, for peak memory and time per image.
Also printed: per-image cosine similarity between the project's features and the baseline's.
The last line is `featurize: project <X> img/s, baseline <Y> img/s, ratio <Z>`, with the project at
the flip-averaging setting of PARAMETERS.py (run_boFlipAverage).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the project (a git worktree sits one level deeper, hence the search upwards)
FASHION = next((d / "shared" / "datasets" / "fashionTexture" for d in ROOT.parents
                if (d / "shared" / "datasets" / "fashionTexture").is_dir()), ROOT.parent / "shared" / "datasets" / "fashionTexture")
BACKBONE = "efficientnet_lite0"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def list_images(folder: Path) -> list[Path]:
    from imgclass.images import is_image_name

    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p))


def generate_photos(folder: Path, n: int, size: tuple[int, int] = (1600, 1200), unique: int = 24, seed: int = 0) -> list[Path]:
    """n photo-sized JPEGs: `unique` smooth random pictures with grain, repeated under new names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blobs = []
    for i in range(unique):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        arr = np.asarray(low, dtype=np.int16) + rng.integers(-12, 12, (size[1], size[0], 3))
        path = folder / f"u{i}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        blobs.append(path.read_bytes())
        path.unlink()
    paths = [folder / f"img_{i:05d}.jpg" for i in range(n)]
    for i, p in enumerate(paths):
        p.write_bytes(blobs[i % unique])
    return paths


# ---------------------------------------------------------------------------------------------
# Children: one measurement each, reported as JSON on the last stdout line
# ---------------------------------------------------------------------------------------------

def child_baseline(paths: list[str], resolution: int, out: Path) -> dict:
    """The plain loop a PyTorch user writes first."""
    import torch
    from PIL import Image, ImageOps

    from imgclass.backbones import create_backbone, get_info

    torch.set_num_threads(os.cpu_count() or 1)
    model = create_backbone(BACKBONE).eval()
    info = get_info(BACKBONE)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    feats = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(paths), 32):
            batch = []
            for p in paths[s:s + 32]:
                # exif_transpose so that its features are comparable image by image with the project's
                # centre crop, the project's default geometry (rf_resizeMode = "crop")
                img = ImageOps.fit(ImageOps.exif_transpose(Image.open(p)).convert("RGB"), (resolution, resolution), Image.BILINEAR)
                batch.append(torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255)
            x = (torch.stack(batch) - mean) / std
            feats.append(model(x).numpy())
    features = np.concatenate(feats)
    np.save(out, features)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": len(paths), "peak_rss_mb": peak_rss_mb()}


def child_project(paths: list[str], resolution: int, flip: bool, out: Path, export_dir: Path) -> dict:
    """Stage 3's path: Featurizer with the project's parameters, then the atomic .npz write."""
    from imgclass.backbones import create_backbone
    from imgclass.features import Featurizer
    from imgclass.fileio import save_npz
    from imgclass.modelfile import ModelSpec
    from imgclass.params import load_params

    p = load_params()
    model = create_backbone(BACKBONE)
    spec = ModelSpec(BACKBONE, resolution, p.rf_resizeMode)
    t0 = time.perf_counter()
    fz = Featurizer(model, spec, batch_size=p.run_mbSize, flip_average=flip, workers=p.run_workers, export_dir=export_dir)
    engine = fz.engine  # ONNX export (once per model; later runs reuse the file) and session start
    setup = time.perf_counter() - t0
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    result = fz.featurize_paths(paths, progress=False)
    save_npz(out, features=result.features, paths=np.array(paths))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "images": len(paths), "setup_seconds": setup, "engine": engine.name,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before, "workers": p.run_workers,
            "batch": p.run_mbSize}


def run_child(kind: str, list_file: Path, out: Path, args: argparse.Namespace, flip: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--list", str(list_file), "--out", str(out),
           "--resolution", str(args.resolution), "--export-dir", str(args.export_dir)] + (["--flip"] if flip else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(path: Path) -> str:
    """Format and mode: files the two decoders treat differently on purpose (transparency) stand out."""
    from PIL import Image

    with Image.open(path) as im:
        note = "; the baseline's convert('RGB') drops the alpha channel, the project composites on white" \
            if "A" in im.mode or "transparency" in im.info else ""
        return f"{im.format} {im.mode} {im.size[0]}x{im.size[1]}{note}"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=None, help="folder of images (default: fashionTexture, else generated)")
    ap.add_argument("--generated", type=int, default=557, help="images to generate when no folder is there")
    ap.add_argument("--scale-n", type=int, default=300, help="N for the memory/time scaling check (N and 4N images)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--no-scaling", action="store_true", help="skip the N / 4N scaling check")
    ap.add_argument("--child", choices=("baseline", "project"), help=argparse.SUPPRESS)
    ap.add_argument("--list", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--flip", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--export-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        paths = args.list.read_text().splitlines()
        if args.child == "baseline":
            res = child_baseline(paths, args.resolution, args.out)
        else:
            res = child_project(paths, args.resolution, args.flip, args.out, args.export_dir)
        print(json.dumps(res))
        return 0

    from imgclass.params import load_params

    default_flip = load_params().run_boFlipAverage
    with tempfile.TemporaryDirectory(prefix="bench_featurize_") as tmp_name:
        tmp = Path(tmp_name)
        args.export_dir = tmp / "onnx"
        folder = args.images or (FASHION if FASHION.is_dir() else None)
        if folder is not None:
            paths = list_images(folder)
            source = f"{folder} ({len(paths)} images)"
        else:
            paths = generate_photos(tmp / "generated", args.generated)
            source = f"{len(paths)} generated 1600x1200 JPEGs"
        if not paths:
            raise SystemExit(f"no images in {folder}")
        lst = tmp / "images.txt"
        lst.write_text("\n".join(str(p) for p in paths))
        print(f"images: {source}; {args.resolution} px, {BACKBONE}, {os.cpu_count()} CPU cores")

        # The first project run pays the one-off ONNX export; measure it, then the timed runs reuse it.
        warm = run_child("project", lst, tmp / "warm.npz", args)
        print(f"one-off ONNX export + session start: {warm['setup_seconds']:.1f} s")
        base = run_child("baseline", lst, tmp / "base.npy", args)
        runs = {flip: run_child("project", lst, tmp / f"proj_{flip}.npz", args, flip=flip) for flip in (False, True)}

        def ips(r: dict) -> float:
            return r["images"] / r["seconds"]

        b = ips(base)
        print(f"baseline (PIL full decode + resize, eager PyTorch, batch 32, fp32): {b:.1f} img/s, "
              f"peak RSS {base['peak_rss_mb']:.0f} MB")
        base_feats = np.load(tmp / "base.npy")
        for flip, r in runs.items():
            line = (f"project  flip averaging {'on ' if flip else 'off'} ({r['engine']}, {r['workers']} decode threads, "
                    f"batch {r['batch']}): {ips(r):.1f} img/s, {ips(r) / b:.2f}x baseline, peak RSS {r['peak_rss_mb']:.0f} MB")
            if not flip:  # the baseline has no flip averaging, so only this run is comparable image by image
                cos = cosine(np.load(tmp / f"proj_{flip}.npz")["features"], base_feats)
                line += (f"; cosine to baseline features min {cos.min():.5f} mean {cos.mean():.5f} "
                         f"({(cos < 0.999).sum()} of {len(cos)} below 0.999)")
                line += "".join(f"\n  below 0.999: {paths[i]} ({describe(paths[i])}): cosine {cos[i]:.5f}"
                                for i in np.flatnonzero(cos < 0.999))
            print(line)

        if not args.no_scaling:
            small = generate_photos(tmp / "scale", 4 * args.scale_n)
            for n in (args.scale_n, 4 * args.scale_n):
                lst_n = tmp / f"scale_{n}.txt"
                lst_n.write_text("\n".join(str(p) for p in small[:n]))
                r = run_child("project", lst_n, tmp / f"scale_{n}.npz", args)
                print(f"scaling: {n:5d} generated 1600x1200 JPEGs: {r['seconds']:.1f} s "
                      f"({1000 * r['seconds'] / n:.2f} ms/img), peak RSS {r['peak_rss_mb']:.0f} MB "
                      f"(after model load {r['rss_before_mb']:.0f} MB)")

        x = ips(runs[default_flip])
        print(f"headline uses run_boFlipAverage = {default_flip} (the PARAMETERS.py default)")
        print(f"featurize: project {x:.1f} img/s, baseline {b:.1f} img/s, ratio {x / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
