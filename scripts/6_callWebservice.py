"""Stage 6 client: send photos to the web service and print each one's label and class scores.

Each IMAGE_OR_FOLDER is an image file or a folder (searched recursively for images, hidden files
left out); give as many as you like, e.g. a shell glob. Images go in requests within the service's
per-request limits (images and bytes, from its /info); a file too large for any request is sent
alone, so the service names it. The reply's label and scores are printed one line per image. A
request that fails is sent again one image at a time (so one bad file costs only its own answer);
while the service is busy (HTTP 503; 502 or 504 from a proxy), requests are sent again after a
growing wait, or the one it asks for. The
client itself is imgclass.client, for use from Python.
"""

import sys
import time
from pathlib import Path

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.client import ServiceClient, ServiceError, find_images, not_accepted
from imgclass.data import shown, skipped_below, skipped_note, unread_images_note
from imgclass.params import MAX_SECONDS, Params, service_url
from imgclass.terminal import first_few

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="IMAGE_OR_FOLDER (image files), the service at --url",
    writes="nothing: prints <image> TAB <label> TAB <class>=<score> ... per image on stdout (notes on stderr)",
)
parser.add_argument("sources", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files, or folders of them")
parser.add_argument("--url", default=None,
                    help="the service's address (default http://<dep_host>:<dep_port>; 0.0.0.0 is called at 127.0.0.1)")
parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for a reply (default dep_timeoutSec)")


def main() -> int:
    args, p = parse_stage(parser)
    # Where stage 6 listens: a service on dep_host = "::1" or a LAN address is not at 127.0.0.1.
    url = args.url or service_url(p.dep_host, p.dep_port)
    if args.timeout is not None and not 0 < args.timeout <= MAX_SECONDS:
        # inf or 1e300 ended in an OverflowError traceback, nan and -1 in httpx's words with no --timeout in them.
        parser.error(f"--timeout {args.timeout:g}: expected seconds > 0 and at most {MAX_SECONDS:g} (a day)")
    timeout = args.timeout if args.timeout is not None else p.dep_timeoutSec
    broken: list[Path] = []
    images = [f for source in args.sources for f in find_images(Path(source), broken)]
    if broken:  # a photo moved away from under its link: said, since the reply will not have it
        print(f"note: not sent, links to files that do not exist: {first_few([shown(str(b)) for b in broken])}",
              file=sys.stderr)
    for source in map(Path, args.sources):
        if source.is_dir() and (skipped := skipped_below(source)):
            print(f"note: not sent (folders starting with _ are skipped, as stage 1 skips them): {skipped_note(skipped)}",
                  file=sys.stderr)
        if source.is_dir() and (unread := unread_images_note(source, "sent")):
            print(f"note: {unread}", file=sys.stderr)
    failed = 0
    with ServiceClient(url, timeout) as client:
        info = client.info()
        # On stderr, with the other notes: stdout is the answers alone, a TSV to pipe on.
        print(f"model {info['model_version']} ({info['classifier']}): {', '.join(info['classes'])}", file=sys.stderr)
        if note := other_service_note(info, p, args.url):
            print(f"note: {note}", file=sys.stderr)
        if refused := not_accepted(images, info.get("formats", [])):
            kinds = sorted({p.suffix.lower() for p in refused})
            print(f"note: not sent: {len(refused)} file(s) ({', '.join(kinds)}, e.g. {shown(str(refused[0]))}) in a "
                  f"format the service does not accept (it accepts {', '.join(info['formats'])}): convert them, "
                  "e.g. to PNG, or score them with scripts/scoreImages.py", file=sys.stderr)
            left_out = set(refused)
            images = [p for p in images if p not in left_out]
            if not images:
                raise ServiceError("no image left to send")
        started = time.perf_counter()
        for path, result, error in client.score_files(images):
            if result is None:
                print(f"{shown(str(path))}\tERROR\t{error}", file=sys.stderr)
                failed += 1
            else:
                scores = "  ".join(f"{c}={s:.4f}" for c, s in result["scores"].items())
                print(f"{shown(str(path))}\t{result['label']}\t{scores}")
        # As the tutorial's client did: what a caller waits, network and decoding included.
        seconds = time.perf_counter() - started
        print(f"{len(images) - failed} of {len(images)} images scored in {seconds:.2f} s "
              f"({1000 * seconds / len(images):.0f} ms per image, replies included)", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(images)} images refused by the service or failed in it", file=sys.stderr)
    return 1 if failed else 0


def other_service_note(info: dict, p: Params, url: str | None) -> str:
    """A word when the service found at the parameters' address (no --url) serves another data set
    or classifier than the parameters name: stage 6 may serve this one on another --port, while an
    older service still holds dep_port, and its answers would pass for this model's."""
    served = (info.get("dataset"), info.get("classifier"))
    if url or served[0] is None or served == (p.datasetName, p.classifier):
        return ""
    return (f"the service at dep_port {p.dep_port} serves {served[1]} of {served[0]}, not {p.classifier} of "
            f"{p.datasetName} as the parameters say: if stage 6 serves yours on another port, give --url")


if __name__ == "__main__":
    run_stage(main, (ServiceError,), on_interrupt="the answers printed above are complete; the images after "
                                                  "them were not scored (this script writes no files)")
