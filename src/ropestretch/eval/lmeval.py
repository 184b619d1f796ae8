"""Standard benchmarks (LongBench, LongBench-E, RULER, short tasks) through lm-evaluation-harness."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError


def run_lm_eval(model_dir: str, tasks: Sequence[str], out: Path, max_length: int | None = None,
                include_path: str | None = None, batch_size: int = 1, limit: float | None = None,
                backend: str = "hf", placement=None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on a checkpoint; results written to ``out/lm-eval.json``.

    ``backend`` is ``hf`` (transformers) or ``vllm`` where vLLM is installed. ``max_length``
    defaults to the target ``L`` of a ropestretch checkpoint (its ``ropestretch.json``), else the
    checkpoint's ``max_position_embeddings``. ``placement`` (:func:`ropestretch.hardware.placement`)
    gives the device, dtype, device map and attention implementation.
    """
    from ropestretch.hardware import Placement

    placement = placement or Placement("cpu", "fp32")
    record = Path(model_dir) / "ropestretch.json"
    if max_length is None and record.is_file():
        max_length = json.loads(record.read_text()).get("target")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UsageError("lm-evaluation-harness is not installed: pip install 'ropestretch[eval]'") from None
    if backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UsageError("the vllm backend needs vLLM installed (pip install vllm)") from None
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[placement.dtype]
    args = [f"pretrained={model_dir}", f"dtype={dtype}"]
    if backend == "hf" and placement.attn_implementation != "auto":
        args.append(f"attn_implementation={placement.attn_implementation}")
    if backend == "hf" and placement.device_map:
        args.append("parallelize=True")  # lm-eval's HF backend spreads the model with device_map auto
    if max_length:
        args.append(f"max_length={max_length}" if backend == "hf" else f"max_model_len={max_length}")
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UsageError(f"unknown lm-eval tasks: {', '.join(unknown)}" +
                         ("" if include_path else " (give --include-path for local task YAML files)"))
    started = time.time()
    results = lm_eval.simple_evaluate(model=backend, model_args=",".join(args), tasks=list(tasks),
                                      batch_size=batch_size, limit=limit, task_manager=manager,
                                      device=None if placement.device_map else placement.device)
    summary = {"model": model_dir, "tasks": list(tasks), "backend": backend, "max_length": max_length,
               "placement": placement.describe(),
               "seconds": round(time.time() - started, 1), "results": results["results"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "lm-eval.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary

