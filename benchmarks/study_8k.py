"""The 8K study, as it ran before it became a plan: the same as

    ropestretch study examples/studies/smollm2-8k.yaml --out ~/studies/smollm2-8k [--report docs/smollm2-8k]

(the plan holds the variants, the training budget, the cells in their order and the report's summary;
:mod:`ropestretch.study` runs it). Kept so that the commands in older notes still work."""

import sys
from pathlib import Path

from ropestretch.cli import main

PLAN = Path(__file__).resolve().parents[1] / "examples" / "studies" / "smollm2-8k.yaml"

if __name__ == "__main__":
    sys.exit(main(["study", str(PLAN), *sys.argv[1:]]))
