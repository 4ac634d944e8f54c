"""Build a URL list for a new data set from an image search service.

A few clothing items and attributes become every "<attribute> <item>" query ("striped blouse",
"leopard vest", ...); each query asks a search provider for its top N images, and the hits are
written to a `label<TAB>url<TAB>source<TAB>license<TAB>creator<TAB>query` TSV, which
`scripts/0_downloadData.py --urls FILE` downloads (it reads the first two columns). The label is
the attribute: the classes of the data set are textures, the items only make the queries varied.

Providers are small objects with `search(query, count) -> list[ImageHit]`:

- `OpenverseImageSearch`: openly licensed images (Creative Commons, public domain) from Openverse,
  no key needed; each hit carries its licence, creator and landing page. Endpoint from
  $OPENVERSE_ENDPOINT (default the public API), optional token from $OPENVERSE_TOKEN.
- `BingImageSearch`: any Bing Image Search v7-compatible endpoint. The public Bing Search APIs were
  retired in August 2025, so there is no default: the endpoint comes from $BING_SEARCH_V7_ENDPOINT
  and the key from $BING_SEARCH_V7_SUBSCRIPTION_KEY.

Requests are spaced by a polite pause (`scrape_pauseSec`: anonymous Openverse clients are limited
in bursts); throttling replies (HTTP 429) are honoured by waiting for Retry-After when it is short,
and timeouts are retried; failures end as `SearchError` with a message that says what to do, never
as a traceback.

`scrape_to_file` makes a run resumable: the new URLs are merged into the existing list (never
replacing it, so a run stopped by throttling cannot shrink a complete list), and the queries
answered so far are recorded beside it (`<list>.state.json`), so a rerun asks only the others.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imgclass import __version__
from imgclass.download import check_label, parse_retry_after, tsv_lines
from imgclass.fileio import tsv_field, write_json, write_tsv
from imgclass.progress import progress_bar

ENV_BING_KEY = "BING_SEARCH_V7_SUBSCRIPTION_KEY"
ENV_BING_ENDPOINT = "BING_SEARCH_V7_ENDPOINT"
ENV_OPENVERSE_ENDPOINT = "OPENVERSE_ENDPOINT"
ENV_OPENVERSE_TOKEN = "OPENVERSE_TOKEN"
OPENVERSE_DEFAULT_ENDPOINT = "https://api.openverse.org/v1/images/"
BING_PATH = "/v7.0/images/search"
BING_MAX_COUNT = 150  # the v7 API returns at most 150 images per request
OPENVERSE_MAX_PAGE_SIZE = 20  # anonymous Openverse clients get at most 20 results a page
PROVIDERS = ("openverse", "bing")
TSV_COLUMNS = ("label", "url", "source", "license", "creator", "query")
DEFAULT_PAUSE_SEC = 1.0  # between two requests; PARAMETERS.py scrape_pauseSec overrides it
STATE_SUFFIX = ".state.json"  # search_urls.tsv -> search_urls.state.json: the queries already answered
USER_AGENT = f"imgclass-scraper/{__version__} (+image classification dataset builder)"


class SearchError(RuntimeError):
    """The search failed; `fatal` means every further query would fail the same way (no key,
    service unreachable, key refused, throttled for long), so the run stops."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class ImageHit:
    url: str
    source: str = ""  # page the image appears on
    license: str = ""  # e.g. "by-sa 4.0"; "" when the service does not say
    creator: str = ""
    title: str = ""


@dataclass(frozen=True)
class Query:
    text: str
    label: str


class SearchProvider(Protocol):
    name: str

    def search(self, query: str, count: int) -> list[ImageHit]: ...


def build_queries(items: Sequence[str], attributes: Sequence[str]) -> list[Query]:
    """Every "<attribute> <item>" query, labelled with its attribute (attribute-major order)."""
    items = [i.strip() for i in items if i.strip()]
    attributes = [a.strip() for a in attributes if a.strip()]
    if not items or not attributes:
        raise ValueError("need at least one item and one attribute to build search queries")
    for a in attributes:
        problem = check_label(a)
        if problem:
            raise ValueError(f"attribute {a!r} cannot be a class folder name: {problem}")
    return [Query(f"{a} {i}", a) for a in attributes for i in items]


