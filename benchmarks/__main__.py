"""`python -m benchmarks run --suite cpu-small` (also: `list`, `ablations`). Results go to benchmarks/results/<suite>/."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .suites import SUITES, get_suite

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a suite and write results.json, results.md and PNG plots")
    run.add_argument("--suite", default="cpu-small", choices=sorted(SUITES))
    run.add_argument("--output-dir", default=None, help="default: benchmarks/results/<suite>")
    run.add_argument("--model", default=None,
                     help="trained MMAR folder for the sampler's quality figures, e.g. mmar-demo/model (default: a "
                          "random model of the demo's geometry, and no quality figures)")
    run.add_argument("--only", default=None, help="comma-separated sections, e.g. sampler,training")
    run.add_argument("--repeats", type=int, default=None, help="side-by-side rounds (default: the suite's)")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    commands.add_parser("list", help="list the suites")
    from .ablations import add_arguments as add_ablation_arguments

    add_ablation_arguments(commands.add_parser("ablations", help="train and compare the paper's ablations"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ablations":
        from .ablations import run_command

        return run_command(args)
    if args.command == "list":
        for name, suite in SUITES.items():
            print(f"{name:10s} {suite.description}")
        return 0
    from .runner import CudaUnavailable, run_suite

    suite = get_suite(args.suite)
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    out_dir = Path(args.output_dir) if args.output_dir else RESULTS_DIR / suite.name
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    try:
        result = run_suite(suite, out_dir, model_dir=args.model, only=only, repeats=args.repeats,
                           threads=args.threads)
    except CudaUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((out_dir / "results.md").read_text())
    print(f"Wrote {', '.join(str(p) for p in result['written'].values())}")
    if result["errors"]:
        print(f"error: section(s) failed: {', '.join(result['errors'])} (tracebacks in results.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
