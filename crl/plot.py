"""``python -m crl.plot RUN_ID_OR_DIR ...``: the plots of MLflow runs or local run directories as PNG files.

A parent run stands for its child runs (one per seed); several arguments are drawn together, each
intervention set as one group. Unknown runs, paths that do not exist, directories without a readable
``result.json`` and runs with nothing to plot print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow import MlflowClient

from crl.plotting import PlotError, load_runs, write_plots

USAGE_ERROR_EXIT = 2
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SQLITE_PREFIX = "sqlite:///"
RUN_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")
"""What MLflow accepts as a run id (its own validation's pattern): anything else can only be a path."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="crl-plot", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "sources", nargs="+", metavar="RUN_ID_OR_DIR", help="MLflow run ids (parent or child) or run directories"
    )
    parser.add_argument(
        "--tracking-uri", help=f"MLflow tracking URI (default: MLFLOW_TRACKING_URI, then {DEFAULT_TRACKING_URI})"
    )
    parser.add_argument("--out", type=Path, default=Path("plots"), help="output directory (default: ./plots)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    sources = list(dict.fromkeys(args.sources))  # a run given twice is one run, not two seeds
    try:
        run_ids = [source for source in sources if not Path(source).is_dir()]
        for source in run_ids:
            check_run_id(source, tracking_uri)
        # Only run ids need the tracking store: plotting directories must not create an mlflow.db.
        client = MlflowClient(tracking_uri) if run_ids else None
        runs = [run for source in sources for run in load_runs(source, client)]
        written = write_plots(runs, args.out)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT
    print(f"{len(written)} plots of {len(runs)} run(s) in {args.out}")
    return 0


def check_run_id(source: str, tracking_uri: str) -> None:
    """Refuse a source that is not an existing directory and cannot be a run id of ``tracking_uri``'s store,
    without opening the store (which would create a missing SQLite file).

    :raises PlotError: ``source`` looks like a path (it cannot be a run id) or the SQLite store does not exist
    """
    if not RUN_ID.match(source):
        raise PlotError(f"{source!r} is neither a directory nor a run id: no such directory")
    database = tracking_uri.removeprefix(SQLITE_PREFIX) if tracking_uri.startswith(SQLITE_PREFIX) else None
    if database is not None and not Path(database).is_file():
        raise PlotError(
            f"{source!r} is neither a directory nor a run id: no such directory, and no MLflow store at "
            f"{tracking_uri} (give --tracking-uri)"
        )


if __name__ == "__main__":
    sys.exit(main())