class _JsonClient:
    """GET a JSON document, with retries after throttling (429) and server errors (5xx)."""

    def __init__(self, service: str, timeout: float, retries: int = 2, max_wait: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, pause: float | None = None) -> None:
        self.service = service
        self.timeout = timeout
        self.retries = retries
        self.max_wait = max_wait
        self.sleep = sleep
        # Read at call time (not as a default argument), so tests can set the module constant to 0.
        self.pause = DEFAULT_PAUSE_SEC if pause is None else pause
        if self.pause < 0:
            raise ValueError(f"pause = {self.pause}: must be >= 0 seconds")
        self._last_request: float | None = None

    def _wait_politely(self) -> None:
        """Space requests by `pause` seconds: anonymous APIs (Openverse) throttle bursts, and a
        throttled run stops, so a steady pace finishes sooner than a fast one."""
        if self._last_request is not None and self.pause > 0:
            left = self.pause - (time.monotonic() - self._last_request)
            if left > 0:
                self.sleep(left)
        self._last_request = time.monotonic()

    def get(self, url: str, params: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        full = url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        request = urllib.request.Request(full, headers={"User-Agent": USER_AGENT, "Accept": "application/json", **headers})
        attempt = 0
        while True:
            attempt += 1
            self._wait_politely()
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
                break
            except urllib.error.HTTPError as e:
                wait = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
                detail = _error_detail(e)
                e.close()
                if e.code in (401, 403):
                    raise SearchError(f"{self.service} refused the request (HTTP {e.code}{detail}): check the key", fatal=True) from None
                if e.code == 429:
                    if attempt > self.retries or (wait is not None and wait > self.max_wait):
                        after = f" (it asks to wait {wait:.0f} s)" if wait is not None else ""
                        raise SearchError(f"{self.service} is throttling requests (HTTP 429){after}: "
                                          f"wait and rerun, or ask for fewer results", fatal=True) from None
                    self.sleep(wait if wait is not None else float(attempt))
                    continue
                if e.code in (404, 405):  # the search path itself is wrong: every query would fail so
                    raise SearchError(f"{self.service}: HTTP {e.code}{detail} for {url}: is it the right endpoint? "
                                      "no query can be answered there", fatal=True) from None
                if e.code >= 500 and attempt <= self.retries:
                    self.sleep(0.5 * attempt)
                    continue
                raise SearchError(f"{self.service}: HTTP {e.code}{detail} for {full}") from None
            except urllib.error.URLError as e:
                # A connect timeout arrives wrapped in URLError; like a read timeout it is often
                # transient (a busy service), unlike a refused connection or an unknown host.
                if isinstance(e.reason, TimeoutError) and attempt <= self.retries:
                    self.sleep(0.5 * attempt)
                    continue
                raise SearchError(f"cannot reach {self.service} at {url}: {e.reason}", fatal=True) from None
            except (TimeoutError, OSError, http.client.HTTPException) as e:  # HTTPException: a reply cut off
                if attempt <= self.retries:
                    continue
                raise SearchError(f"cannot reach {self.service} at {url}: {e}", fatal=True) from None
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SearchError(f"{self.service}: the reply to {full} is not JSON (is {url} the right endpoint?)") from None
        if not isinstance(data, dict):
            raise SearchError(f"{self.service}: unexpected reply to {full} (a JSON object was expected)")
        return data


def _error_detail(e: urllib.error.HTTPError) -> str:
    """A short reason from an error body (both APIs answer errors with JSON), or ''."""
    try:
        text = e.read(2000).decode("utf-8", "replace")
        data = json.loads(text)
    except Exception:  # noqa: BLE001 - the status code alone is still a useful message
        return ""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            msg = err.get("message") or err.get("code")
        else:
            msg = data.get("detail") or data.get("message") or err
        if isinstance(msg, str) and msg:
            return f": {msg[:200]}"
    return ""


class BingImageSearch:
    """A Bing Image Search v7-compatible endpoint (key in the Ocp-Apim-Subscription-Key header)."""

    name = "bing"

    def __init__(self, key: str | None = None, endpoint: str | None = None, timeout: float = 20.0,
                 market: str = "en-US", safe_search: str = "Moderate", **client: Any) -> None:
        key = key if key is not None else os.environ.get(ENV_BING_KEY, "")
        endpoint = endpoint if endpoint is not None else os.environ.get(ENV_BING_ENDPOINT, "")
        if not key.strip():
            raise SearchError(
                f"no Bing Image Search key: set {ENV_BING_KEY} (and {ENV_BING_ENDPOINT}), "
                f"or use the key-free provider: --set scrape_provider=openverse", fatal=True)
        if not endpoint.strip():
            raise SearchError(
                f"no Bing Image Search endpoint: set {ENV_BING_ENDPOINT} to your v7-compatible service "
                f"(the public Bing Search APIs were retired in 2025, so there is no default), "
                f"or use --set scrape_provider=openverse", fatal=True)
        self.key = key.strip()
        self.url = _bing_url(endpoint.strip())
        self.market = market
        self.safe_search = safe_search
        self.client = _JsonClient("Bing Image Search", timeout, **client)

    def search(self, query: str, count: int) -> list[ImageHit]:
        hits: list[ImageHit] = []
        offset = 0
        while len(hits) < count:
            params = {"q": query, "count": min(BING_MAX_COUNT, count - len(hits)), "offset": offset,
                      "mkt": self.market, "safeSearch": self.safe_search}
            data = self.client.get(self.url, params, {"Ocp-Apim-Subscription-Key": self.key})
            values = data.get("value") or []
            before = len(hits)
            for v in values:
                if isinstance(v, dict) and v.get("contentUrl"):
                    hits.append(ImageHit(str(v["contentUrl"]), str(v.get("hostPageUrl", "")), "unknown",
                                         "", str(v.get("name", ""))))
            next_offset = data.get("nextOffset")
            next_offset = int(next_offset) if isinstance(next_offset, (int, float)) else offset + len(values)
            total = data.get("totalEstimatedMatches")
            # A page with no usable result ends the search: a service that keeps answering with
            # such pages (and no total) would otherwise be asked forever.
            if len(hits) == before or next_offset <= offset or (isinstance(total, int) and next_offset >= total):
                break
            offset = next_offset
        return hits[:count]


def _bing_url(endpoint: str) -> str:
    """Accept the resource endpoint ("https://api.bing.microsoft.com/") or the full search URL."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SearchError(f"{ENV_BING_ENDPOINT} = {endpoint!r}: expected an http(s) URL", fatal=True)
    if parts.path.rstrip("/").endswith("/images/search"):
        return endpoint
    return endpoint.rstrip("/") + BING_PATH


class OpenverseImageSearch:
    """Openverse's image search (openly licensed images, each with its licence and creator)."""

    name = "openverse"

    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout: float = 20.0,
                 page_size: int = OPENVERSE_MAX_PAGE_SIZE, **client: Any) -> None:
        endpoint = endpoint or os.environ.get(ENV_OPENVERSE_ENDPOINT) or OPENVERSE_DEFAULT_ENDPOINT
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SearchError(f"{ENV_OPENVERSE_ENDPOINT} = {endpoint!r}: expected an http(s) URL", fatal=True)
        if not parts.path.rstrip("/").endswith("/images"):
            endpoint = endpoint.rstrip("/") + "/v1/images/"
        self.url = endpoint
        self.token = token if token is not None else os.environ.get(ENV_OPENVERSE_TOKEN, "")
        self.page_size = page_size
        self.client = _JsonClient("Openverse", timeout, **client)

    def search(self, query: str, count: int) -> list[ImageHit]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        hits: list[ImageHit] = []
        page = 1
        while len(hits) < count:
            data = self.client.get(self.url, {"q": query, "page": page, "page_size": self.page_size}, headers)
            results = data.get("results") or []
            before = len(hits)
            for r in results:
                if isinstance(r, dict) and r.get("url"):
                    licence = " ".join(str(r.get(k) or "") for k in ("license", "license_version")).strip()
                    hits.append(ImageHit(str(r["url"]), str(r.get("foreign_landing_url") or ""), licence,
                                         str(r.get("creator") or ""), str(r.get("title") or "")))
            page_count = data.get("page_count")
            # A page with no usable result ends the search (see BingImageSearch.search).
            if len(hits) == before or (isinstance(page_count, int) and page >= page_count):
                break
            page += 1
        return hits[:count]


