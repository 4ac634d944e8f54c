"""Speed of hashing real photos for de-duplication: full decode vs reduced-scale JPEG decode (README Part 3).

Usage: python benchmarks/dedup_speed.py [FOLDER]  (default ../shared/datasets/fashionTexture)
"""
import sys
import time
from pathlib import Path
import imagehash
from imgclass.images import load_rgb
from imgclass.dedup import hash_files, find_duplicates
root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashionTexture"
paths = sorted(p for p in root.rglob("*") if p.is_file())
for p in paths: p.read_bytes()  # warm the page cache so every variant reads from memory
def t(f):
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0
full = t(lambda: [imagehash.dhash(load_rgb(p), 16) for p in paths])
d64 = t(lambda: [imagehash.dhash(load_rgb(p, min_size=64), 16) for p in paths])
d256 = t(lambda: hash_files(paths, workers=1, progress=False))
d256x2 = t(lambda: hash_files(paths, workers=2, progress=False))
print(f"{len(paths)} photos: full decode {full:.2f}s; draft>=64 {d64:.2f}s ({full/d64:.1f}x); draft>=256 {d256:.2f}s ({full/d256:.1f}x); draft>=256 2 threads {d256x2:.2f}s ({full/d256x2:.1f}x)")
r = find_duplicates(root, progress=False)
print("groups at default threshold:", r.groups, "failed:", r.failed)
