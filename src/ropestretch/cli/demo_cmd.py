"""``ropestretch demo``: the demo's plan (``examples/studies/demo.yaml``) through the study runner
on the shipped base model, everything under ``--out``, then ``report.md`` there."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]  # the checkout: the shipped base model and the plans


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="one-command extension study on the shipped base model (CPU)",
                       description="From the small base model in models/tiny-llama-256 (window 256): extend to "
                       "2048 with yarn and dprope scaling without training; fine-tune with pose and cream "
                       "positions under yarn, cream under dprope, and the full-length baseline, on the same token "
                       "budget; evaluate everything at 256..4096; write report.md. The plan is "
                       "examples/studies/demo.yaml (--quick: demo-quick.yaml), run as `ropestretch study` runs it. "
                       "A rerun reuses finished steps.")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    p.add_argument("--quick", action="store_true", help="a smoke version (minutes, tiny budgets)")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="the full matrix: add linear scaling alone and under pose and cream (about 40%% longer)")
    p.add_argument("--base", metavar="DIR", help="base model folder (default: the shipped one)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(run=run, left_on_write_error="every finished step stays: rerun the same command to resume")


def run(args: argparse.Namespace) -> int:
    import os

    import torch
    from transformers.utils import logging as hf_logging

    from ropestretch.errors import UsageError
    from ropestretch.locks import folder_lock, is_empty
    from ropestretch.paths import named_path, outside
    from ropestretch.study import load_plan, run_study, write_study_report

    base = Path(args.base) if args.base else ROOT / "models" / "tiny-llama-256"
    if not (base / "config.json").is_file():
        raise UsageError(f"base model not found at {base}")
    out = named_path(args.out, "--out")
    outside(out, {"base model folder": base}, "--out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file")
    if not is_empty(out) and not (out / "study.json").is_file():
        raise UsageError(f"{out} is not empty and holds no demo; choose a new --out")
    plan = load_plan(ROOT / "examples" / "studies" / ("demo-quick.yaml" if args.quick else "demo.yaml"),
                     model=str(base.resolve()))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    hf_logging.set_verbosity_error()  # the longrope export's vLLM keys would warn at every load
    with folder_lock(out, "demo"):
        for name, folder in (("HF_HOME", "huggingface"), ("HF_DATASETS_CACHE", "datasets"), ("MPLCONFIGDIR", "matplotlib")):
            os.environ[name] = str(out / ".cache" / folder)  # everything, caches included, stays under --out
        run_study(plan, out, train=True, everything=args.everything, progress=args.progress)
        report = write_study_report(plan, out, out)
    print(f"wrote {report}")
    return 0
