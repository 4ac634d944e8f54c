"""Stage 6 client: send photos to the web service and print each one's label and class scores.

Each IMAGE_OR_FOLDER is an image file or a folder (searched recursively for images, hidden files
left out); give as many
as you like, e.g. a shell glob. Images go in requests within the service's per-request limits
(images and bytes, from its /info); a file too large for any request is sent alone, so the service
names it. The reply's label and scores are printed one line per image. A request that fails is
sent again one image at a time (so one bad file costs only its own answer); while the service is
busy (HTTP 503), requests are sent again after the wait it asks for.
"""

import os
import sys
import time
from pathlib import Path

import httpx

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.data import shown
from imgclass.images import is_image_name

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="IMAGE_OR_FOLDER (image files), the service at --url",
    writes="nothing: prints <image> <label> <class>=<score> ... per image",
)
parser.add_argument("sources", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files, or folders of them")
parser.add_argument("--url", default=None, help="the service's address (default http://127.0.0.1:<dep_port>)")
parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for a reply (default dep_timeoutSec)")


# Bytes a multipart request adds to the files it carries, counted generously: the closing boundary
# (REQUEST_OVERHEAD) and per file a boundary line and headers of ~150 bytes plus the file name,
# escaped (PART_OVERHEAD + 3 bytes per byte of name).
REQUEST_OVERHEAD = 1024
PART_OVERHEAD = 512


class ServiceError(RuntimeError):
    """The service is unreachable or refused a request; the message says which and why. `status`:
    the HTTP status of a refusal (None when no reply came); `retry_after`: the seconds a busy
    service (503) asked the client to wait, when it said."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# A busy service (HTTP 503; 502 or 504 from a proxy whose backend is restarting) is asked again
# after 1, 2, 4, 8, then 10 s (BUSY_MAX_WAIT), or after the
# longer wait it asks for in Retry-After (a proxy in maintenance: up to GIVEN_MAX_WAIT), at most
# BUSY_RETRIES times for one request.
TRY_AGAIN = (502, 503, 504)  # busy, or a proxy's backend away for a moment
BUSY_RETRIES = 8
BUSY_MAX_WAIT = 10.0
GIVEN_MAX_WAIT = 120.0


def find_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        # Hidden files are skipped, as stage 1 skips them: macOS leaves "._IMG_1.jpg" beside every
        # photo copied to a USB stick, 4 kB of metadata that no decoder reads.
        found = sorted(f for f in source.rglob("*") if f.is_file() and is_image_name(f)
                       and not any(part.startswith(".") for part in f.relative_to(source).parts))
        if not found:
            raise FileNotFoundError(f"{source}: no image files in this folder")
        return found
    raise FileNotFoundError(f"{source}: no such file or folder")


def batches(images: list[Path], max_images: int, max_bytes: int | None) -> list[list[Path]]:
    """The images in order, in groups of at most `max_images` whose request (multipart framing
    included) stays within `max_bytes`; a file that fits in no request forms a group of its own."""
    groups: list[list[Path]] = []
    group: list[Path] = []
    size = REQUEST_OVERHEAD
    for f in images:
        cost = f.stat().st_size + PART_OVERHEAD + 3 * len(os.fsencode(f.name))
        if group and (len(group) >= max_images or (max_bytes is not None and size + cost > max_bytes)):
            groups.append(group)
            group, size = [], REQUEST_OVERHEAD
        group.append(f)
        size += cost
    if group:
        groups.append(group)
    return groups


def call(client: httpx.Client, url: str, method: str, path: str, **kwargs) -> dict:
    try:
        reply = client.request(method, url + path, **kwargs)
    except httpx.ConnectError as e:
        raise ServiceError(f"cannot reach the service at {url} ({e}); is it running? "
                           f"Start it with: python scripts/6_deploy.py") from None
    except httpx.TimeoutException:
        raise ServiceError(f"the service at {url} did not answer {method} {path} in time (--timeout)") from None
    except httpx.HTTPError as e:
        raise ServiceError(f"{method} {url}{path} failed: {e}") from None
    try:
        body = reply.json()
    except ValueError:
        body = {"detail": reply.text[:200]}
    if reply.status_code != 200:
        retry_after = reply.headers.get("retry-after", "")
        raise ServiceError(f"{method} {path}: HTTP {reply.status_code}: {body.get('detail', body)}", reply.status_code,
                           float(retry_after) if retry_after.isdigit() else None)
    return body


def score(client: httpx.Client, url: str, chunk: list[Path]) -> list[dict]:
    """The service's results for the images of `chunk`, sent in one request; while the service is
    busy (503), or a proxy in front of it cannot reach it for now (502, 504: a restart), the request
    is sent again after a wait."""
    for attempt in range(BUSY_RETRIES + 1):
        try:
            files = [("images", (shown(f.name), f.read_bytes())) for f in chunk]
            return call(client, url, "POST", "/score", files=files)["results"]
        except ServiceError as e:
            if e.status not in TRY_AGAIN or attempt == BUSY_RETRIES:
                raise
            wait = min(GIVEN_MAX_WAIT, max(e.retry_after or 0.0, min(BUSY_MAX_WAIT, 2.0 ** attempt)))
            print(f"the service cannot take the request now ({e}); sending again in {wait:g} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("not reached")


def send(client: httpx.Client, url: str, chunk: list[Path]) -> int:
    """Score the images of `chunk` in one request and print a line for each; returns how many
    the service refused or failed on."""
    if len(chunk) == 1:
        return int(_send_one(client, url, chunk[0]) is not None)
    try:
        results = score(client, url, chunk)
    except ServiceError as e:
        if e.status is None or e.status in TRY_AGAIN:  # unreachable, or busy for good: no use going on
            raise
        # A refusal (4xx) or a failure inside the service (5xx) may come from one file of the
        # request: its images go again one at a time, so every other image still gets its answer
        # and the file is named.
        print(f"a request of {len(chunk)} images failed ({e}); sending them one at a time", file=sys.stderr)
        statuses = [_send_one(client, url, f) for f in chunk]
        if e.status >= 500 and all(s is not None and s >= 500 for s in statuses):
            raise ServiceError(f"the service failed on each image alone too ({e}): not one bad file but the "
                               f"service (or a proxy before it); stopping", e.status) from None
        return sum(s is not None for s in statuses)
    for f, result in zip(chunk, results):
        print(_line(f, result))
    return 0


def _send_one(client: httpx.Client, url: str, image: Path) -> int | None:
    """Score one image and print its line; None when it was answered, else the HTTP status of the
    refusal (printed as an ERROR line)."""
    try:
        result = score(client, url, [image])[0]
    except ServiceError as e:
        if e.status is None or e.status in TRY_AGAIN:
            raise
        print(f"{shown(str(image))}\tERROR\t{e}", file=sys.stderr)
        return e.status
    print(_line(image, result))
    return None


def main() -> int:
    args, p = parse_stage(parser)
    url = (args.url or f"http://127.0.0.1:{p.dep_port}").rstrip("/")
    timeout = args.timeout if args.timeout is not None else p.dep_timeoutSec
    images = [f for source in args.sources for f in find_images(Path(source))]
    with httpx.Client(timeout=timeout) as client:
        info = call(client, url, "GET", "/info")
        limits = info.get("limits", {})
        per_request = int(limits.get("max_images_per_request", 1))
        max_bytes = limits.get("max_upload_bytes")  # older services do not say: count images only
        print(f"model {info['model_version']} ({info['classifier']}): {', '.join(info['classes'])}")
        failed = sum(send(client, url, chunk)
                     for chunk in batches(images, per_request, None if max_bytes is None else int(max_bytes)))
    if failed:
        print(f"{failed} of {len(images)} images refused by the service or failed in it", file=sys.stderr)
    return 1 if failed else 0


def _line(path: Path, result: dict) -> str:
    scores = "  ".join(f"{c}={s:.4f}" for c, s in result["scores"].items())
    return f"{shown(str(path))}\t{result['label']}\t{scores}"


if __name__ == "__main__":
    run_stage(main, (ServiceError,))
