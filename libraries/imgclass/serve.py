"""The REST web service: score uploaded photos with a model bundle (FastAPI + ONNX Runtime).

Endpoints
- POST /score: multipart upload (field "images", repeatable, or "image"), or a JSON body
  {"images": [base64, ...]} / {"image": base64} (not the tutorial's Azure ML "input_df" form). Reply:
  {"model_version", "classes", "score_kind", "results": [{"name", "label", "scores": {class: score}}]}.
- GET /health, GET /info (classes, model version, metrics, preprocessing, limits, formats), GET / (the web
  page), GET /docs (OpenAPI).

With $IMGCLASS_API_KEY set (the environment, never PARAMETERS.py: a key is a secret), /score and /info
need `Authorization: Bearer <key>` or `X-API-Key: <key>`, else 401; /health, the page and the API docs
stay open, for load balancers, container health checks and the page that asks for the key.

Each image is decoded as imgclass.images.load_square decodes it, exactly as stage 3 decodes training
images, so the service sees the same pixels; only the formats of ACCEPTED_FORMATS are decoded.
Requests run concurrently: decoding in a pool of about one thread per usable core (a full-size
decode can take hundreds of MB, so a burst of uploads must not decode all at once), and the network
in one thread that takes every image waiting (up to `max_batch`) in one ONNX Runtime call. On two
cores a batch costs about what its images cost one by one (README, "Deployment"): a small batch
keeps a request from waiting behind many others' images. Several worker processes (`workers`) each
load their own copy and share the cores out.

Limits answer with a 4xx JSON error {"detail": "..."} and never stop the server: request bytes
(413, also for chunked uploads), pixels per image, which stops decompression bombs before decoding
(413), images per request (413), empty request (400), malformed JSON or base64 (400), not an image
or a format not accepted (415). More requests to score at once than `max_concurrent` per worker:
503 with Retry-After (each holds its upload in memory while it waits); a body that stops arriving
for `body_timeout` seconds: 408.

This module imports neither torch nor pickle: a worker starts in about a second and holds only the
ONNX model.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import binascii
import concurrent.futures
import contextlib
import errno
import hmac
import io
import ipaddress
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from imgclass.cpus import usable_cpus
from imgclass.export import Bundle, cpu_session, load_bundle
from imgclass.images import DRAFT_OVERSAMPLE, ImageDecodeError, decode_reason, load_square, openers
from imgclass.params import ENV_API_KEY, api_key_problem, origin_problem, service_url

if TYPE_CHECKING:
    from imgclass.params import Params

GRACE_SECONDS = 5.0  # after SIGTERM / Ctrl-C, for requests in progress (docker stop kills after 10 s)
ENV_CONFIG = "IMGCLASS_SERVE_CONFIG"  # how `workers > 1` hands the settings to each worker process
# The API key (params.ENV_API_KEY), when the service needs one, is only ever read from the environment,
# which worker processes inherit: it never enters ServeConfig, whose JSON goes through ENV_CONFIG and
# may be printed or logged.
PROTECTED_PATHS = ("/score", "/info")  # what a key guards; /health, /, /static, /docs stay open
STATIC_DIR = Path(str(resources.files("imgclass") / "static"))
# The Pillow formats the service decodes: what cameras, phones and browsers produce. Pillow reads
# some 40 more, and an upload must not reach decoders nobody needs here (EPS runs Ghostscript).
# HEIF needs pillow-heif and AVIF a Pillow built with libavif: `accepted_formats()` keeps those
# this install has. MPO (a camera's multi-picture JPEG) has no opener of its own: JPEG's reads it.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "HEIF", "AVIF")


def accepted_formats() -> tuple[str, ...]:
    """ACCEPTED_FORMATS that this install can read."""
    Image.init()
    return tuple(f for f in ACCEPTED_FORMATS if f in Image.OPEN or (f == "MPO" and "JPEG" in Image.OPEN))


@dataclass(frozen=True)
class ServeConfig:
    """What the service serves and its limits (PARAMETERS.py's dep_* values by default)."""

    bundle: str
    max_upload_bytes: int = 20_000_000
    max_pixels: int = 50_000_000  # as decoded: a plain JPEG at its reduced scale, other formats (HEIC, MPO) whole
    max_images: int = 16
    max_batch: int = 4
    threads: int = 0  # ONNX Runtime intra-op threads (0 = the usable cores / workers)
    workers: int = 1  # processes serving side by side: the default thread counts share the cores out
    decode_threads: int = 0  # images decoded at once (0 = the usable cores / workers)
    max_concurrent: int = 32  # requests to score one worker holds at once (each with its body in memory)
    body_timeout: float = 30.0  # seconds a request may pause while sending its body before it is dropped (408)
    cors_origins: tuple[str, ...] = ()  # web pages (origins) elsewhere allowed to call it from a browser; "*" = any

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_images", "max_batch", "workers", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 1")
        for name in ("threads", "decode_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} = {getattr(self, name)}: must be >= 0")
        if not self.body_timeout > 0:
            raise ValueError(f"body_timeout = {self.body_timeout}: must be > 0")
        for origin in self.cors_origins:
            if problem := origin_problem(origin):
                raise ValueError(f"CORS origin {origin!r}: {problem}")

    def cores_each(self) -> int:
        """This process's share of the usable cores (affinity and CPU quota, not os.cpu_count())."""
        return max(1, usable_cpus() // self.workers)


def check_port_free(host: str, port: int) -> None:
    """Raise ValueError naming host and port where the service could not listen (another program on
    the port, an address this machine does not have): said before anything slow, not after it."""
    if not 1 <= port <= 65535:  # getaddrinfo would wrap 99999 into 16 bits, and uvicorn fail in a traceback
        raise ValueError(f"port {port}: must be between 1 and 65535 (--port, dep_port)")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}; check the address (--host, dep_host)") from None
    failures = []
    for family, kind, proto, _, address in addresses:  # "localhost" is ::1 and 127.0.0.1: uvicorn takes both
        with socket.socket(family, kind, proto) as s:
            if os.name == "posix":
                # As uvicorn binds there: a port left in TIME_WAIT by the service's own last run is free.
                # (On Windows SO_REUSEADDR would let this bind a port another program listens on.)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}; another program listens there: "
                                     f"stop it, or choose another port (--port, dep_port)") from None
                failures.append(e)
    if failures and len(failures) == len(addresses):  # one usable address is enough (IPv6 may be off)
        raise ValueError(f"cannot listen on {host}:{port}: {failures[0].strerror or failures[0]}; "
                         f"check the address (--host, dep_host)")


