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

Throttling replies (HTTP 429) are honoured by waiting for Retry-After when it is short; failures
end as `SearchError` with a message that says what to do, never as a traceback.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from imgclass import __version__
from imgclass.download import _parse_retry_after, check_label
from imgclass.fileio import atomic_open

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
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.service = service
        self.timeout = timeout
        self.retries = retries
        self.max_wait = max_wait
        self.sleep = sleep

    def get(self, url: str, params: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        full = url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        request = urllib.request.Request(full, headers={"User-Agent": USER_AGENT, "Accept": "application/json", **headers})
        attempt = 0
        while True:
            attempt += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = response.read()
                break
            except urllib.error.HTTPError as e:
                wait = _parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
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
                if e.code >= 500 and attempt <= self.retries:
                    self.sleep(0.5 * attempt)
                    continue
                raise SearchError(f"{self.service}: HTTP {e.code}{detail} for {full}") from None
            except urllib.error.URLError as e:
                raise SearchError(f"cannot reach {self.service} at {url}: {e.reason}", fatal=True) from None
            except (TimeoutError, OSError) as e:
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
            for v in values:
                if isinstance(v, dict) and v.get("contentUrl"):
                    hits.append(ImageHit(str(v["contentUrl"]), str(v.get("hostPageUrl", "")), "unknown",
                                         "", str(v.get("name", ""))))
            next_offset = data.get("nextOffset")
            next_offset = int(next_offset) if isinstance(next_offset, (int, float)) else offset + len(values)
            total = data.get("totalEstimatedMatches")
            if not values or next_offset <= offset or (isinstance(total, int) and next_offset >= total):
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
            for r in results:
                if isinstance(r, dict) and r.get("url"):
                    licence = " ".join(str(r.get(k) or "") for k in ("license", "license_version")).strip()
                    hits.append(ImageHit(str(r["url"]), str(r.get("foreign_landing_url") or ""), licence,
                                         str(r.get("creator") or ""), str(r.get("title") or "")))
            page_count = data.get("page_count")
            if not results or (isinstance(page_count, int) and page >= page_count):
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
    repeated: int = 0  # hits whose URL an earlier query had already returned
    stopped: str = ""  # why the run stopped early ("" when every query was asked)


def scrape(queries: Sequence[Query], provider: SearchProvider, per_query: int, progress: bool = True) -> ScrapeReport:
    """Ask `provider` for the top `per_query` images of each query; each URL is kept once, under
    the label of the first query that returned it. A failing query is recorded and the run goes
    on; a fatal error (unreachable, key refused, throttled) stops it, keeping what was found."""
    if per_query < 1:
        raise ValueError(f"per_query = {per_query}: must be >= 1")
    report = ScrapeReport()
    seen: set[str] = set()
    for q in tqdm(queries, desc=f"search {provider.name}", unit="query", disable=not progress):
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
            if h.url in seen:
                report.repeated += 1
                continue
            seen.add(h.url)
            report.rows.append((q.label, h.url, h.source, h.license, h.creator, q.text))
            new += 1
        report.per_query[q.text] = new
    return report


def _clean(text: str) -> str:
    return " ".join(str(text).split())  # a tab or newline inside a field would break the TSV


def write_url_list(path: str | Path, rows: Sequence[Sequence[str]]) -> Path:
    """Write the TSV (with a header line, which read_url_list skips), atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(TSV_COLUMNS) + "\n")
        for row in rows:
            f.write("\t".join(_clean(x) for x in row) + "\n")
    return Path(path)


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
    "scrape",
    "write_url_list",
]
