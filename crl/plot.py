"""``python -m crl.plot RUN_ID_OR_DIR ...``: the plots of MLflow runs or local run directories as PNG files.

A parent run stands for its child runs (one per seed); several arguments are drawn together, each
intervention set as one group. Unknown runs, directories without ``result.json`` and runs with nothing
to plot print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow import MlflowClient

from crl.plotting import PlotError, load_runs, write_plots

USAGE_ERROR_EXIT = 2
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


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
    # Only run ids need the tracking store: plotting directories must not create an mlflow.db.
    client = MlflowClient(tracking_uri) if not all(Path(source).is_dir() for source in args.sources) else None
    try:
        runs = [run for source in args.sources for run in load_runs(source, client)]
        written = write_plots(runs, args.out)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR_EXIT
    print(f"{len(written)} plots of {len(runs)} run(s) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
