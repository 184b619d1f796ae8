"""The first SmolLM2 study, as it ran before it became a plan: the same as

    ropestretch study examples/studies/smollm2.yaml --out runs/smollm2 [--report docs/smollm2]

(the plan holds the variants, the two training recipes, the cells in their order and the report's
summary; :mod:`ropestretch.study` runs it, and reads the rows this script archived). Kept so that the
commands in older notes still work."""

import sys
from pathlib import Path

from ropestretch.cli import main

PLAN = Path(__file__).resolve().parents[1] / "examples" / "studies" / "smollm2.yaml"

if __name__ == "__main__":
    sys.exit(main(["study", str(PLAN), *sys.argv[1:]]))
