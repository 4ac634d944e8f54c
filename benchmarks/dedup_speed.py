"""Speed of hashing real photos for de-duplication: full decode vs reduced-scale JPEG decode (README Part 3).

Usage: python benchmarks/dedup_speed.py [FOLDER]  (default ../shared/datasets/fashionTexture)
"""
import sys
import time
from collections.abc import Callable
from pathlib import Path

import imagehash

from imgclass.dedup import find_duplicates, hash_files
from imgclass.images import load_rgb

FASHION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashionTexture"


def seconds(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else FASHION
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    for p in paths:
        p.read_bytes()  # warm the page cache so every variant reads from memory
    full = seconds(lambda: [imagehash.dhash(load_rgb(p), 16) for p in paths])
    d64 = seconds(lambda: [imagehash.dhash(load_rgb(p, min_size=64), 16) for p in paths])
    d256 = seconds(lambda: hash_files(paths, workers=1, progress=False))
    d256x2 = seconds(lambda: hash_files(paths, workers=2, progress=False))
    print(f"{len(paths)} photos: full decode {full:.2f}s; draft>=64 {d64:.2f}s ({full / d64:.1f}x); "
          f"draft>=256 {d256:.2f}s ({full / d256:.1f}x); draft>=256 2 threads {d256x2:.2f}s ({full / d256x2:.1f}x)")
    r = find_duplicates(root, progress=False)
    print("groups at default threshold:", r.groups, "failed:", r.failed)


if __name__ == "__main__":
    main()