def get_provider(name: str, timeout: float = 20.0, **kwargs: Any) -> SearchProvider:
    """The provider called `name` ("openverse" or "bing"), configured from the environment."""
    if name == "openverse":
        return OpenverseImageSearch(timeout=timeout, **kwargs)
    if name == "bing":
        return BingImageSearch(timeout=timeout, **kwargs)
    raise ValueError(f"scrape provider {name!r}: allowed values are {', '.join(PROVIDERS)}")


@dataclass
class ScrapeReport:
    rows: list[tuple[str, ...]] = field(default_factory=list)  # one per unique URL, TSV_COLUMNS order
    per_query: dict[str, int] = field(default_factory=dict)  # query -> new URLs it contributed
    failures: list[tuple[str, str]] = field(default_factory=list)  # (query, reason)
    repeated: int = 0  # hits whose URL was already listed under the same label (harmless)
    ambiguous: set[str] = field(default_factory=set)  # URLs returned for two labels: dropped
    done: list[str] = field(default_factory=list)  # queries answered, in an earlier run or this one
    skipped: list[str] = field(default_factory=list)  # queries not asked: answered in an earlier run
    earlier: int = 0  # queries answered in an earlier run (skipped, or would be after a stop)
    previous: int = 0  # rows the list held before this run
    previous_dropped: int = 0  # of their URLs, those dropped as ambiguous (returned this run for another label)
    stopped: str = ""  # why the run stopped early ("" when every query was asked)


