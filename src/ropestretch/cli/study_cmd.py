"""``ropestretch study``: run a study plan (``examples/studies/*.yaml``) through the one runner."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a study plan: variants made on first use, cells in order, resumable",
                       description="Run a study plan (YAML: the base model, the variants, the evaluation cells in "
                       "the order they run; examples/studies/). Each variant is applied or fine-tuned when the first "
                       "cell needs it; each cell runs through `ropestretch eval` into its own run folder under --out; "
                       "a cell whose rows the plan's archive holds is not run again. --report writes the report from "
                       "every row measured so far.")
    p.add_argument("plan", metavar="PLAN.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="working folder: texts, checkpoints, run folders")
    p.add_argument("--archive", metavar="FILE", help="rows measured so far, whose cells are skipped (default: the "
                   "plan's archive)")
    p.add_argument("--report", metavar="DOCS", help="archive every row and write DOCS/report.md, then stop")
    p.add_argument("--readme", metavar="README", help="with --report: also write the summary into this README's "
                   "study block (between its markers)")
    p.add_argument("--no-train", dest="train", action="store_false", help="evaluate what exists, train nothing")
    p.add_argument("--prepare", action="store_true", help="write the plan's texts under --out, then stop")
    p.add_argument("--all", dest="everything", action="store_true", help="also the variants the plan marks optional")
    p.set_defaults(run=run, left_on_write_error="every finished cell stays in its run folder: rerun to resume")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ropestretch.errors import UsageError
    from ropestretch.study import load_plan, run_study, text_path, write_study_report

    plan = load_plan(args.plan)
    out = Path(args.out).expanduser()
    if args.readme and not args.report:
        raise UsageError("--readme goes with --report")
    if args.report:
        print(f"wrote {write_study_report(plan, out, args.report, args.readme)}")
        return 0
    if args.prepare:
        print("wrote " + " and ".join(str(text_path(plan, out, role)) for role in plan.texts))
        return 0
    archive = args.archive or plan.archive
    run_study(plan, out, Path(archive) if archive else None, args.train, args.everything)
    return 0
