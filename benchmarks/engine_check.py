"""Do other engines load ropestretch's exports with the frequencies ropestretch computed?

Two steps, so that the second can run under any Python with torch and transformers installed
(transformers 4.x, for instance), without ropestretch:

    python benchmarks/engine_check.py export OUT          # this venv: tiny models of every family
                                                           # (examples/configs/families), `apply`
                                                           # with every scaling to 2x the window
    /path/to/other/python benchmarks/engine_check.py check OUT

`check` loads each checkpoint with stock AutoModelForCausalLM, runs one token at position L-1
(which settles dynamic and longrope), and compares the rotary module's inv_freq and attention
scaling with what ropestretch recorded (rtol 1e-5). It prints one row per family and the
transformers version it ran; docs/engines.md holds the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import build, family_names, forward_at, loaded_rope  # noqa: E402

SCALINGS = ["none", "linear", "ntk", "dynamic", "yarn", "dprope"]


def export(out: Path) -> None:
    from ropestretch.errors import UsageError
    from ropestretch.rope import load_rope_config, scale
    from ropestretch.rope.export import apply_to_checkpoint

    for name in family_names():
        base = build(name, out / name / "base", "hub")
        rope = load_rope_config(base)
        for scaling in SCALINGS:
            try:
                result = scale(rope, scaling, 2 * rope.window)
            except UsageError as err:
                (out / name / f"{scaling}.refused").write_text(str(err) + "\n")
                continue
            folder = apply_to_checkpoint(base, out / name / scaling, result)
            (folder / "expected.json").write_text(json.dumps({
                "target": result.target, "layer_type": rope.layer_type, "inv_freq": result.inv_freq.tolist(),
                "attention": result.attention_factor, "exported": result.exported.rope_type}))
        print(name, flush=True)


def check(out: Path) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"| family | {' | '.join(SCALINGS)} |\n|---|{'---|' * len(SCALINGS)}")
    failures = 0
    for family in sorted(p for p in out.iterdir() if p.is_dir()):
        cells = []
        for scaling in SCALINGS:
            folder = family / scaling
            if (family / f"{scaling}.refused").exists():
                cells.append("refused")
                continue
            expected = json.loads((folder / "expected.json").read_text())
            try:
                model = AutoModelForCausalLM.from_pretrained(folder)
                forward_at(model, expected["target"] - 1)
                inv_freq, attention = loaded_rope(model, expected["layer_type"])
            except Exception as err:  # report, do not stop: the table is the point
                cells.append(f"load fails ({type(err).__name__}: {str(err).splitlines()[0][:60]})")
                failures += 1
                continue
            want = torch.tensor(expected["inv_freq"])
            same = inv_freq.shape == want.shape and torch.allclose(inv_freq.float(), want, rtol=1e-5, atol=0) \
                and abs(float(attention) - expected["attention"]) <= 1e-6 * expected["attention"]
            if same:
                cells.append(f"ok ({expected['exported']})")
            else:
                failures += 1
                worst = float(((inv_freq.float() - want).abs() / want).max()) if inv_freq.shape == want.shape else -1
                cells.append(f"differs ({expected['exported']}: rel {worst:.1e}, attention {float(attention):.4g} "
                             f"vs {expected['attention']:.4g})")
        print(f"| {family.name} | {' | '.join(cells)} |", flush=True)
    print(f"{failures} differ or fail to load")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["export", "check"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.step == "export":
        if args.out.exists() and any(args.out.iterdir()):
            parser.error(f"{args.out} is not empty")
        export(args.out)
        return 0
    return check(args.out)


if __name__ == "__main__":
    sys.exit(main())