def scrape(
    queries: Sequence[Query], provider: SearchProvider, per_query: int, progress: bool = True,
    previous: Sequence[Sequence[str]] = (), done: Iterable[str] = (), ambiguous: Iterable[str] = (),
    checkpoint: Callable[[ScrapeReport], None] | None = None,
) -> ScrapeReport:
    """Ask `provider` for the top `per_query` images of each query and add the hits to `previous`
    (rows of an earlier run, kept as they are). Each URL is listed once; a URL returned for two
    labels (a striped and a dotted query) is dropped as ambiguous, since it cannot train either
    class, and so is every later hit of it, also when an earlier run listed it (`previous_dropped`
    counts those). Queries in `done` (answered in an earlier run) are
    skipped. A failing query is recorded and the run goes on; a fatal error (unreachable, key
    refused, throttled) stops it, keeping what was found. `checkpoint` is called after each
    answered query, so what was found can be saved as the run goes."""
    if per_query < 1:
        raise ValueError(f"per_query = {per_query}: must be >= 1")
    skip = set(done)
    report = ScrapeReport(done=list(dict.fromkeys(q.text for q in queries if q.text in skip)),
                          previous=len(previous), ambiguous=set(ambiguous))
    report.earlier = len(report.done)
    listed: dict[str, tuple[str, ...]] = {}  # url -> row; dicts keep insertion (file) order
    for row in previous:
        row = tuple(row)
        if row[1] not in report.ambiguous:
            listed.setdefault(row[1], row)
    for q in progress_bar(queries, desc=f"search {provider.name}", unit="query", disable=not progress):
        if q.text in skip:
            report.skipped.append(q.text)
            continue
        try:
            hits = provider.search(q.text, per_query)
        except SearchError as e:
            if e.fatal:
                report.stopped = str(e)
                break
            report.failures.append((q.text, str(e)))
            continue
        new = 0
        for h in hits:
            if h.url in report.ambiguous:
                continue
            row = listed.get(h.url)
            if row is None:
                listed[h.url] = (q.label, h.url, h.source, h.license, h.creator, q.text)
                new += 1
            elif row[0] == q.label:
                report.repeated += 1
            else:
                report.ambiguous.add(h.url)
                del listed[h.url]
        report.per_query[q.text] = new
        if q.text not in report.done:
            report.done.append(q.text)
        if checkpoint is not None:  # it saves the rows found so far; without one they are listed once, below
            report.rows = list(listed.values())
            checkpoint(report)
    report.rows = list(listed.values())
    report.previous_dropped = len({row[1] for row in previous} - listed.keys())
    return report


