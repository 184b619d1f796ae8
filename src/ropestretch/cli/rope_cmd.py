"""``ropestretch rope``: every scaling's disturbance of the rotary-angle distribution, and DPRoPE's choice."""

from __future__ import annotations

import argparse
import json

from ropestretch.cli import positive_int

TABLE_METHODS = ["none", "linear", "ntk", "dynamic", "yarn", "dprope"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.options import add_flag
    from ropestretch.rope.scalings import SCALING_OPTIONS

    p = sub.add_parser(
        "rope",
        help="compare RoPE scalings by their disturbance of the rotary-angle distribution",
        description="Print, for a model config and a target length, the disturbance of the rotary-angle "
        "distribution (KL from the pre-trained one, mean over pairs) for every scaling, and DPRoPE's "
        "per-pair choice between interpolation and extrapolation.",
    )
    p.add_argument("--config", required=True, metavar="PATH_OR_MODEL",
                   help="a config.json, a model folder, or a hub model id (online only)")
    p.add_argument("--target", required=True, type=positive_int, metavar="L", help="target context length")
    p.add_argument("--scaling", default="dprope", metavar="NAME",
                   help="the scaling whose factors and rope_parameters are reported (default: dprope)")
    dprope = p.add_argument_group("DPRoPE's options (the table's dprope row and the choice)")
    for option in SCALING_OPTIONS["dprope"]:
        add_flag(dprope, option, option.name)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="draw per-pair disturbance of extrapolation, interpolation and the choice")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ropestretch.errors import UsageError
    from pathlib import Path

    from ropestretch.paths import new_file
    from ropestretch.rope import angle_distribution, base_inv_freq, load_rope_config, method_disturbance, rope_frequencies, scale
    from ropestretch.rope.distribution import check_bins
    from ropestretch.rope.export import rope_scaling
    from ropestretch.rope.scalings import SCALING_OPTIONS

    dp_options = {o.name: getattr(args, o.name) for o in SCALING_OPTIONS["dprope"] if getattr(args, o.name) is not None}
    args.bins = dp_options.get("bins", 360)
    args.reverse = bool(dp_options.get("reverse", False))
    check_bins(args.bins)
    if args.plot is not None:
        new_file(args.plot, ".png", "--plot", {"model folder": args.config if Path(args.config).is_dir() else None})
    rope = load_rope_config(args.config)
    dprope = scale(rope, "dprope", args.target, **dp_options)
    chosen = dprope if args.scaling == "dprope" else scale(rope, args.scaling, args.target)
    effective, attention = rope_frequencies(rope)
    pretrained = angle_distribution(effective, rope.window, args.bins)
    disturbance, refused = {}, {}
    for name in TABLE_METHODS:
        try:
            scaled = dprope if name == "dprope" else scale(rope, name, args.target)
        except UsageError as err:  # no exportable form for this model (dynamic on llama3, ...)
            disturbance[name], refused[name] = None, str(err)
            continue
        disturbance[name] = method_disturbance(scaled, args.bins, args.reverse, pretrained)
    choice = dprope.details["choice"]

    if args.plot:
        _plot(args.plot, choice, rope, args.target)
    if args.json:
        print(json.dumps({
            "window": rope.window,
            "target": args.target,
            "factor": args.target / rope.window,
            "scaling": chosen.scaling,
            "factors": chosen.factors,
            "attention_factor": chosen.attention_factor,
            "rope_parameters": chosen.rope_parameters,
            "rope_scaling": rope_scaling(chosen),
            "max_position_embeddings": chosen.max_position_embeddings,
            "disturbance": disturbance,
            "bins": args.bins,
            "direction": "KL(scaled || pretrained)" if args.reverse else "KL(pretrained || scaled)",
            "dprope": {
                "threshold": choice.threshold,
                "n_hat": choice.n_hat,
                "interpolate": choice.interpolate.tolist(),
                "extrapolation": [float(x) for x in choice.extrapolation],
                "interpolation": [float(x) for x in choice.interpolation],
            },
            "rope": {"head_dim": rope.head_dim, "rotary_dim": rope.rotary_dim, "rope_theta": rope.base,
                     "partial_rotary_factor": rope.partial_rotary_factor, "rope_type": rope.rope_type,
                     "layer_type": rope.layer_type, "parameters": rope.parameters(),
                     "factors": [round(float(x), 6) for x in base_inv_freq(rope).double() / effective.double()],
                     "attention_factor": attention},
            "exported_rope_type": chosen.exported.rope_type,
        }))
        return 0

    s = args.target / rope.window
    print(f"window N = {rope.window}, target L = {args.target} (s = {s:g}), rotary dim {rope.rotary_dim} "
          f"({rope.pairs} pairs), rope_theta {rope.base:g}, {args.bins} bins")
    print(f"pre-trained RoPE: {rope.describe()}, attention factor {attention:g}")
    for name, params in rope.other_layers.items():
        if params:
            print(f"  {name} layers: {params.get('rope_type', 'default')}, rope_theta "
                  f"{params.get('rope_theta')}: left as they are")
    if not rope.plain:
        print("every scaling below starts from these frequencies, not from the unscaled base")
    direction = "KL(scaled || pre-trained)" if args.reverse else "KL(pre-trained || scaled)"
    print(f"\nDisturbance of the rotary-angle distribution, mean over pairs of {direction}:")
    print(f"  {'scaling':<10}{'disturbance':>14}{'vs linear':>12}")
    for name, value in disturbance.items():
        if value is None:
            print(f"  {name:<10}{'refused':>14}  ({refused[name]})")
            continue
        rel = "" if name == "linear" else f"{100 * (value / disturbance['linear'] - 1):+.1f}%"
        print(f"  {name:<10}{value:>14.6f}{rel:>12}")
    print(f"\nDPRoPE per-pair choice: threshold t = {choice.threshold:g}, "
          f"{int(choice.interpolate.sum())} of {rope.pairs} pairs interpolated (n_hat = {choice.n_hat})")
    theta = base_inv_freq(rope)
    print(f"  {'pair':>4}  {'theta':>10}  {'f (model)':>10}  {'D(extrap)':>10}  {'D(interp)':>10}  choice")
    for i in range(rope.pairs):
        pick = "interpolate" if choice.interpolate[i] else "extrapolate"
        print(f"  {i:>4}  {float(theta[i]):>10.3e}  {float(effective[i]):>10.3e}  {float(choice.extrapolation[i]):>10.5f}  "
              f"{float(choice.interpolation[i]):>10.5f}  {pick}")
    if chosen.scaling != "dprope":
        print(f"\n{chosen.scaling} per-pair factors: {chosen.factors}")
    print(f"\n{chosen.scaling} exported as rope type {chosen.exported.rope_type!r}, attention factor "
          f"{chosen.attention_factor:g}, max_position_embeddings {chosen.max_position_embeddings}")
    print(f"rope_parameters ({chosen.scaling}): {json.dumps(chosen.rope_parameters)}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _plot(path: str, choice, rope, target: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(range(rope.pairs))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.plot(pairs, choice.extrapolation.tolist(), label="extrapolation", color="tab:red", alpha=0.7)
    ax.plot(pairs, choice.interpolation.tolist(), label="interpolation", color="tab:blue", alpha=0.7)
    ax.plot(pairs, choice.chosen.tolist(), label=f"DPRoPE choice (n_hat = {choice.n_hat})",
            color="black", linestyle="none", marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("rotary pair i (high to low frequency)")
    ax.set_ylabel("disturbance KL(P || Q)")
    ax.set_title(f"Rotary-angle disturbance per pair: N = {rope.window} to L = {target}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
