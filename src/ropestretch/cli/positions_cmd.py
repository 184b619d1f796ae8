"""``ropestretch positions``: draw training position ids and inspect their statistics."""

from __future__ import annotations

import argparse
import json

from ropestretch.cli import nonnegative_int, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.options import add_registry_flags
    from ropestretch.positions import SAMPLER_OPTIONS, SAMPLERS

    p = sub.add_parser(
        "positions",
        help="draw training-time position ids (CREAM, PoSE, RandPos, ...) and inspect them",
        description="Draw S rows of training position ids for window N and target L, and report the CREAM "
        "strategy mix, where the middle segment lands, and the covered fraction of relative distances.",
    )
    p.add_argument("--method", required=True, metavar="NAME", help=", ".join(SAMPLERS))
    p.add_argument("--window", required=True, type=positive_int, metavar="N", help="training window (tokens)")
    p.add_argument("--target", required=True, type=positive_int, metavar="L", help="target context length")
    p.add_argument("--samples", type=positive_int, default=1000, metavar="S", help="rows to draw (default 1000)")
    p.add_argument("--seed", type=nonnegative_int, default=0, metavar="X", help="random seed (default 0)")
    p.add_argument("--out", metavar="FILE.npy", help="write the (S, N) int64 array (must not exist)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw the middle-centre distribution and the coverage")
    p.add_argument("--coverage-samples", type=positive_int, default=2000, metavar="C",
                   help="rows used for the relative-distance coverage (default 2000)")
    add_registry_flags(p.add_argument_group("each sampler's options (METHOD: ...)"), SAMPLER_OPTIONS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from ropestretch.positions import position_stats

    from ropestretch.options import chosen_options
    from ropestretch.positions import SAMPLER_OPTIONS

    options = chosen_options(SAMPLER_OPTIONS, args.method, vars(args), "--method")
    from ropestretch.positions import sample_length
    from ropestretch.budgets import check_fits
    from ropestretch.paths import new_file

    if args.out is not None:
        new_file(args.out, ".npy", "--out")
    if args.plot is not None:
        new_file(args.plot, ".png", "--plot")
    width = sample_length(args.method, args.window, args.target) if args.target >= args.window else args.window
    check_fits(args.samples * width * 8 * 3 + args.target * 24,
               f"{args.samples:,} rows of {width:,} positions and their coverage of {args.target:,} distances")
    stats = position_stats(args.method, args.samples, args.window, args.target, seed=args.seed,
                           coverage_samples=args.coverage_samples, **options)
    positions = stats.pop("positions")
    if args.out:
        tmp = Path(args.out).with_name(Path(args.out).name + ".partial.npy")
        np.save(tmp, positions.numpy().astype(np.int64))
        tmp.rename(args.out)
    if args.plot:
        _plot(args.plot, args, positions, stats)
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{args.method}: {args.samples} samples, window N = {args.window}, target L = {args.target} "
          f"(f = {args.target / args.window:g}), seed {args.seed}")
    if stats["strategy_fraction"]:
        sf = stats["strategy_fraction"]
        q = stats["middle_centre_quantiles"]
        print(f"  strategy mix: relativity {sf['relativity']:.3f}, continuity {sf['continuity']:.3f}")
        print(f"  middle centre / L: 5% {q['q05']:.3f}, median {q['q50']:.3f}, 95% {q['q95']:.3f}")
    if "skip_quantiles" in stats:
        q = stats["skip_quantiles"]
        print(f"  skip / (L - N): 5% {q['q05']:.3f}, median {q['q50']:.3f}, 95% {q['q95']:.3f}")
    print(f"  relative distances [1, L-1] covered: {100 * stats['relative_coverage']:.2f}% "
          f"(first {stats['relative_coverage_samples']} samples)")
    print(f"  first row: {positions[0, :4].tolist()} ... {positions[0, -4:].tolist()}")
    for path in (args.out, args.plot):
        if path:
            print(f"wrote {path}")
    return 0


def _plot(path: str, args: argparse.Namespace, positions, stats: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    L = args.target
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if args.method == "cream":
        import torch

        from ropestretch.positions import cream_draw

        opts = {k: getattr(args, k) for k in ("strategy", "middle", "k", "mu", "sigma") if getattr(args, k) is not None}
        draw = cream_draw(args.samples, args.window, L, torch.Generator().manual_seed(args.seed), **opts)
        centre = ((draw.middle_start + draw.end).double() / 2 / L).numpy()
        left.hist(centre, bins=60, range=(0, 1), color="tab:blue")
        left.set_xlabel("middle-segment centre / L")
        left.set_title("CREAM: where the middle segment lands")
    else:
        left.hist(positions.numpy().ravel() / L, bins=60, range=(0, 1), color="tab:blue")
        left.set_xlabel("position / L")
        left.set_title(f"{args.method}: positions used")
    left.set_ylabel("count")
    # coverage: how often each relative distance is seen, over the first rows
    from ropestretch.positions import row_coverage

    rows = positions[: min(len(positions), 200)].numpy()
    seen = np.zeros(L, dtype=np.int64)
    for row in rows:
        seen += row_coverage(row, L)
    right.plot(np.arange(1, L), seen[1:] / len(rows), color="tab:green", linewidth=0.8)
    right.set_xlabel("relative distance")
    right.set_ylabel(f"share of the first {len(rows)} rows covering it")
    right.set_title(f"coverage of [1, L-1] (all {stats['relative_coverage_samples']} rows: "
                    f"{100 * stats['relative_coverage']:.1f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