def state_path(url_list: str | Path) -> Path:
    """Where the state of the list's runs is kept: search_urls.tsv -> search_urls.state.json."""
    url_list = Path(url_list)
    return url_list.with_name(url_list.stem + STATE_SUFFIX)


def read_url_rows(path: str | Path) -> list[tuple[str, ...]]:
    """The rows of a list written by `write_url_list` (header skipped; a shorter row, as in a
    hand-made `label<TAB>url` list, is padded with empty fields), [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in tsv_lines(path, SearchError):
        fields = line.split("\t")
        if fields[:2] == list(TSV_COLUMNS[:2]):
            continue
        if len(fields) < 2 or not fields[1].strip():
            raise SearchError(f"{path}, line {n}: expected 'label<TAB>url<TAB>...', got {line.strip()[:100]!r}; "
                              f"move the file away to start a new list")
        fields = [f.strip() for f in fields[:len(TSV_COLUMNS)]]
        rows.append(tuple(fields + [""] * (len(TSV_COLUMNS) - len(fields))))
    return rows


def read_state(path: str | Path, provider: str, per_query: int) -> tuple[list[str], list[str], str]:
    """(queries answered, ambiguous URLs, note) from a state file. The answered queries count only
    for the same provider and results per query (else every query is asked again, and the note
    says why); a missing or unreadable file is an empty state."""
    path = Path(path)
    if not path.is_file():
        return [], [], ""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        done = [str(q) for q in state.get("done", [])]
        ambiguous = [str(u) for u in state.get("ambiguous", [])]
        asked = (state.get("provider"), state.get("per_query"))
    except (ValueError, AttributeError, TypeError):
        return [], [], f"{path} is not a state file this script writes; asking every query again"
    if asked != (provider, per_query) and done:
        return [], ambiguous, (f"the queries recorded in {path} were asked of {asked[0]} for {asked[1]} results "
                               f"each, not {provider} for {per_query}; asking every query again")
    return done, ambiguous, ""


def scrape_to_file(
    out: str | Path, queries: Sequence[Query], provider: SearchProvider, per_query: int, progress: bool = True,
) -> tuple[ScrapeReport, str]:
    """`scrape`, resumed from and saved to the list `out`: its rows are kept and the new ones added
    (so a run stopped early never shrinks a complete list), queries answered by an earlier run
    (recorded in `state_path(out)`) are skipped, and the list and state are saved atomically after
    every answered query, so a stop or Ctrl-C loses at most the query being asked. Returns the
    report and a note on the state ("" when none)."""
    out = Path(out)
    previous = read_url_rows(out)
    done, ambiguous, note = read_state(state_path(out), provider.name, per_query)
    if not out.is_file():
        done, note = [], ""  # the list was deleted or moved: start again from query 1

    def save(report: ScrapeReport) -> None:
        if not report.rows and not out.is_file():
            return  # nothing found yet: no empty list (and no state without its list)
        # The list first: if the state write fails, the next run asks a few queries again, and
        # what they return is merged, not duplicated.
        write_url_list(out, report.rows)
        write_json(state_path(out), {"provider": provider.name, "per_query": per_query,
                                     "done": report.done, "ambiguous": sorted(report.ambiguous)})

    # Only an answered query changes the list or the state, and each is saved as it is answered:
    # a run stopped before any answer leaves both files as they were.
    report = scrape(queries, provider, per_query, progress, previous, done, ambiguous, checkpoint=save)
    return report, note


def write_url_list(path: str | Path, rows: Sequence[Sequence[str]]) -> Path:
    """Write the TSV (with a header line, which read_url_list skips), atomically."""
    return write_tsv(path, TSV_COLUMNS, ([tsv_field(x) for x in row] for row in rows))


__all__ = [
    "BingImageSearch",
    "ImageHit",
    "OpenverseImageSearch",
    "Query",
    "ScrapeReport",
    "SearchError",
    "SearchProvider",
    "build_queries",
    "get_provider",
    "read_state",
    "read_url_rows",
    "scrape",
    "scrape_to_file",
    "state_path",
    "write_url_list",
]
