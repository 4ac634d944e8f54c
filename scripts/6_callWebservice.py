"""Stage 6 client: send photos to the web service and print each one's label and class scores.

Each IMAGE_OR_FOLDER is an image file or a folder (searched recursively for images); give as many
as you like, e.g. a shell glob. Images go in requests within the service's per-request limits
(images and bytes, from its /info); a file too large for any request is sent alone, so the service
names it. The reply's label and scores are printed one line per image.
"""

import sys
from pathlib import Path

import httpx

from imgclass.cli import parse_stage, run_stage, stage_parser
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
    """The service is unreachable or refused a request; the message says which and why."""


def find_images(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        found = sorted(f for f in source.rglob("*") if f.is_file() and is_image_name(f))
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
        cost = f.stat().st_size + PART_OVERHEAD + 3 * len(f.name.encode())
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
        raise ServiceError(f"{method} {path}: HTTP {reply.status_code}: {body.get('detail', body)}")
    return body


def main() -> int:
    args, p = parse_stage(parser)
    url = (args.url or f"http://127.0.0.1:{p.dep_port}").rstrip("/")
    timeout = args.timeout if args.timeout is not None else p.dep_timeoutSec
    images = [f for source in args.sources for f in find_images(Path(source))]
    failed = 0
    with httpx.Client(timeout=timeout) as client:
        info = call(client, url, "GET", "/info")
        limits = info.get("limits", {})
        per_request = int(limits.get("max_images_per_request", 1))
        max_bytes = limits.get("max_upload_bytes")  # older services do not say: count images only
        print(f"model {info['model_version']} ({info['classifier']}): {', '.join(info['classes'])}")
        for chunk in batches(images, per_request, None if max_bytes is None else int(max_bytes)):
            files = [("images", (f.name, f.read_bytes())) for f in chunk]
            try:
                reply = call(client, url, "POST", "/score", files=files)
            except ServiceError as e:
                if "HTTP 4" not in str(e):
                    raise
                if len(chunk) == 1:
                    failed += 1
                    print(f"{chunk[0]}\tERROR\t{e}", file=sys.stderr)
                    continue
                # One bad file fails its request: retry that request's images one by one so every
                # good image still gets its answer and the bad one is named.
                print(f"a request of {len(chunk)} images was refused ({e}); sending them one at a time",
                      file=sys.stderr)
                for f in chunk:
                    try:
                        r = call(client, url, "POST", "/score", files=[("images", (f.name, f.read_bytes()))])
                        print(_line(f, r["results"][0]))
                    except ServiceError as e1:
                        if "HTTP 4" not in str(e1):
                            raise
                        failed += 1
                        print(f"{f}\tERROR\t{e1}", file=sys.stderr)
                continue
            for f, result in zip(chunk, reply["results"]):
                print(_line(f, result))
    if failed:
        print(f"{failed} of {len(images)} images refused by the service", file=sys.stderr)
    return 1 if failed else 0


def _line(path: Path, result: dict) -> str:
    scores = "  ".join(f"{c}={s:.4f}" for c, s in result["scores"].items())
    return f"{path}\t{result['label']}\t{scores}"


if __name__ == "__main__":
    run_stage(main, (ServiceError,))
