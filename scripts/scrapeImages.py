"""Ask an image search service for every "<attribute> <item>" query and write a URL list to download.

The list (TSV: label, url, source, license, creator, query) is what 0_downloadData.py --urls reads.
Provider (scrape_provider): "openverse" needs no key (endpoint: $OPENVERSE_ENDPOINT, default the
public API); "bing" reads $BING_SEARCH_V7_SUBSCRIPTION_KEY and $BING_SEARCH_V7_ENDPOINT.
A rerun resumes: an existing list is added to, never replaced, and the queries it already answered
(recorded in <list>.state.json beside it) are not asked again; delete that file to ask them again.
"""

from pathlib import Path

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.scrape import SearchError, build_queries, get_provider, scrape_to_file, state_path
from imgclass.terminal import ljust, name_column

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="scrape_items, scrape_attributes, scrape_provider (and its environment variables), "
          "scrape_pauseSec; an existing --out list and its .state.json",
    writes="--out FILE (default DATA_DIR/proc/<datasetName>/search_urls.tsv) and FILE's .state.json "
           "(the queries answered)",
)
parser.add_argument("--out", default=None, metavar="FILE", help="the URL list to write or add to")


def main() -> int:
    args, p = parse_stage(parser)
    out = Path(args.out) if args.out else p.proc_dir / "search_urls.tsv"
    if out.is_dir():  # else found out only when the first answer is saved, after asking the service
        parser.error(f"--out {out}: a folder; name the list file to write or add to, e.g. {out / 'search_urls.tsv'}")
    state = state_path(out)
    queries = build_queries(p.scrape_items, p.scrape_attributes)
    provider = get_provider(p.scrape_provider, timeout=p.scrape_timeoutSec, pause=p.scrape_pauseSec)
    print(f"{len(queries)} queries ({len(p.scrape_attributes)} attributes x {len(p.scrape_items)} items), "
          f"top {p.scrape_resultsPerQuery} each, from {provider.name}")
    report, note = scrape_to_file(out, queries, provider, p.scrape_resultsPerQuery)
    if note:
        print(f"note: {note}")
    if report.previous:
        dropped = report.previous_dropped
        print(f"{out} held {report.previous} URLs: " + (
            f"kept but {dropped} dropped as ambiguous (returned this time for a query of another label)"
            if dropped else "kept") + ", the new ones added")
    if report.earlier:
        print(f"{report.earlier} of {len(queries)} queries answered by an earlier run (recorded in {state}), "
              f"not asked again")
    for query, reason in report.failures:
        print(f"query {query!r} failed: {reason}")
    if report.failures:  # not recorded as answered: the next run asks them again
        n = len(report.failures)
        print(f"rerun this script later to retry the {n} failed quer{'y' if n == 1 else 'ies'} (the others are not asked again)")
    per_label: dict[str, int] = {}
    for row in report.rows:
        per_label[row[0]] = per_label.get(row[0], 0) + 1
    shown, width = name_column(list(per_label), at_least=20)
    for label, n in per_label.items():
        print(f"  {ljust(shown[label], width)} {n:>6} URL{'' if n == 1 else 's'}")
    if report.rows or not report.stopped:  # stopped before any answer: the error below says it all
        print(f"{len(report.rows)} URL{'' if len(report.rows) == 1 else 's'} ({report.repeated} hits of a URL listed "
              "already under the same label, not listed twice)")
    if report.ambiguous:
        # Kept under either label it would teach the classifier a wrong label half the time.
        n = len(report.ambiguous)
        print(f"{n} URL{'' if n == 1 else 's'} returned for queries of two labels dropped as ambiguous")
    if report.stopped:
        left = len({q.text for q in queries} - set(report.done))
        where = f"; the {len(report.rows)} URLs found so far are in {out}" if report.rows else ""
        raise SearchError(f"{report.stopped}{where}; a rerun asks the {left} quer{'y' if left == 1 else 'ies'} "
                          "not yet answered")
    if not report.rows:
        raise SearchError("no image found for any query; nothing written")
    if report.earlier == len({q.text for q in queries}):
        print(f"every query was answered by an earlier run: {out} unchanged (delete {state} to ask them again)")
    else:
        print(f"wrote {out}")
    print(f"next: python scripts/0_downloadData.py --set datasetName={p.datasetName} --urls {out}")
    return 0


if __name__ == "__main__":
    run_stage(main, (SearchError,))
