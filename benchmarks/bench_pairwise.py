"""Time and memory of the near-duplicate comparison (stage 1's train/test leak check, dedupImages.py).

Compares imgclass.dedup.pairwise_close (64-bit words, blocks capped at 2^23 pairs) with the byte-wise
version it replaced (blocks of 1024 rows, a (1024, N, 32) temporary), on random 256-bit hashes of a
data set of TEST test and TRAIN training images, in one process. Peak memory is measured per variant
with tracemalloc (numpy reports its buffers to it).

Usage: python benchmarks/bench_pairwise.py [--test 5000] [--train 15000]
"""
import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from imgclass.dedup import pairwise_close


def bytewise(bits: np.ndarray, threshold: int, other: np.ndarray, block: int = 1024) -> list[tuple[int, int, int]]:
    a, b = np.packbits(bits, axis=1), np.packbits(other, axis=1)
    pairs = []
    for start in range(0, len(a), block):
        dist = np.bitwise_count(a[start:start + block, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int32)
        ii, jj = np.nonzero(dist <= threshold)
        pairs += [(int(i + start), int(j), int(dist[i, j])) for i, j in zip(ii, jj)]
    return pairs


def measure(f: Callable[..., list], *args: Any) -> tuple[float, float, list]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = f(*args)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--train", type=int, default=15000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    test, train = rng.random((args.test, 256)) < 0.5, rng.random((args.train, 256)) < 0.5
    train[:50] = test[:50] ^ (rng.random((50, 256)) < 0.03)  # 50 near copies (~8 bits apart) to find
    t_old, m_old, old = measure(bytewise, test, 15, train)
    t_new, m_new, new = measure(pairwise_close, test, 15, train)
    assert sorted(old) == sorted(new), "the two versions disagree"
    print(f"{args.test} x {args.train} hashes, {len(new)} pairs within 15 bits")
    print(f"byte-wise (before): {t_old:.2f} s, peak {m_old:.0f} MB")
    print(f"64-bit words (now): {t_new:.2f} s, peak {m_new:.0f} MB")
    print(f"pairwise: speed-up {t_old / t_new:.1f}x, memory {m_old / m_new:.1f}x less")


if __name__ == "__main__":
    main()
