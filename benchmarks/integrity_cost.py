"""What the integrity check costs against what it guards: SmolLM2-135M-Instruct's checkpoint folder
checked from its headers (`ropestretch.integrity.check_folder`) against loading the model, and the
shipped GGUF's tensor table checked (`check_gguf`) against reading the file through. One process,
every figure the median of ``--repeats`` runs after a warm-up, ratios printed from this run.

    python benchmarks/integrity_cost.py
    python benchmarks/integrity_cost.py --model path/to/checkpoint --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up: imports, the page cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="checkpoint folder or bundled name")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from ropestretch.checkpoints import bundled_file, resolve_model
    from ropestretch.gguf.read import check_gguf
    from ropestretch.integrity import check_folder

    torch.set_num_threads(2)
    folder = resolve_model(args.model)
    check = median_seconds(lambda: check_folder(folder), args.repeats)
    load = median_seconds(lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), args.repeats)
    print(f"{folder}: check_folder {check:.3f} s, from_pretrained {load:.3f} s, x{check / load:.2f} of a load")
    if args.model == "smollm2-135m-instruct":
        gguf = bundled_file(args.model)

        def read_through():
            with open(gguf, "rb") as handle:
                while handle.read(1 << 24):
                    pass
        table = median_seconds(lambda: check_gguf(gguf), args.repeats)
        through = median_seconds(read_through, args.repeats)
        print(f"{gguf.name}: check_gguf {table:.3f} s, reading the file through {through:.3f} s, "
              f"x{table / through:.2f}")


if __name__ == "__main__":
    main()
