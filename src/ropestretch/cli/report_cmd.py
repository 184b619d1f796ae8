"""``ropestretch report``: tables and figures from eval run folders."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write report.md and figures from eval run folders",
                       description="Read one or more eval run folders and write report.md with a table per test "
                       "and PNG figures (needle heatmap, accuracy by gold position, perplexity vs length), "
                       "several runs side by side.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write report.md (default: the first run folder)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ropestretch.report import write_report

    print(f"wrote {write_report(args.runs, args.out)}")
    return 0
