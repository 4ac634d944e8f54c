"""Client of the stage-6 web service (imgclass.serve): find image files, pack them into requests
within the service's limits, score them, wait while the service is busy, and isolate a file the
service refuses so every other image still gets its answer.

    with ServiceClient("http://127.0.0.1:8000", timeout=60) as client:
        for path, result, error in client.score_files(find_images(Path("photos"))):
            print(path, result["label"] if result else error)

A service that needs an API key (its IMGCLASS_API_KEY) is sent the one in this process's
IMGCLASS_API_KEY, as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from imgclass.data import NOT_CLASS_PREFIXES, shown, skipped_below, skipped_note, unread_images_note, walk_image_files
from imgclass.params import ENV_API_KEY, api_key_problem
from imgclass.terminal import first_few

# Bytes a multipart request adds to the files it carries, counted generously: the closing boundary
# (REQUEST_OVERHEAD) and per file a boundary line and headers of ~150 bytes plus the file name,
# escaped (PART_OVERHEAD + 3 bytes per byte of name).
REQUEST_OVERHEAD = 1024
PART_OVERHEAD = 512

# A busy service (HTTP 503; 502 or 504 from a proxy whose backend is restarting) is asked again
# after 1, 2, 4, 8, then 10 s (BUSY_MAX_WAIT), or after the longer wait it asks for in Retry-After
# (a proxy in maintenance: up to GIVEN_MAX_WAIT), at most BUSY_RETRIES times for one request.
TRY_AGAIN = (502, 503, 504)
BUSY_RETRIES = 8
BUSY_MAX_WAIT = 10.0
GIVEN_MAX_WAIT = 120.0


def not_accepted(paths: list[Path], formats: list[str]) -> list[Path]:
    """The files among `paths` whose extension names an image format outside `formats` (the service's
    /info "formats"): the pipeline reads a GTSRB .ppm, the service refuses it, so sending it costs a
    request and a refusal. A file named as an accepted format is sent: the service reads its content."""
    from PIL import Image

    by_extension = Image.registered_extensions()
    accepted = set(formats) | ({"JPEG"} if "MPO" in formats else set())  # MPO: multi-picture JPEG
    return [p for p in paths if (fmt := by_extension.get(p.suffix.lower())) is not None and fmt not in accepted]


class ServiceError(RuntimeError):
    """The service is unreachable or refused a request; the message says which and why. `status`:
    the HTTP status of a refusal (None when no reply came); `retry_after`: the seconds a busy
    service (503) asked the client to wait, when it said."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def find_images(source: Path, broken_links: list[Path] | None = None) -> list[Path]:
    """`source` itself when it is a file, else the image files under the folder, sorted, chosen as
    scoreImages.py and stage 1 choose them: hidden files skipped (macOS leaves "._IMG_1.jpg" beside
    every photo copied to a USB stick, 4 kB of metadata that no decoder reads), and folders whose
    names start with '_' or '.' (`_duplicates/`); see skipped_below for the ones to mention. Links
    with an image's name whose target is missing go to `broken_links`, when given."""
    if source.is_file():
        return [source]
    if source.is_dir():
        dangling: list[Path] = []
        found = walk_image_files(source, skip_prefixes=NOT_CLASS_PREFIXES, broken_links=dangling)
        if not found:
            skipped = skipped_below(source)
            unread = unread_images_note(source, "sent")
            raise FileNotFoundError(f"{source}: no image files in this folder"
                                    + (f" outside folders starting with _: {skipped_note(skipped)}" if skipped else "")
                                    + (f"; {unread}" if unread else "")
                                    + (f"; links to files that do not exist: {first_few([str(d) for d in dangling])}"
                                       if dangling else ""))
        if broken_links is not None:
            broken_links += dangling
        return found
    raise FileNotFoundError(f"{source}: no such file or folder")


