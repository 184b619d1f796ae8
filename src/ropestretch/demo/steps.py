"""The demo's steps, each writing under ``--out`` only and reused when a rerun finds it done:
the training rows, the training-free checkpoints (``apply``), the fine-tunes (``train``), the
evaluations; :meth:`Demo.run` runs them for the chosen variants and writes the report."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ropestretch.demo.plan import BASE_MODEL, DemoPlan, variant_name, variants
from ropestretch.errors import UsageError
from ropestretch.jsonl import write_whole
from ropestretch.locks import folder_lock, is_empty


class Demo:
    """A demo folder: the plan it was started with and the steps it holds. Nothing is written until
    :meth:`run` holds the folder's lock."""

    def __init__(self, out: str | Path, plan: DemoPlan, base: str | Path = BASE_MODEL, progress: bool = True):
        from ropestretch.paths import named_path, outside

        self.out, self.plan, self.base, self.progress = named_path(out, "--out"), plan, Path(base), progress
        if not (self.base / "config.json").is_file():
            raise UsageError(f"base model not found at {self.base}")
        outside(self.out, {"base model folder": self.base}, "--out")
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file")
        self.timings: dict[str, float] = {}
        self._shared: dict[str, Any] = {}  # haystack and perplexity text: one tokenizer for every variant
        record = self.out / "demo.json"
        if not is_empty(self.out):
            if not record.is_file():
                raise UsageError(f"{self.out} is not empty and holds no demo; choose a new --out")
            try:
                previous = json.loads(record.read_text(encoding="utf-8"))
                if not isinstance(previous, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                raise UsageError(f"{record} is not a demo record; choose a new --out") from None
            if previous.get("plan") != asdict(plan):
                raise UsageError(f"{self.out} holds a demo with another plan (--quick or not); choose a new --out")
            self.timings = previous.get("timings", {})

    def _save(self) -> None:
        from ropestretch.eval.store import recorded_path

        record = {"plan": asdict(self.plan), "base": recorded_path(str(self.base), self.out), "timings": self.timings}
        write_whole(self.out / "demo.json", json.dumps(record, indent=2) + "\n")

    def say(self, text: str) -> None:
        print(f"[demo] {text}", file=sys.stderr, flush=True)

    # -- steps ------------------------------------------------------------------------------------

    def data(self, length: int) -> Path:
        path = self.out / "data" / f"train-{length}.jsonl"
        if path.is_file():
            return path
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.base)
        from ropestretch.data.training_rows import make_rows

        count = self.plan.budget // length
        self.say(f"building {count} training rows of {length} tokens")
        rows = make_rows("mix", tok, length, count, self.plan.seed, mix=self.plan.mix, needles=self.plan.needles)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, "".join(json.dumps({"input_ids": r["input_ids"]}) + "\n" for r in rows))
        return path

    def apply(self, scaling: str) -> Path:
        from ropestretch.rope import load_rope_config, scale
        from ropestretch.rope.export import apply_to_checkpoint

        out = self.out / "models" / scaling
        if (out / "ropestretch.json").is_file():
            return out
        self.say(f"{scaling}: scaling {self.plan.window} -> {self.plan.target} without training")
        options = self.plan.scaling_options.get(scaling, {})
        scaled = scale(load_rope_config(self.base), scaling, self.plan.target, **options)
        apply_to_checkpoint(self.base, out, scaled, command="demo")
        return out

    def train(self, positions: str, scaling: str) -> Path:
        from ropestretch.train import make_config, train

        name = f"{positions}-{scaling}"
        out = self.out / "models" / name
        if (out / "ropestretch.json").is_file():
            return out
        length = self.plan.target if positions == "full" else self.plan.window
        data = self.data(length)
        batch = self.plan.batch if positions != "full" else max(1, self.plan.batch // 8)
        steps = max(1, self.plan.budget // (batch * length))
        settings = dict(model=str(self.base), data=str(data), out=str(out), target=self.plan.target,
                        positions=positions, scaling=scaling, steps=steps, batch_size=batch, lr=self.plan.lr,
                        warmup_steps=min(self.plan.warmup, steps), schedule=self.plan.schedule, seed=self.plan.seed,
                        save_steps=max(1, steps // 2), save_total_limit=1, logging_steps=max(1, steps // 20),
                        dtype=self.plan.dtype,
                        progress=self.progress, resume=out.exists() and any(out.iterdir()),
                        distill=self.plan.distill if length <= self.plan.window else 0.0)
        # the scaling's options under ropestretch train's names (see train.scaling_options)
        settings.update({f"{scaling}_{k}": v for k, v in self.plan.scaling_options.get(scaling, {}).items()})
        clash = sorted(set(self.plan.train_options) & set(settings))
        if clash:
            raise UsageError(f"train_options cannot set {clash[0]!r}: the demo plan sets it")
        self.say(f"{name}: fine-tuning {steps} steps of {batch} x {length} tokens")
        started = time.time()
        train(make_config(**settings, **self.plan.train_options))
        self.timings[name] = round(time.time() - started, 1)
        self._save()
        return out

    def evaluate(self, name: str, model: Path) -> Path:
        from tqdm.auto import tqdm

        from ropestretch.data.tasks import Haystack
        from ropestretch.eval import Evaluator, RunStore, load_for_eval
        from ropestretch.eval.tasks import get_task, recorded_arguments

        run = self.out / "evals" / name
        p = self.plan
        tasks = [get_task(test) for test in p.samples]  # the plan names its tasks; the registry has the rest
        given = {"depths": p.depths, "positions": p.kv_positions}
        options = {t.name: t.resolve({o.name: given.get(o.name) for o in t.options}) for t in tasks}
        tail = {t.name: p.tail if t.name in p.tail_samples else [] for t in tasks}
        plan = {t.name: len(t.cells(p.lengths + tail[t.name], options[t.name])) for t in tasks}
        stores = {}
        for t in tasks:
            args = recorded_arguments(t, str(model), p.lengths, p.samples[t.name], p.seed, None, options[t.name],
                                      dtype="fp32", folder=run)
            if tail[t.name]:
                args["tail"] = {"lengths": tail[t.name], "samples": p.tail_samples[t.name]}
            stores[t.name] = RunStore(run, t.name, args)
        if all(len(stores[t].done) == n for t, n in plan.items()):
            return run
        started = time.time()
        model_, tok = load_for_eval(str(model))
        if not self._shared:
            from ropestretch.data.corpus import builtin_documents, token_stream

            docs = builtin_documents()
            self._shared = {"haystack": Haystack(tok, docs), "stream": token_stream(tok, docs)}
        bar = tqdm(total=sum(plan.values()), desc=f"eval {name}", unit="cell", disable=not self.progress)
        ev = Evaluator(model_, tok, "forced", batch_size=10, haystack=self._shared["haystack"], progress=bar,
                       tokens=self._shared["stream"])
        for t in tasks:
            t.run(ev, stores[t.name], p.lengths, p.samples[t.name], p.seed, options[t.name])
        for t in tasks:
            if tail[t.name]:
                t.run(ev, stores[t.name], tail[t.name], p.tail_samples[t.name], p.seed, options[t.name])
        bar.close()
        self.timings[f"eval {name}"] = round(time.time() - started, 1)
        self._save()
        return run

    def run(self, everything: bool = False) -> Path:
        """Every step of the chosen variants (:func:`plan.variants`), then ``report.md``."""
        import torch
        from transformers.utils import logging as hf_logging

        from ropestretch.demo.report import write_demo_report

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        hf_logging.set_verbosity_error()  # the longrope export's vLLM keys would warn at every load
        with folder_lock(self.out, "demo"):
            # everything, caches included, stays under --out
            os.environ["HF_HOME"] = str(self.out / ".cache" / "huggingface")
            os.environ["HF_DATASETS_CACHE"] = str(self.out / ".cache" / "datasets")
            os.environ["MPLCONFIGDIR"] = str(self.out / ".cache" / "matplotlib")
            self._save()
            started = time.time()
            models: dict[str, Path] = {"base": self.base}
            for positions, scaling in variants(everything):
                name = variant_name(positions, scaling)
                models[name] = self.apply(scaling) if positions is None else self.train(positions, scaling)
            runs = [self.evaluate(name, path) for name, path in models.items()]
            report = write_demo_report(self.out, self.plan, runs)
            self.timings["total (this invocation)"] = round(time.time() - started, 1)
            self._save()
        return report