def api_key_from_env() -> bytes | None:
    """The key in $IMGCLASS_API_KEY (surrounding whitespace dropped: HTTP drops it from header values,
    so such a key could never be sent), or None when unset or empty: no key needed. ValueError for a
    key no HTTP header can carry; the message never shows the key."""
    key = os.environ.get(ENV_API_KEY, "").strip()
    if not key:
        return None
    if problem := api_key_problem(key):
        raise ValueError(f"{problem}; choose another key")
    return key.encode("ascii")


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the service to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # "" and 0.0.0.0 parse; a host name that is not localhost may be any interface
        return False
    # ::ffff:127.0.0.1 (IPv4 loopback written as IPv6) is not loopback to Python before 3.13.
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def exposure_note(host: str, key_required: bool) -> str:
    """A word at startup when the service listens beyond this machine and anyone reaching it may use it."""
    if key_required or is_loopback(host):
        return ""
    return (f"note: listening on {host or 'every address'} without an API key: anyone who can reach this address "
            f"can use the service; set {ENV_API_KEY} to require a key")


class RequestError(Exception):
    """A request the service refuses: HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ShuttingDown(RequestError):
    """The reply to a request still waiting when the service stops (SIGTERM, Ctrl-C): a JSON 503
    the caller can retry elsewhere, not uvicorn's bare-text 500 for a cancelled request."""

    def __init__(self) -> None:
        super().__init__(503, "the service is shutting down; send the request again (to another instance, "
                              "or once it is back)")


