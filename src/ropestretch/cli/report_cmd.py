"""``ropestretch report``: tables and figures from eval run folders."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write report.md and figures from eval run folders",
                       description="Read one or more eval run folders and write report.md with a table per test "
                       "(each accuracy with its 95%% Wilson interval and n, the answer log-likelihood with its "
                       "interval) and PNG figures (accuracy by depth with interval bars, needle heatmap, accuracy "
                       "by gold position, perplexity vs length), several runs side by side. Runs over the same "
                       "prompts (same seed) are compared sample by sample: McNemar's exact test and a paired "
                       "bootstrap interval, by length and depth band; runs that cannot be paired are named with "
                       "the reason. The tables are printed too.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write report.md (default: the first run folder)")
    p.add_argument("--threshold", type=float, default=85.6, metavar="SCORE",
                   help="RULER: the score (0-100) an effective length must reach (default 85.6, RULER's: "
                   "Llama-2-7B-chat at 4K); the report also gives NoLiMa's, 85%% of the run's shortest-length score")
    p.add_argument("--base", metavar="RUN_DIR", help="one of the runs, the model before extension: the report adds "
                   "what each other run retains inside the base's window (accuracy ratio, perplexity ratio) beside its "
                   "gain past it")
    p.set_defaults(run=run, left_on_write_error="a report.md from before stays whole; the run folders are untouched")


def run(args: argparse.Namespace) -> int:
    from ropestretch.report import write_report

    from ropestretch.errors import UsageError

    if not 0 <= args.threshold <= 100:
        raise UsageError(f"--threshold is a score from 0 to 100, got {args.threshold:g}")
    path = write_report(args.runs, args.out, args.threshold, args.base)
    print("\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("![")))
    print(f"wrote {path}")
    return 0
