"""``python -m bench.validation {run,report}``: the validation study of SPEC.md §5.

``run [EXPERIMENT ...]`` trains every variant of the named experiments (default: all) with
``crl.train``, into MLflow; ``report`` reads the runs back and writes ``docs/RESULTS.md`` with its
plots under ``docs/results/``. Both take ``--tracking-uri`` (default ``sqlite:///validation.db``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from bench.validation.experiment import ExperimentError, experiment_paths
from crl.config.errors import ConfigError, print_error
from crl.train import positive_int

DEFAULT_TRACKING_URI = "sqlite:///validation.db"
DOCS = Path(__file__).parents[2] / "docs"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.validation", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help="MLflow tracking URI of the study")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the variants of the experiments (finished ones are skipped)")
    run.add_argument("experiments", nargs="*", help="experiment names (bench/validation/*.yaml stems); default: all")
    run.add_argument("--workers", type=positive_int, default=2, help="seeds trained at once (default 2)")
    run.add_argument(
        "--variants", nargs="+", help="only these variants (e.g. to split one experiment over two commands)"
    )
    report = commands.add_parser("report", help="write docs/RESULTS.md and docs/results/*.png from the runs")
    report.add_argument("experiments", nargs="*", help="experiment names; default: all")
    report.add_argument("--output", type=Path, default=DOCS / "RESULTS.md", help="the report file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    try:
        paths = experiment_paths(args.experiments)
        if args.command == "run":
            from bench.validation.run import check_all, run_experiment

            check_all(paths, args.variants)
            for path in paths:
                code = run_experiment(path, args.tracking_uri, args.workers, console, args.variants)
                if code != 0:
                    return code
            return 0
        from bench.validation.report import write_report

        write_report(paths, args.tracking_uri, args.output, console)
        return 0
    except (ExperimentError, ConfigError) as error:
        print_error(console, error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