class Scorer:
    """The bundle's ONNX model behind a batching queue: score(images) from any thread."""

    def __init__(self, bundle: Bundle, threads: int = 0, max_batch: int = 4, processes: int = 1) -> None:
        self.bundle = bundle
        self.max_batch = max_batch
        self.session = cpu_session(bundle.model_path, threads, processes)
        self.input_name = self.session.get_inputs()[0].name
        self._queue: queue.Queue[tuple[np.ndarray, concurrent.futures.Future] | None] = queue.Queue()
        self._lock = threading.Lock()  # submit() and close() agree on whether the queue still takes work
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="onnx-batcher", daemon=True)
        self._thread.start()
        # A second Ctrl-C makes uvicorn skip the app's shutdown: without this the interpreter could
        # exit with the batcher inside ONNX Runtime, which aborts the process ("terminate called").
        atexit.register(self.close)

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, R, R, 3) uint8 -> (N, K) scores, directly (no queue)."""
        return self.session.run(None, {self.input_name: self.bundle.normalize(images)})[0]

    def submit(self, image: np.ndarray) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise ShuttingDown()
            self._queue.put((image, fut))
        return fut

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            # Take whatever else is already waiting: no timer, so a lone request is not delayed.
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            # Requests that have gone (client hung up, or cancelled at shutdown) are not scored.
            batch = [(img, fut) for img, fut in batch if fut.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                scores = self.run(np.stack([img for img, _ in batch]))
            except Exception as e:  # noqa: BLE001 - every waiting request must hear about it
                for _, fut in batch:
                    _settle(fut, exception=e)
                continue
            for (_, fut), row in zip(batch, scores):
                _settle(fut, result=row)

    def close(self) -> None:
        """Answer every request still queued with ShuttingDown, let the batch in progress finish
        (one ONNX Runtime call: seconds at most), and stop the thread. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    _settle(item[1], exception=ShuttingDown())
            self._queue.put(None)
        self._thread.join()
        atexit.unregister(self.close)


