"""``ropestretch train``: fine-tune inside the window with any position sampler x any scaling."""

from __future__ import annotations

import argparse
import dataclasses


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.train import TrainConfig

    p = sub.add_parser(
        "train",
        help="fine-tune a causal LM inside its window to work at a longer target length",
        description="Fine-tune a Hugging Face causal LM inside its original window N with training-time "
        "position ids (CREAM, PoSE, RandPos, full length or none) and a RoPE scaling, and write a standard "
        "checkpoint that stock transformers loads at the target length L. Every option can also be set in a "
        "YAML file (--config); flags override the file. Under `accelerate launch` it runs data-parallel.",
    )
    from ropestretch.options import add_registry_flags
    from ropestretch.positions import SAMPLER_OPTIONS, SAMPLERS
    from ropestretch.rope.scalings import SCALING_OPTIONS, SCALINGS

    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of the options below")
    names = {"positions": ", ".join(SAMPLERS), "scaling": ", ".join(SCALINGS)}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("internal"):
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"] + (f" ({names[f.name]})" if f.name in names else "")
        if str(f.type).startswith("bool"):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            default = f" (default {f.default})" if f.default not in (None, "", 0) else ""
            p.add_argument(flag, dest=f.name, default=None, metavar=f.name.split("_")[-1].upper(),
                           help=help_text + default)
    add_registry_flags(p.add_argument_group("each position sampler's options"), SAMPLER_OPTIONS, prefixed=True)
    add_registry_flags(p.add_argument_group("each scaling's options"), SCALING_OPTIONS, prefixed=True)
    p.set_defaults(run=run, left_on_write_error="the last complete checkpoint stays, and --resume continues from it")


def run(args: argparse.Namespace) -> int:
    from ropestretch.train import TrainConfig, load_yaml, make_config, train

    from ropestretch.train import option_fields

    values = load_yaml(args.config) if args.config else {}
    for name in [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")] + list(option_fields()):
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
    result = train(make_config(**values))
    if result.already_done:
        print(f"{result.out} is complete; nothing changed")
        return 0
    print(f"wrote {result.out}")
    import json

    record = result.out / "ropestretch.json"
    if record.is_file():
        for note in json.loads(record.read_text()).get("engine_notes", []):
            print(f"note: {note}")
    return 0
