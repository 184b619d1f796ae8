"""``ropestretch demo``: extend the shipped base model 8x with every method, evaluate, report."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="one-command extension study on the shipped base model (CPU)",
                       description="From the small base model in models/tiny-llama-256 (window 256): extend to "
                       "2048 with yarn and dprope scaling without training; fine-tune with pose and cream "
                       "positions under yarn, cream under dprope, and the full-length baseline, on the same token "
                       "budget; evaluate everything at 256..4096; write report.md. A rerun reuses finished steps.")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    p.add_argument("--quick", action="store_true", help="a smoke version (minutes, tiny budgets)")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="the full matrix: add linear scaling alone and under pose and cream (about 40%% longer)")
    p.add_argument("--base", metavar="DIR", help="base model folder (default: the shipped one)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ropestretch.demo import BASE_MODEL, Demo, DemoPlan

    plan = DemoPlan.quick() if args.quick else DemoPlan()
    report = Demo(args.out, plan, args.base or BASE_MODEL, progress=args.progress).run(args.everything)
    print(f"wrote {report}")
    return 0
