"""``ropestretch pretrain``: train the small base model that the demo extends, from scratch on CPU."""

from __future__ import annotations

import argparse
import dataclasses


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ropestretch.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help="pre-train the small base model (window 256) from scratch on CPU",
                       description="Train a small Llama-architecture base model from scratch on text that needs no "
                       "download (Python's own English) mixed with the synthetic retrieval formats, copying first. "
                       "This is the recipe of the checkpoint in models/tiny-llama-256.")
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f"(default {f.default})")
    p.set_defaults(run=run, left_on_write_error="every finished phase stays in the cache: rerun the same command to "
                                        "continue from it")


def run(args: argparse.Namespace) -> int:
    from ropestretch.pretrain import PretrainConfig, pretrain

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    out = pretrain(PretrainConfig(**values))
    print(f"wrote {out}")
    return 0
