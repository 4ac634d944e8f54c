"""Speed of the web service: single-request latency and throughput with concurrent clients.

Exports a bundle (EfficientNet-Lite0 at 224 px + an SVM trained on a few fashionTexture photos,
or on generated images when the photos are absent), with mirror averaging on and off, serves each
with `python -m imgclass.serve` on 127.0.0.1, and measures with a 640x480 JPEG:
- latency: sequential POST /score of one image (HTTP + decoding + network), p50 / p99;
- throughput: 8 concurrent clients in a separate process, bounded in count and time; errors counted.
Baseline in the same run: the same image decoded and scored in-process (no HTTP), so the HTTP
overhead is a ratio. Run it alone: flock /tmp/imgclass_cpu.lock python benchmarks/bench_serve.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

FASHION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashionTexture"  # as tests/conftest.py


def percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1000, q))


def load_generator(url: str, image: Path, clients: int, requests: int, max_seconds: float) -> dict:
    """Run in its own process: `clients` threads share `requests` POSTs, stopping at max_seconds."""
    import httpx

    data = image.read_bytes()
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "errors": 0, "error_samples": []}
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    if state["next"] >= requests:
                        return
                    state["next"] += 1
                try:
                    r = client.post(url + "/score", files={"images": ("photo.jpg", data)})
                    good = r.status_code == 200 and len(r.json()["results"]) == 1
                except Exception as e:  # noqa: BLE001 - counted, not raised
                    good, r = False, e
                with lock:
                    if good:
                        state["ok"] += 1
                    else:
                        state["errors"] += 1
                        if len(state["error_samples"]) < 3:
                            state["error_samples"].append(str(getattr(r, "text", r))[:200])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"ok": state["ok"], "errors": state["errors"], "seconds": elapsed,
            "images_per_s": state["ok"] / elapsed, "error_samples": state["error_samples"]}


def make_bundles(work: Path, resolution: int, photos: Path) -> dict[str, Path]:
    from imgclass.export import export_model
    from imgclass.features import Featurizer
    from imgclass.modelfile import ModelSpec, build_model
    from imgclass.svm import LinearSvm
    from imgclass.synthetic import generate_demo_dataset

    if photos.is_dir():
        root = photos
    else:
        root = work / "demo"
        generate_demo_dataset(root, images_per_class=8, seed=0)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[:8]
        paths += files
        labels += [k] * len(files)
    spec = ModelSpec("efficientnet_lite0", resolution)
    model = build_model(spec)
    out = {}
    for flip in (True, False):
        feats = Featurizer(model, spec, batch_size=8, flip_average=flip, workers=0).featurize_paths(paths, progress=False).features
        svm = LinearSvm([0.1, 1.0], cv_folds=3).fit(feats, np.array(labels))
        svm.classes = classes
        name = "flip" if flip else "noflip"
        out[name] = export_model(model, spec, work / name, "svm", svm=svm, flip_average=flip).path
    return out


def test_jpeg(work: Path, photos: Path) -> Path:
    from PIL import Image

    from imgclass.images import load_rgb

    src = next(iter(sorted(photos.rglob("*.jpg")))) if photos.is_dir() else None
    if src is not None:
        img = load_rgb(src).resize((640, 480))
    else:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    path = work / "photo_640x480.jpg"
    img.save(path, "JPEG", quality=90)
    return path


def in_process_ms(bundle: Path, image: Path, threads: int, n: int) -> float:
    """Baseline: decode + score the image without HTTP, p50 in ms."""
    from imgclass.export import load_bundle
    from imgclass.images import load_square
    from imgclass.serve import Scorer

    b = load_bundle(bundle)
    scorer = Scorer(b, threads=threads)
    data = image.read_bytes()
    times = []
    for i in range(n + 5):
        t = time.perf_counter()
        scorer.run(load_square(data, b.resolution, b.resize_mode)[None])
        if i >= 5:
            times.append(time.perf_counter() - t)
    scorer.close()
    return percentile_ms(times, 50)


def batch_sweep(bundle: Path, image: Path, threads: int, sizes: list[int], images: int = 32, rounds: int = 3) -> dict[int, float]:
    """ms per image when the network scores `images` decoded images in batches of each size, the
    sizes taken in turn `rounds` times (so a machine that slows down mid-run weighs on all alike);
    the best round of each size. What dep_maxBatch decides when requests arrive together."""
    from imgclass.export import load_bundle
    from imgclass.images import load_square
    from imgclass.serve import Scorer

    b = load_bundle(bundle)
    scorer = Scorer(b, threads=threads)
    x = np.repeat(load_square(image.read_bytes(), b.resolution, b.resize_mode)[None], images, axis=0)
    scorer.run(x[:max(sizes)])  # warm-up
    best = {n: float("inf") for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            t = time.perf_counter()
            for i in range(0, images, n):
                scorer.run(x[i:i + n])
            best[n] = min(best[n], (time.perf_counter() - t) * 1000 / images)
    scorer.close()
    return best


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, workers: int, threads: int, max_batch: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "imgclass.serve", str(bundle), "--port", str(port),
                             "--workers", str(workers), "--threads", str(threads), "--max-batch", str(max_batch)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if proc.poll() is not None:  # e.g. the port is taken: ask for another with --port
            raise RuntimeError(f"the server exited with status {proc.returncode} (port {port} taken?)")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def measure(bundle: Path, image: Path, port: int, args: argparse.Namespace) -> dict:
    import httpx

    proc = start_server(bundle, port, args.workers, args.threads, args.max_batch)
    url = f"http://127.0.0.1:{port}"
    try:
        data = image.read_bytes()
        times = []
        with httpx.Client(timeout=30) as client:
            for i in range(args.latency_requests + 10):
                t = time.perf_counter()
                r = client.post(url + "/score", files={"images": ("photo.jpg", data)})
                dt = time.perf_counter() - t
                assert r.status_code == 200, r.text
                if i >= 10:  # warm-up
                    times.append(dt)
        load = subprocess.run([sys.executable, __file__, "--load", url, "--image", str(image),
                               "--clients", str(args.clients), "--throughput-requests", str(args.throughput_requests),
                               "--max-seconds", str(args.max_seconds)], capture_output=True, text=True, check=True)
        return {"p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99), **json.loads(load.stdout)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=FASHION, help="fashionTexture photos (generated images when absent)")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = one per core)")
    ap.add_argument("--max-batch", type=int, default=4, help="the service's dep_maxBatch")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--latency-requests", type=int, default=200)
    ap.add_argument("--throughput-requests", type=int, default=600)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=0, help="port for the service (default: a free one)")
    ap.add_argument("--batch-sweep", default=None, metavar="SIZES",
                    help="only time the network on batches of these sizes (e.g. 1,4,16), in process, and stop")
    ap.add_argument("--load", default=None, help=argparse.SUPPRESS)  # internal: the load-generator process
    ap.add_argument("--image", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load:
        print(json.dumps(load_generator(args.load, Path(args.image), args.clients, args.throughput_requests, args.max_seconds)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"{os.cpu_count()} CPU cores; exporting bundles at {args.resolution} px ...", flush=True)
        bundles = make_bundles(work, args.resolution, args.images)
        image = test_jpeg(work, args.images)
        print(f"image: 640x480 JPEG, {image.stat().st_size} bytes; workers={args.workers} threads={args.threads or 'all'} "
              f"max batch={args.max_batch}")
        if args.batch_sweep:
            sizes = [int(n) for n in args.batch_sweep.split(",")]
            for name, bundle in bundles.items():
                best = batch_sweep(bundle, image, args.threads, sizes)
                print(f"[flip averaging {'on ' if name == 'flip' else 'off'}] ms per image by batch size (best of 3): "
                      + ", ".join(f"{n}: {ms:.1f} (x{ms / best[sizes[0]]:.2f})" for n, ms in best.items()), flush=True)
            return
        for name, bundle in bundles.items():
            base = in_process_ms(bundle, image, args.threads, 50)
            m = measure(bundle, image, args.port or _free_port(), args)
            print(f"[{'flip averaging on ' if name == 'flip' else 'flip averaging off'}] "
                  f"in-process decode+score p50 {base:6.1f} ms | HTTP p50 {m['p50_ms']:6.1f} ms "
                  f"(x{m['p50_ms'] / base:.2f} of in-process), p99 {m['p99_ms']:6.1f} ms | "
                  f"{args.clients} clients: {m['images_per_s']:6.1f} images/s, {m['ok']} ok, {m['errors']} errors "
                  f"in {m['seconds']:.1f} s", flush=True)
            if m["error_samples"]:
                print("  errors:", m["error_samples"])


if __name__ == "__main__":
    main()
