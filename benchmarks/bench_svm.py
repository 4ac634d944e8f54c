"""Stage 4's cross-validation: one SVM fit at a time against all (C, fold) fits in parallel processes.

    python benchmarks/bench_svm.py [--classes 20] [--per-class 60] [--workers 0]

Features are synthetic (ReLU-like, L2-normalised, 1280 wide like EfficientNet-Lite's), so the
figure is about many-class data sets, where every fit trains one hyperplane per class. Both runs are
in the same process and must choose the same C with the same CV scores.
"""

import argparse
import os
import time

import numpy as np

from imgclass.svm import LinearSvm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--classes", type=int, default=20)
parser.add_argument("--per-class", type=int, default=60)
parser.add_argument("--workers", type=int, default=0, help="processes of the parallel run (0 = one per core)")
args = parser.parse_args()

rng = np.random.default_rng(0)
centers = rng.normal(0, 1, (args.classes, 1280)).astype(np.float32)
y = np.repeat(np.arange(args.classes), args.per_class)
x = np.abs(0.3 * centers[y] + rng.normal(0, 1, (len(y), 1280)).astype(np.float32))

timings, fitted = {}, {}
for name, workers in (("one fit at a time", 1), ("parallel", args.workers)):
    t0 = time.perf_counter()
    fitted[name] = LinearSvm(workers=workers).fit(x, y)
    timings[name] = time.perf_counter() - t0
a, b = fitted.values()
assert a.C_ == b.C_ and a.cv_scores_ == b.cv_scores_, "parallel CV changed the result"
base, par = timings.values()
print(f"{len(y)} images, {args.classes} classes, {len(a.c_values)} C values x {a.cv_folds} folds, "
      f"{os.cpu_count()} CPU cores: one fit at a time {base:.1f} s, parallel {par:.1f} s ({base / par:.2f}x); "
      f"chosen C = {a.C_:g} in both")