def batches(images: list[Path], max_images: int, max_bytes: int | None) -> list[list[Path]]:
    """The images in order, in groups of at most `max_images` whose request (multipart framing
    included) stays within `max_bytes`; a file that fits in no request forms a group of its own,
    so the service names it."""
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


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class ServiceClient:
    """A connection to one service. `say` receives the notes a person running the client wants to
    see (waiting for a busy service, a request resent one image at a time); stderr by default."""

    def __init__(self, url: str, timeout: float, say: Callable[[str], None] = _to_stderr,
                 api_key: str | None = None) -> None:
        """`api_key`: the service's key (None: $IMGCLASS_API_KEY; empty: none)."""
        self.url = url.rstrip("/")
        try:
            httpx.URL(self.url)
        except httpx.InvalidURL as e:  # no HTTPError: it ended 6_callWebservice.py --url http://[::1 in a traceback
            raise ServiceError(f"{url!r} is not an address the client can call ({e}); e.g. http://127.0.0.1:8000") from None
        self.say = say
        key = (os.environ.get(ENV_API_KEY, "") if api_key is None else api_key).strip()
        if problem := api_key_problem(key):  # httpx would fail on each request with a UnicodeEncodeError
            raise ServiceError(f"{problem}; copy the service's key again")
        self._sends_key = bool(key)
        self._http = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {key}"} if key else None)
        self._info: dict | None = None

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def info(self) -> dict:
        """The service's /info: model version, classifier, classes and per-request limits."""
        if self._info is None:
            self._info = self._call("GET", "/info")
        return self._info

    def score(self, images: list[Path]) -> list[dict]:
        """The service's results for `images`, sent in one request; while the service is busy (503),
        or a proxy in front of it cannot reach it for now (502, 504: a restart), the request is sent
        again after a wait."""
        for attempt in range(BUSY_RETRIES + 1):
            try:
                files = [("images", (shown(f.name), f.read_bytes())) for f in images]
                return self._call("POST", "/score", files=files)["results"]
            except ServiceError as e:
                if e.status not in TRY_AGAIN or attempt == BUSY_RETRIES:
                    raise
                wait = min(GIVEN_MAX_WAIT, max(e.retry_after or 0.0, min(BUSY_MAX_WAIT, 2.0 ** attempt)))
                self.say(f"the service cannot take the request now ({e}); sending again in {wait:g} s")
                time.sleep(wait)
        raise AssertionError("not reached")

    def score_files(self, images: list[Path]) -> Iterator[tuple[Path, dict | None, ServiceError | None]]:
        """(image, result, None) for each image the service scored and (image, None, error) for each
        it refused or failed on, in order, in requests within the service's limits. Raises
        ServiceError when the service cannot be reached, stays busy, or fails on every image alone
        (then the fault is the service's, or a proxy's, not one file's)."""
        limits = self.info().get("limits", {})
        per_request = int(limits.get("max_images_per_request", 1))
        max_bytes = limits.get("max_upload_bytes")  # older services do not say: count images only
        for chunk in batches(images, per_request, None if max_bytes is None else int(max_bytes)):
            if len(chunk) == 1:
                yield self._score_one(chunk[0])
                continue
            try:
                results = self.score(chunk)
            except ServiceError as e:
                if e.status is None or e.status in TRY_AGAIN or e.status == 401:  # unreachable, busy for good, no key
                    raise
                # A refusal (4xx) or a failure inside the service (5xx) may come from one file of
                # the request: its images go again one at a time, so every other image still gets
                # its answer and the file is named.
                self.say(f"a request of {len(chunk)} images failed ({e}); sending them one at a time")
                alone = []
                for f in chunk:
                    alone.append(self._score_one(f))
                    yield alone[-1]
                if e.status >= 500 and all(err is not None and err.status >= 500 for _, _, err in alone):
                    raise ServiceError(f"the service failed on each image alone too ({e}): not one bad file but "
                                       f"the service (or a proxy before it); stopping", e.status) from None
                continue
            yield from ((f, result, None) for f, result in zip(chunk, results))

    def _score_one(self, image: Path) -> tuple[Path, dict | None, ServiceError | None]:
        try:
            return image, self.score([image])[0], None
        except ServiceError as e:
            if e.status is None or e.status in TRY_AGAIN or e.status == 401:  # not this file's fault
                raise
            return image, None, e

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            reply = self._http.request(method, self.url + path, **kwargs)
        except httpx.ConnectError as e:
            raise ServiceError(f"cannot reach the service at {self.url} ({e}); is it running? "
                               f"Start it with: python scripts/6_deploy.py") from None
        except httpx.TimeoutException:
            raise ServiceError(f"the service at {self.url} did not answer {method} {path} in time "
                               f"(--timeout)") from None
        except httpx.HTTPError as e:
            raise ServiceError(f"{method} {self.url}{path} failed: {e}") from None
        try:
            body = reply.json()
        except ValueError:
            body = {"detail": reply.text[:200]}
        if reply.status_code == 401:  # one line for the whole run, not a refusal per image
            if self._sends_key:
                raise ServiceError(f"the service at {self.url} rejected the API key in {ENV_API_KEY}", 401)
            raise ServiceError(f"the service at {self.url} needs an API key: set {ENV_API_KEY} to the service's key",
                               401)
        if reply.status_code != 200:
            retry_after = reply.headers.get("retry-after", "")
            # No such path: --url was most likely an endpoint (…/score) rather than the service's root.
            where = (f"{method} {self.url}{path} (is {self.url} the service's root, http://HOST:PORT with its "
                     f"proxy path if any, not one of its endpoints?)") if reply.status_code == 404 else f"{method} {path}"
            raise ServiceError(f"{where}: HTTP {reply.status_code}: {body.get('detail', body)}",
                               reply.status_code, float(retry_after) if retry_after.isdigit() else None)
        return body
