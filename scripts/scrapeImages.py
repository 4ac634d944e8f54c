"""Ask an image search service for every "<attribute> <item>" query and write a URL list to download.

The list (TSV: label, url, source, license, creator, query) is what 0_downloadData.py --urls reads.
Provider (scrape_provider): "openverse" needs no key (endpoint: $OPENVERSE_ENDPOINT, default the
public API); "bing" reads $BING_SEARCH_V7_SUBSCRIPTION_KEY and $BING_SEARCH_V7_ENDPOINT.
"""

from pathlib import Path

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.scrape import SearchError, build_queries, get_provider, scrape, write_url_list

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="scrape_items, scrape_attributes, scrape_provider (and its environment variables)",
    writes="--out FILE (default DATA_DIR/proc/<datasetName>/search_urls.tsv)",
)
parser.add_argument("--out", default=None, metavar="FILE", help="where to write the URL list")


def main() -> int:
    args, p = parse_stage(parser)
    out = Path(args.out) if args.out else p.proc_dir / "search_urls.tsv"
    queries = build_queries(p.scrape_items, p.scrape_attributes)
    provider = get_provider(p.scrape_provider, timeout=p.scrape_timeoutSec)
    print(f"{len(queries)} queries ({len(p.scrape_attributes)} attributes x {len(p.scrape_items)} items), "
          f"top {p.scrape_resultsPerQuery} each, from {provider.name}")
    report = scrape(queries, provider, p.scrape_resultsPerQuery)
    for query, reason in report.failures:
        print(f"query {query!r} failed: {reason}")
    if report.rows:
        write_url_list(out, report.rows)
    per_label: dict[str, int] = {}
    for row in report.rows:
        per_label[row[0]] = per_label.get(row[0], 0) + 1
    for label, n in per_label.items():
        print(f"  {label:<20} {n:>6} URLs")
    print(f"{len(report.rows)} URLs ({report.repeated} repeats across queries dropped)")
    if report.stopped:
        where = f"; the {len(report.rows)} URLs found before are in {out}" if report.rows else ""
        raise SearchError(f"{report.stopped}{where}")
    if not report.rows:
        raise SearchError("no image found for any query; nothing written")
    print(f"wrote {out}")
    print(f"next: python scripts/0_downloadData.py --set datasetName={p.datasetName} --urls {out}")
    return 0


if __name__ == "__main__":
    run_stage(main, (SearchError,))
