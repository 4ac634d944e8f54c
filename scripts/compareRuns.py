"""Compare pipeline runs from the run history (MLflow) as a table: parameters that differ, accuracies, AUCs.

By default the last 5 runs of the data set's experiment (newest first); --runs picks runs by id (or
an unambiguous id prefix, as printed by the stages and by this table).
"""

import shutil

from imgclass.cli import parse_stage, run_stage, stage_parser
from imgclass.tracking import (TrackingError, comparison_notes, find_runs, format_comparison, resolve_experiment,
                               resolve_uri, ui_command)

parser = stage_parser(
    __doc__.splitlines()[0],
    reads="the MLflow store (track_uri, MLFLOW_TRACKING_URI, aml_config/tracking.ini, else DATA_DIR/mlflow.db)",
    writes="nothing (prints a table)",
)
parser.add_argument("--last", type=int, default=5, metavar="N", help="compare the N most recent runs (default 5)")
parser.add_argument("--runs", nargs="+", default=(), metavar="ID", help="compare these runs (ids or id prefixes)")
parser.add_argument("--all-params", action="store_true", help="list every parameter, not only those that differ")
parser.add_argument("--wide", action="store_true", help="show long values (lists of rates, C values) whole, not shortened with …")


def main() -> int:
    args, p = parse_stage(parser)
    runs = find_runs(p, last=args.last, run_ids=args.runs)
    uri = resolve_uri(p)
    print(f"{len(runs)} run(s) of experiment {resolve_experiment(p)!r} in {uri}")
    # Five runs side by side take ~120 columns: in a narrower terminal they come in blocks.
    width = None if args.wide else shutil.get_terminal_size().columns
    print(format_comparison(runs, all_params=args.all_params, wide=args.wide, width=width))
    for note in comparison_notes(runs):
        print(f"note: {note}")
    print(f"plots and per-epoch curves: {ui_command(uri)}")
    return 0


if __name__ == "__main__":
    run_stage(main, (TrackingError,))