def _settle(fut: concurrent.futures.Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Hand a result over, unless its request has gone (client hung up: the future is cancelled)."""
    try:
        if exception is not None:
            fut.set_exception(exception)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _format_of(data: bytes) -> str | None:
    """The Pillow format of a file the service does not accept (header only: nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format
    except Exception:  # noqa: BLE001 - only to name the format in the error; unknown is fine
        return None


def decode_image(data: bytes, name: str, size: int, resize_mode: str, max_pixels: int,
                 formats: Sequence[str] | None = None) -> np.ndarray:
    """Bytes -> (size, size, 3) uint8 as stage 3 decodes them (load_square), reading only `formats`
    (default: accepted_formats()); RequestError for anything unusable."""
    if not data:
        raise RequestError(400, f"{name}: empty file")
    formats = accepted_formats() if formats is None else tuple(formats)
    readers = openers(formats)
    try:
        with Image.open(io.BytesIO(data), formats=readers) as probe:  # reads the header only
            w, h = probe.size
            # What counts is what decoding will hold in memory: a JPEG is decoded at the reduced
            # scale load_square asks for (draft() sets it without decoding), so a 108-megapixel
            # phone photo takes a few megapixels; every other format is decoded whole.
            if probe.format == "JPEG":  # as load_rgb decides
                probe.draft("RGB", (DRAFT_OVERSAMPLE * size, DRAFT_OVERSAMPLE * size))
            dw, dh = probe.size
    except Image.DecompressionBombError as e:  # Pillow's own cap (a few hundred megapixels), above max_pixels
        # Its message quotes its own limit, not the service's: the image's size from it, the limit ours.
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size_text = f"{pixels.group(1)} pixels" if pixels else "more pixels than Pillow decodes"
        raise RequestError(413, f"{name}: {size_text}, more than the limit of {max_pixels}") from None
    except UnidentifiedImageError:
        other = _format_of(data)
        if other is not None:
            raise RequestError(415, f"{name}: {other} images are not accepted; send {', '.join(formats)}") from None
        raise RequestError(415, f"{name}: not an image (unrecognised file format, {len(data)} bytes)") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as e:  # as every stage catches them
        # (a damaged AVIF raises RuntimeError from its plugin's header read), in the words every stage uses
        raise RequestError(415, f"{name}: {decode_reason(e, data)}") from None
    if dw * dh > max_pixels:
        decoded = f" (decoded at {dw}x{dh})" if (dw, dh) != (w, h) else ""
        raise RequestError(413, f"{name}: {w}x{h}{decoded} = {dw * dh} pixels, more than the limit of {max_pixels}")
    try:
        return load_square(data, size, resize_mode, formats=readers)
    except ImageDecodeError as e:  # its reason in the words every stage uses for the same file
        raise RequestError(415, f"{name}: {e.reason}") from None


_B64_WHITESPACE = b" \t\n\r\v\f"


def _b64(text: Any, name: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(400, f"{name}: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):  # a browser's data URL: "data:image/jpeg;base64,...."
        text = text.partition(",")[2]
    try:
        # The `base64` command and base64.encodebytes break lines every 76 characters: drop ASCII
        # whitespace, then validate strictly (anything else that is not base64 is an error).
        return base64.b64decode(text.encode("ascii").translate(None, _B64_WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as e:  # UnicodeEncodeError is a ValueError
        raise RequestError(400, f"{name}: not valid base64 ({e})") from None


USAGE = ('send images as multipart/form-data (field "images", repeatable, or "image") '
         'or as JSON {"images": [base64, ...]}')


async def read_images(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """The (name, bytes) of every image in a request, in order."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=max_images + 1, max_fields=max_images + 8)
        except RequestError:  # BodyLimit's _BodyTooLarge, raised while the body streams in: a 413
            raise
        except Exception as e:  # noqa: BLE001 - starlette raises several kinds for a broken body
            detail = str(getattr(e, "detail", e))
            if "too many files" in detail.lower():
                # (starlette counts every file part, whatever its field: "files", as it counted)
                raise RequestError(413, f"more than {max_images + 1} files in one request; the limit is "
                                        f"{max_images} images") from None
            raise RequestError(400, f"malformed multipart body ({detail})") from None
        files = [v for k, v in form.multi_items() if k in ("images", "image")]
        if any(isinstance(v, str) for v in files):
            raise RequestError(400, 'multipart fields "images"/"image" must be files, not text')
        if len(files) > max_images:
            raise RequestError(413, f"{len(files)} images in one request, more than the limit of {max_images}")
        if not files:
            others = sorted({k for k, _ in form.multi_items()})
            raise RequestError(400, f"no image in the request (fields: {others or 'none'}); {USAGE}")
        out = []
        for i, f in enumerate(files):
            out.append((f.filename or f"image {i + 1}", await f.read()))
            await f.close()
        return out
    try:
        body = await request.body()
    except ClientDisconnect:  # nobody to answer; without this, a ~60-line traceback in the log
        raise RequestError(400, "the client disconnected before its request had arrived") from None
    if not body:
        raise RequestError(400, f"empty request; {USAGE}")
    if ctype and not ctype.startswith("application/json"):
        raise RequestError(415, f"content type {ctype!r} not accepted; {USAGE}")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"malformed JSON ({e}); {USAGE}") from None
    except RecursionError:  # [[[[...]]]] nested deeper than the parser goes: no image request looks so
        raise RequestError(400, f"malformed JSON (nested too deeply); {USAGE}") from None
    if not isinstance(doc, dict) or not ("images" in doc or "image" in doc):
        raise RequestError(400, f'JSON body without "images" or "image"; {USAGE}')
    if not isinstance(doc.get("images", []), list):
        raise RequestError(400, '"images" must be a list of base64 strings')
    # Both keys: both scored, "image" first, as a form with both fields is (one was dropped unsaid).
    items = ([doc["image"]] if "image" in doc else []) + doc.get("images", [])
    if not items:
        raise RequestError(400, '"images" is an empty list')
    if len(items) > max_images:
        raise RequestError(413, f"{len(items)} images in one request, more than the limit of {max_images}")
    return [(f"image {i + 1}", _b64(t, f"image {i + 1}")) for i, t in enumerate(items)]


class _BodyTooLarge(RequestError):
    """Raised from inside receive(): the app's RequestError handler turns it into the 413 reply."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than the limit of {max_bytes} bytes")


async def _json_reply(send: Callable[..., Awaitable[None]], status: int, detail: str,
                      headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A JSON error reply {"detail": ...} sent by a middleware, before the app: the connection is closed
    after it, since the request's body was not (all) read."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: refuse a request body over `max_bytes` before it is read into memory."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable[..., Awaitable[dict]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        detail = _BodyTooLarge(limit).message
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _json_reply(send, 413, detail)
            return
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _json_reply(send, 413, detail)


class _BodyTimeout(RequestError):
    """Raised from inside receive(): the client stopped sending its body; the app answers 408."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body stopped arriving for {seconds:g} s (dep_bodyTimeoutSec); send it again")


class ConcurrencyLimit:
    """ASGI middleware: at most `max_requests` POSTs (requests to score) in progress at once; one
    more is answered 503 with Retry-After at once, before its body is read.

    Each request in progress holds its upload (up to max_upload_bytes) in memory while it arrives
    and while it waits for the decoders and the network, so without a bound a burst of large
    uploads could take gigabytes. A client told to retry later loses nothing; one the server runs
    out of memory for does. A request whose body stops arriving for `body_timeout` seconds is
    answered 408 and its place freed: without that, a few stalled uploads would shut every other
    client out for good (uvicorn sets no such timeout). Requests that only read (the page, /info,
    /health) are not counted: they cost nothing."""

    RETRY_AFTER_SECONDS = 1

    def __init__(self, app: Callable[..., Awaitable[None]], max_requests: int, body_timeout: float = 30.0) -> None:
        self.app = app
        self.max_requests = max_requests
        self.body_timeout = body_timeout
        self.active = 0  # one event loop per worker process: no lock needed

    async def __call__(self, scope: dict, receive: Callable[..., Awaitable[dict]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            await _json_reply(send, 503, f"busy: {self.active} requests in progress, the limit (dep_maxConcurrent); "
                                         f"retry in a moment", [(b"retry-after", str(self.RETRY_AFTER_SECONDS).encode())])
            return
        body_done = False
        started = False

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:  # after the body only a disconnect can come: no deadline for that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise _BodyTimeout(self.body_timeout) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.active += 1
        try:
            await self.app(scope, timed_receive, tracked_send)
        except _BodyTimeout as e:  # the app's RequestError handler answers it; this is in case it escaped
            if not started:
                await _json_reply(send, e.status, e.message)
        finally:
            self.active -= 1


def _route_path(scope: dict) -> str:
    """The request's path as the routes see it, without dep_rootPath (what starlette's private
    get_route_path computes: a proxy may pass the prefix on in the path, or strip it)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("/", ""):
        return path[len(root):]
    return path


class ApiKeyRequired:
    """ASGI middleware: requests to PROTECTED_PATHS without the key (`Authorization: Bearer <key>` or
    `X-API-Key: <key>`) get 401 with `WWW-Authenticate: Bearer`, before the limits count them, so a
    caller without the key takes no place among dep_maxConcurrent. CORS preflights (OPTIONS) pass:
    browsers send them without credentials."""

    HOW = "send the header 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')"

    def __init__(self, app: Callable[..., Awaitable[None]], key: bytes, max_drain_bytes: int,
                 body_timeout: float) -> None:
        self.app = app
        self.key = key
        self.max_drain_bytes = max_drain_bytes
        self.body_timeout = body_timeout

    def _sent_keys(self, headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """The keys a request sent. An empty one is none (a client sending "Authorization: Bearer "
        from an unset variable beside its X-API-Key was told it sent two keys)."""
        sent = []
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    sent.append(token.strip())
            elif name == b"x-api-key":
                sent.append(value.strip())
        return [key for key in sent if key]

    async def __call__(self, scope: dict, receive: Callable[..., Awaitable[dict]], send: Callable[..., Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _route_path(scope) not in PROTECTED_PATHS:
            await self.app(scope, receive, send)
            return
        # One key a request (the same one in both headers is one): any of several was let in, so a
        # request with 400 X-API-Key headers tried 400 guesses at once.
        sent = set(self._sent_keys(scope["headers"]))
        if len(sent) == 1 and hmac.compare_digest(next(iter(sent)), self.key):  # constant time
            await self.app(scope, receive, send)
            return
        if len(sent) > 1:
            detail, challenge = (f"more than one API key was sent; {self.HOW}, once",
                                 b'Bearer error="invalid_request"')
        elif sent:
            detail, challenge = f"the API key sent is not the service's key; {self.HOW}", b'Bearer error="invalid_token"'
        else:
            detail, challenge = f"this service needs an API key: {self.HOW}", b"Bearer"
        await self._drain(receive)
        await _json_reply(send, 401, detail, [(b"www-authenticate", challenge)])

    async def _drain(self, receive: Callable[..., Awaitable[dict]]) -> None:
        """Read and drop an upload (up to the upload limit) before answering: a reply sent while the
        browser still sends its photo often reaches the page as a network error, not as the 401 that
        makes the page ask for the key. Nothing is kept; a body that stalls or is over the limit is
        not waited for."""
        seen = 0
        while seen <= self.max_drain_bytes:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


def _declare_api_key(app: FastAPI) -> None:
    """Say in the OpenAPI description that PROTECTED_PATHS need the key (ApiKeyRequired enforces it),
    so that /docs shows an "Authorize" button and its "Try it out" sends the key instead of meeting 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the service's IMGCLASS_API_KEY"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            for path in PROTECTED_PATHS:
                for operation in schema.get("paths", {}).get(path, {}).values():
                    operation["security"] = [{"bearer": []}, {"apiKey": []}]  # either one
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(config: ServeConfig) -> Any:
    """The FastAPI app for one bundle; with $IMGCLASS_API_KEY set, /score and /info need the key."""
    api_key = api_key_from_env()  # each worker reads it for itself: it is not in `config`
    bundle = load_bundle(config.bundle)
    scorer = Scorer(bundle, threads=config.threads, max_batch=config.max_batch, processes=config.workers)
    formats = accepted_formats()
    # A full-size decode can hold hundreds of MB (a 16-Mpixel PNG of 24 kB takes ~100 MB), and
    # decoding is CPU-bound: about one decode per core keeps throughput while a burst of such
    # uploads waits its turn instead of exhausting memory (the default pool runs 40 at once).
    decoder = concurrent.futures.ThreadPoolExecutor(config.decode_threads or config.cores_each(),
                                                    thread_name_prefix="decode")

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        decoder.shutdown(wait=False, cancel_futures=True)
        scorer.close()

    app = FastAPI(
        lifespan=lifespan,
        title="imgclass image classifier",
        version=bundle.version,
        description=f"Scores photos as one of {', '.join(bundle.classes)}. POST images to /score.",
    )
    app.state.scorer = scorer
    app.state.decoder = decoder
    limits = {"max_upload_bytes": config.max_upload_bytes, "max_pixels": config.max_pixels,
              "max_images_per_request": config.max_images}

    @app.exception_handler(RequestError)
    async def _refused(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(e).__name__}: {e}"}, status_code=500)

    async def decode_all(items: Sequence[tuple[str, bytes]]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        done = await asyncio.gather(*(loop.run_in_executor(
            decoder, decode_image, data, name, bundle.resolution, bundle.resize_mode, config.max_pixels, formats)
            for name, data in items), return_exceptions=True)
        for x in done:  # the first bad image in the request's order is the one named
            if isinstance(x, BaseException):
                raise x
        return done

    @app.post("/score", summary="Score one or more images",
              description=f"{USAGE}. Reply: label and score per class for each image, and the model version.",
              openapi_extra={"requestBody": {"content": {
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
                  "application/json": {"schema": {"type": "object", "properties": {
                      "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}}}}})
    async def score(request: Request) -> dict[str, Any]:
        try:
            items = await read_images(request, config.max_images)
            arrays = await decode_all(items)
            rows = await asyncio.gather(*(asyncio.wrap_future(scorer.submit(a)) for a in arrays))
        except asyncio.CancelledError:
            # Only uvicorn cancels a request: its grace period after SIGTERM / Ctrl-C
            # (dep_graceSec) is over. Answer it; uncaught, the caller gets a bare-text 500.
            raise ShuttingDown() from None
        results = []
        for (name, _), row in zip(items, rows):
            results.append({
                "name": name,
                "label": bundle.classes[int(np.argmax(row))],
                "scores": {c: float(s) for c, s in zip(bundle.classes, row)},
            })
        return {"model_version": bundle.version, "classes": list(bundle.classes),
                "score_kind": bundle.score_kind, "results": results}

    # HEAD (what uptime monitors send) answers as GET does, but stays out of the API description: one
    # route for both methods gave both the same operationId there, which OpenAPI forbids (FastAPI
    # warned in the server's log at every /docs, and client generators may refuse the file).
    @app.get("/health", summary="Liveness and the model version")
    @app.head("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": bundle.version}

    @app.get("/info", summary="Classes, model version, training metrics, preprocessing and limits")
    @app.head("/info", include_in_schema=False)
    async def info() -> dict[str, Any]:
        return {"model_version": bundle.version, "classes": list(bundle.classes), "classifier": bundle.classifier,
                "dataset": bundle.info.get("source", {}).get("dataset") or None, "score_kind": bundle.score_kind,
                "backbone": bundle.info.get("backbone"),
                "preprocessing": bundle.info["preprocessing"], "metrics": bundle.metrics, "limits": limits,
                "formats": list(formats), "created": bundle.info.get("created")}

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if api_key is not None:
        _declare_api_key(app)
    # Outside the app, so a request over a limit is refused before any of its body is read.
    limited = ConcurrencyLimit(BodyLimit(app, config.max_upload_bytes), config.max_concurrent, config.body_timeout)
    if api_key is not None:
        limited = ApiKeyRequired(limited, api_key, config.max_upload_bytes, config.body_timeout)
    if not config.cors_origins:
        return limited
    # Outermost: a browser then reads the limits' 413 / 503 and the key's 401 replies too, and their
    # Retry-After and WWW-Authenticate; and its preflight is answered without a key. "*": starlette
    # names back every header the preflight asks for, Authorization included (browsers would not
    # take a literal "*" to cover Authorization).
    return CORSMiddleware(limited, allow_origins=list(config.cors_origins), allow_methods=["GET", "HEAD", "POST"],
                          allow_headers=["*"],
                          expose_headers=["Retry-After", "WWW-Authenticate"], max_age=600)


def app_from_env() -> Any:
    """uvicorn factory for worker processes: the settings come from $IMGCLASS_SERVE_CONFIG."""
    return create_app(ServeConfig(**json.loads(os.environ[ENV_CONFIG])))


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          root_path: str = "", grace: float = GRACE_SECONDS) -> None:
    """Run the service until interrupted. `root_path`: the path a reverse proxy serves it under
    ("/classifier"), which the API documentation page needs to find /openapi.json. `grace`: seconds
    that requests in progress get to finish after SIGTERM / Ctrl-C; those still waiting then get a
    503 (docker stop waits 10 s before it kills, Kubernetes 30 s)."""
    import uvicorn

    key_required = api_key_from_env() is not None  # a key no header can carry: said once, here, not per worker
    load_bundle(config.bundle)  # fail here, once, with a clear message, not in every worker
    check_port_free(host, port)  # before "serving ...", which would otherwise come first
    url = service_url(host, port)
    key = f"; API key required ({ENV_API_KEY})" if key_required else ""
    print(f"serving {config.bundle} on {url}/ ({workers} worker(s)){key}; API docs at {url}/docs; Ctrl-C stops it",
          flush=True)
    if note := exposure_note(host, key_required):
        print(note, flush=True)
    config = replace(config, workers=workers)  # each worker takes its share of the cores
    os.environ[ENV_CONFIG] = json.dumps(asdict(config))
    # uvicorn raises the SIGTERM it stopped on again once it has shut down, with the handler it found:
    # the default one ended a graceful stop as a kill (exit status 143, "Exited (143)" in docker ps),
    # where Ctrl-C ends with 0. This handler makes that second SIGTERM a clean exit.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run("imgclass.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level="warning", access_log=False, timeout_graceful_shutdown=grace, root_path=root_path)
    finally:
        signal.signal(signal.SIGTERM, previous)


def service_command(bundle: str | Path, p: Params, host: str, port: int, workers: int) -> list[str]:
    """The command that serves `bundle` with the parameters' dep_* limits (stage 6 runs it). A fresh
    interpreter serves: it never imports torch, so it starts fast and stays small."""
    return [sys.executable, "-m", "imgclass.serve", str(bundle), "--host", host, "--port", str(port),
            "--workers", str(workers), "--threads", str(p.dep_threads), "--max-batch", str(p.dep_maxBatch),
            "--max-upload-bytes", str(p.dep_maxUploadBytes), "--max-pixels", str(p.dep_maxPixels),
            "--max-images", str(p.dep_maxImagesPerRequest), "--max-concurrent", str(p.dep_maxConcurrent),
            "--body-timeout", str(p.dep_bodyTimeoutSec), "--grace", str(p.dep_graceSec),
            "--root-path", p.dep_rootPath, *(f"--cors-origin={o}" for o in p.dep_corsOrigins)]


def become_service(cmd: list[str]) -> int:
    """Run `cmd` (service_command) in place of this process, which never returns; on Windows, as a
    child, whose exit status it returns. Windows has no exec: os.execv starts a new process and ends
    this one, which would leave the server running detached, out of reach of Ctrl-C and of whoever
    started this one. As a child, Ctrl-C reaches both, and the server is given time to shut down
    (subprocess.call would kill it after a quarter of a second)."""
    sys.stdout.flush()
    if os.name != "nt":
        os.execv(sys.executable, cmd)
    server = subprocess.Popen(cmd)
    try:
        return server.wait()
    except KeyboardInterrupt:
        try:
            return server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            return 1


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclass.serve", description="Serve a model bundle over HTTP.")
    parser.add_argument("bundle", help="bundle folder written by scripts/6_deploy.py")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--root-path", default="", help='path a reverse proxy serves the service under, e.g. /classifier')
    parser.add_argument("--max-upload-bytes", type=int, default=ServeConfig.max_upload_bytes)
    parser.add_argument("--max-pixels", type=int, default=ServeConfig.max_pixels)
    parser.add_argument("--max-images", type=int, default=ServeConfig.max_images)
    parser.add_argument("--max-batch", type=int, default=ServeConfig.max_batch)
    parser.add_argument("--threads", type=int, default=ServeConfig.threads,
                        help="ONNX Runtime threads per worker (0 = the usable cores divided among the workers)")
    parser.add_argument("--decode-threads", type=int, default=ServeConfig.decode_threads,
                        help="images decoded at once per worker (0 = the usable cores divided among the workers)")
    parser.add_argument("--max-concurrent", type=int, default=ServeConfig.max_concurrent,
                        help="requests to score one worker holds at once; more are answered 503 with Retry-After")
    parser.add_argument("--body-timeout", type=float, default=ServeConfig.body_timeout,
                        help="seconds a request may pause while sending its body; then 408 and its place is free")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help='a web page elsewhere allowed to call the service from a browser, e.g. '
                             'https://example.com (repeatable; "*" = any page)')
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS,
                        help="seconds requests in progress get to finish after SIGTERM / Ctrl-C; then 503")
    a = parser.parse_args(argv)
    try:
        if a.workers < 1:
            raise ValueError(f"--workers {a.workers}: must be >= 1")
        if not a.grace >= 0:
            raise ValueError(f"--grace {a.grace}: must be >= 0")
        config = ServeConfig(a.bundle, a.max_upload_bytes, a.max_pixels, a.max_images, a.max_batch, a.threads,
                             a.workers, a.decode_threads, a.max_concurrent, a.body_timeout, tuple(a.cors_origin))
        serve(config, a.host, a.port, a.workers, a.root_path, a.grace)
    except ValueError as e:
        print(f"error: {e}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
