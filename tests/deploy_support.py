"""What the deployment tests share: a small trained bundle, and the real server in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from conftest import ROOT, SCRIPTS, write_image
from imgclass.params import service_url

COLORS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}
RESOLUTION = 64
_BUNDLES: dict[str, Path] = {}


def color_bundle(root: Path) -> Path:
    """A bundle of the real EfficientNet-Lite0 + an SVM trained on red/green/blue photos (cached per run)."""
    if "color" in _BUNDLES:
        return _BUNDLES["color"]
    from imgclass.export import export_model
    from imgclass.features import Featurizer
    from imgclass.modelfile import ModelSpec, build_model
    from imgclass.svm import LinearSvm

    paths, labels = [], []
    for k, (name, rgb) in enumerate(COLORS.items()):
        for i in range(6):
            paths.append(write_image(root / "train" / name / f"{i}.jpg", rgb, size=(90, 70), seed=100 + i))
            labels.append(k)
    spec = ModelSpec("efficientnet_lite0", RESOLUTION)
    model = build_model(spec)
    feats = Featurizer(model, spec, batch_size=18, flip_average=True, workers=0,
                       export_dir=root / "onnx").featurize_paths(paths, progress=False).features
    svm = LinearSvm([1.0], cv_folds=3).fit(feats, np.array(labels))
    svm.classes = list(COLORS)
    bundle = export_model(model, spec, root / "bundle", "svm", svm=svm, flip_average=True,
                          metrics={"overall_accuracy": 1.0, "note": "test bundle"}, source={"dataset": "colors"})
    _BUNDLES["color"] = bundle.path
    return bundle.path


def jpeg_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (80, 60), seed: int = 7) -> bytes:
    """A fresh photo of one colour (not one the SVM was trained on)."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb, np.int16) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, limit: int = 20_000) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return f"server log {log}:\n" + (text if len(text) <= limit else "...\n" + text[-limit:])


@contextlib.contextmanager
def running_server(bundle: Path, *sets: str, workers: int = 1, timeout: float = 60, pids: list[int] | None = None,
                   log: Path | None = None, cpus: set[int] | None = None, stopped_by_test: bool = False,
                   exit_status: list[int] | None = None, host: str = "127.0.0.1",
                   env: dict[str, str] | None = None) -> Iterator[str]:
    """scripts/6_deploy.py --bundle serving on a free port of `host`; yields its base URL (and
    appends the server's process id to `pids` when given).

    The server's output goes to the file `log` (default: server_<port>.log beside the bundle, in the
    test's temporary folder), never to a pipe: nobody reads a pipe while a test runs, and a server
    that logs more than the pipe holds (64 kB of tracebacks) would block. The log is shown when the
    server fails to start, dies, or the test inside the `with` fails. `cpus`: the CPUs the server
    may run on (its affinity, as taskset or a container's cpuset sets it). `stopped_by_test`: the
    test stops the server itself (a signal, through `pids`); its exit status is then appended to
    `exit_status` when given (None when it had to be stopped after the test). `env`: environment
    variables for the server on top of this process's (IMGCLASS_API_KEY)."""
    port = free_port()
    log = log or bundle.parent / f"server_{port}.log"
    args = [sys.executable, str(SCRIPTS / "6_deploy.py"), "--bundle", str(bundle), "--host", host, "--port", str(port),
            "--workers", str(workers), "--set", "dep_threads=1"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin)
    url = service_url(host, port)
    if pids is not None:
        pids.append(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}; {_tail(log)}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not answer /health in time; {_tail(log)}")
            time.sleep(0.2)
        try:
            yield url
        except BaseException:
            print(_tail(log))  # pytest shows a failed test's output: the server's side of it
            raise
        assert stopped_by_test or proc.poll() is None, f"the server died during the test; {_tail(log)}"
        if exit_status is not None:
            try:
                exit_status.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                exit_status.append(None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def recording_proxy(target: str, prefix: str = "", fail_when: bytes = b"", fail_status: int = 500,
                    fail_times: int | None = None) -> Iterator[tuple[str, list[tuple[str, str, int, int]]]]:
    """A pass-through HTTP proxy in front of a real server, to see what a client sends: yields its
    base URL and the list it fills with (method, path, request body bytes, reply status). With
    `prefix` ("/classifier"), it serves the server under that path, as a site's reverse proxy
    would: /classifier/score goes to /score, /classifier to /, anything outside the prefix is a 404.
    With `fail_when`, a request whose body contains those bytes gets the reply of a failing server
    (HTTP `fail_status` with a JSON detail) instead of being forwarded, the first `fail_times` such
    requests only when given."""
    records: list[tuple[str, str, int, int]] = []
    failed = [0]

    class Forward(BaseHTTPRequestHandler):
        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
            if prefix and not (self.path == prefix or self.path.startswith(prefix + "/")):
                records.append((self.command, self.path, len(body), 404))
                self.send_error(404)
                return
            if fail_when and fail_when in body and (fail_times is None or failed[0] < fail_times):
                failed[0] += 1
                records.append((self.command, self.path, len(body), fail_status))
                reply = b'{"detail": "internal error: RuntimeError: the test proxy failed this request"}'
                self.send_response(fail_status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                return
            path = self.path[len(prefix):] or "/"  # /classifier is /classifier/ to the server (as Traefik's StripPrefix)
            r = httpx.request(self.command, target + path, content=body, headers=headers, timeout=60)
            records.append((self.command, self.path, len(body), r.status_code))
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("content-type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = _forward

        def log_message(self, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", records
    finally:
        server.shutdown()
        server.server_close()
