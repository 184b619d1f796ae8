"""A study as data: one runner for a plan (``ropestretch study PLAN.yaml``, or :func:`run_study`).

A plan (``examples/studies/*.yaml``) names the base model, the target length, the texts, the
variants (a scaling applied, or a sampler x scaling fine-tuned with the plan's training settings),
the evaluation cells (task, variants, length, samples, seeds, depths) in the order they run, and
what the report leads with (summary columns, pairs). The runner reads top to bottom:

1. the texts (:data:`TEXTS`: a built-in corpus by name, or a path);
2. each variant's checkpoint, made when the first cell needs it (``ropestretch apply`` or
   ``ropestretch train``, as the report's commands say);
3. the cells in the plan's order, each variant of a cell in its own run folder through
   :func:`ropestretch.eval.run`; a cell whose rows the archive holds is not run again, so a
   study stopped anywhere continues where it stopped, on any machine that has the archive;
4. with ``report``: every row measured so far archived (``<docs>/results.jsonl``: the union of the
   archive and the run folders, so no row is ever lost), and ``<docs>/report.md`` written through
   :mod:`ropestretch.report`'s public functions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError
from ropestretch.jsonl import read_jsonl, write_whole

README_MARKERS = ("<!-- {name}: written by ropestretch study --readme -->", "<!-- {name}: end -->")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One evaluation on some variants: a task at some lengths, ``samples`` per depth from ``seed``."""

    task: str
    variants: tuple
    lengths: tuple
    samples: int
    seed: int = 0
    depths: tuple = ()
    tag: str = ""  # "repro": a rebuilt checkpoint's rerun of an archived cell, kept out of the tables
    default_depths: tuple = field(default=(), compare=False, repr=False)
    text: str = "eval"  # the plan's text (a role of its ``texts``) the prompts or windows are drawn from
    label: str = ""  # what the report calls the task on another text (``ppl-code``); default the task
    options: tuple = ()  # the task's other options, as (name, value) pairs (kv's positions)

    @property
    def shown(self) -> str:
        return self.label or self.task

    @property
    def name(self) -> str:
        """The run folder's name: ``needle@16384x2s0``, with the depths where not the plan's, the task's
        other options where given, and the tag."""
        shown = "" if self.depths == self.default_depths or not self.depths else "@" + ",".join(
            f"{d:g}" for d in self.depths)
        shown += "".join(f"@{k}=" + (",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else str(v))
                         for k, v in self.options)
        return f"{self.shown}@{','.join(map(str, self.lengths))}x{self.samples}s{self.seed}{shown}" + (
            f"-{self.tag}" if self.tag else "")

    def task_options(self) -> dict:
        """The options :func:`ropestretch.eval.run` takes for the task (depths, and the others)."""
        return {**({"depths": list(self.depths)} if self.depths else {}),
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self.options}}

    def cells(self) -> list[dict]:
        """The result rows' cells it makes for each variant."""
        from ropestretch.eval.tasks import get_task

        task = get_task(self.task)
        return task.cells(list(self.lengths), task.resolve(self.task_options()))


@dataclass
class Plan:
    name: str
    title: str
    model: str
    target: int
    variants: dict[str, dict[str, Any]]
    cells: list[Cell]
    texts: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    dtype: str = "fp32"
    summary: list[tuple] = field(default_factory=list)
    pairs: list[tuple] = field(default_factory=list)
    paired: list[str] = field(default_factory=list)  # the tasks the summary pairs, in order (default: every retrieval task)
    intervals: str = ""
    setup: str = ""
    budget: str = ""
    source: str = ""  # the plan file, as the report's commands name it
    archive: str = ""  # the rows measured so far (docs/.../results.jsonl): their cells are not run again

    def checkpoint(self, variant: str) -> str:
        """The variant whose checkpoint ``variant`` evaluates: its own, or the one its ``checkpoint`` names."""
        return self.variants.get(variant, {}).get("checkpoint", variant)

    def fine_tuned(self, variant: str) -> bool:
        return "positions" in self.variants.get(self.checkpoint(variant), {})

    def order(self) -> list[str]:
        """The variants in the plan's order."""
        return list(self.variants)

    def task_of(self, shown: str) -> str:
        """The task a report name stands for: a cell's label (``ppl-code``) or the task itself."""
        return next((c.task for c in self.cells if c.label == shown), shown)

    def shown_of(self, cell_name: str, task: str) -> str:
        """What the report calls the rows of run folder ``cell_name``: its cell's label, else the task."""
        return next((c.shown for c in self.cells if c.name == cell_name), task)


def merged(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in over.items()}}
    return over


def read_plan(path: Path, seen: tuple = ()) -> dict:
    """A plan file's mapping; one that ``extends: OTHER.yaml`` (a path beside it) is that plan with
    this one merged on top (:func:`merged`: a mapping key by key, a list or value replaced)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no such study plan: {path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UsageError(f"{path} is not a readable YAML plan: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping")
    if "extends" in data:
        parent = path.parent / str(data.pop("extends"))
        if parent.resolve() in seen:
            raise UsageError(f"{path}: the plans it extends extend it again")
        data = merged(read_plan(parent, seen + (path.resolve(),)), data)
    return data


def load_plan(path: str | os.PathLike, model: str | None = None) -> Plan:
    """A study plan from YAML, every field checked (one line for what is wrong); ``model`` in place of
    the plan's base model."""
    from ropestretch.eval.tasks import get_task

    path = Path(path)
    data = read_plan(path)
    for key in ("name", "model", "target", "variants", "cells"):
        if key not in data:
            raise UsageError(f"{path}: the plan has no {key!r}")
    variants = data["variants"]
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise UsageError(f"{path}: variants must map a name to its settings (scaling, positions)")
    texts = dict(data.get("texts") or {})
    for name, spec in variants.items():
        if spec.get("data", "train") not in texts and "positions" in spec:
            raise UsageError(f"{path}: variant {name!r} trains on text {spec.get('data', 'train')!r}, which the "
                             "plan's texts do not name")
        if "checkpoint" in spec and (spec["checkpoint"] not in variants or "checkpoint" in variants[spec["checkpoint"]]
                                     or {"scaling", "positions"} & set(spec)):
            raise UsageError(f"{path}: variant {name!r}: `checkpoint` names another variant, one with a checkpoint "
                             "of its own, instead of a scaling or positions")
        if spec.get("attention") not in (None, "none"):
            from ropestretch.attention import ATTENTION_METHODS

            if spec["attention"] not in ATTENTION_METHODS:
                raise UsageError(f"{path}: variant {name!r}: unknown attention {spec['attention']!r} "
                                 f"(one of {', '.join(ATTENTION_METHODS)})")
    evaluation = dict(data.get("evaluation") or {})
    depths = tuple(float(d) for d in evaluation.pop("depths", ()) or ())
    cells = []
    for number, raw in enumerate(data["cells"], 1):
        if not isinstance(raw, dict) or not {"task", "variants", "samples"} <= set(raw) or \
                not {"length", "lengths"} & set(raw):
            raise UsageError(f"{path}: cell {number} needs task, variants, length and samples")
        task = get_task(raw["task"])
        unknown = [v for v in raw["variants"] if v not in variants]
        if unknown:
            raise UsageError(f"{path}: cell {number} names an unknown variant {unknown[0]!r}")
        cell_depths = tuple(float(d) for d in raw.get("depths", depths)) if task.place is not None and \
            task.place.key == "depth" else ()
        role = str(raw.get("text", "eval"))
        if role != "eval" and role not in texts:
            raise UsageError(f"{path}: cell {number} reads text {role!r}, which the plan's texts do not name")
        known = {"task", "variants", "length", "lengths", "samples", "seed", "seeds", "depths", "tag", "text", "as"}
        given = {k: v for k, v in raw.items() if k not in known}
        task.resolve(given)  # an option the task does not declare: one line
        # a list of numbers as floats, as the command line reads it (a row's cell then says 0.0, not 0)
        options = tuple(sorted((k, tuple(float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v)
                                if isinstance(v, list) else v) for k, v in given.items()))
        # `length: [a, b]` is one cell per length; `lengths: [a, b]` one cell (one run folder) over them all
        groups = [[n] for n in (raw["length"] if isinstance(raw["length"], list) else [raw["length"]])] \
            if "lengths" not in raw else [raw["lengths"]]
        for lengths in groups:
            for seed in raw.get("seeds", [raw.get("seed", 0)]):
                cells.append(Cell(task.name, tuple(raw["variants"]), tuple(int(n) for n in lengths),
                                  int(raw["samples"]), int(seed), cell_depths, str(raw.get("tag", "")), depths, role,
                                  str(raw.get("as", "")), options))
    folders = [(v, c.name) for c in cells for v in c.variants]
    twice = sorted({f for f in folders if folders.count(f) > 1})
    if twice:
        raise UsageError(f"{path}: two cells share the run folder {twice[0][0]}/{twice[0][1]}")
    return Plan(str(data["name"]), str(data.get("title", data["name"])), str(model or data["model"]), int(data["target"]),
                variants, cells, texts, evaluation, dict(data.get("training") or {}),
                str(data.get("dtype", "fp32")), [tuple(c) for c in data.get("summary") or []],
                [tuple(p) for p in data.get("pairs") or []], [str(t) for t in data.get("paired") or []],
                str(data.get("intervals", "")),
                str(data.get("setup", "")), str(data.get("budget", "")), str(path), str(data.get("archive", "")))


# --- 1. the texts --------------------------------------------------------------------------------


def stdlib_docstrings(folder: Path) -> None:
    """One .txt per standard-library module: its docstrings (tests, IDLE, tkinter left out)."""
    from ropestretch.data.corpus import module_docstrings

    if folder.is_dir() and any(folder.iterdir()):
        return
    stdlib = Path(os.__file__).parent
    staging = folder.parent / f".{folder.name}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in ("site-packages", "test", "idlelib", "lib2to3", "tkinter", "turtledemo") or "tests" in rel.parts:
            continue
        text = module_docstrings(path)
        if text:
            (staging / ("_".join(rel.with_suffix("").parts) + ".txt")).write_text(text, encoding="utf-8")
    staging.rename(folder)


def _documents(path: Path, docs: list[str], what: str) -> None:
    """``docs`` as ``path``, one ``{"text": ...}`` per document; one already there that differs is
    refused, never overwritten."""
    text = "".join(json.dumps({"text": t}) + "\n" for t in docs)
    if path.exists():
        if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:
            raise UsageError(f"{path} is not {what} as the study reads it; move it aside")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, text)


def language_reference(path: Path) -> None:
    """Python's language reference (``pydoc_data`` topics), one document per topic."""
    from ropestretch.data.corpus import language_reference as topics

    _documents(path, topics(), "this Python's language reference")


def stdlib_code(path: Path) -> None:
    """Python's own standard-library sources (the first 60 modules over 20,000 characters): real
    code that ships with every Python."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    _documents(path, [f.read_text(encoding="utf-8", errors="replace") for f in files if f.stat().st_size > 20000][:60],
               "this Python's standard-library code")


# a built-in text: the name a plan gives it -> (where under <out>/data it is written, what writes it)
TEXTS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "stdlib-docstrings": ("train", stdlib_docstrings),
    "language-reference": ("eval.jsonl", language_reference),
    "stdlib-code": ("code.jsonl", stdlib_code)}


def generated_rows(plan: Plan, out: Path, role: str, spec: dict) -> Path:
    """Training rows generated by a source of :data:`ropestretch.data.training_rows.ROW_SOURCES`
    (``{rows: NAME, length, count, seed, <its options>}``) with the base model's tokenizer, as
    ``<out>/data/<role>.jsonl`` (made once; the same rows for every fine-tune that reads them)."""
    from transformers import AutoTokenizer

    from ropestretch.checkpoints import resolve_model
    from ropestretch.data.training_rows import make_rows

    path = out / "data" / f"{role}.jsonl"
    if path.is_file():
        return path
    options = {k: v for k, v in spec.items() if k not in ("rows", "length", "count", "seed")}
    if not {"length", "count"} <= set(spec):
        raise UsageError(f"{plan.source}: text {role!r}: generated rows need a length and a count")
    say(f"training rows {role}: {spec['count']} x {spec['length']} tokens ({spec['rows']})")
    rows = make_rows(spec["rows"], AutoTokenizer.from_pretrained(resolve_model(plan.model)), spec["length"],
                     spec["count"], spec.get("seed", 0), **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_file(plan: Plan, role: str) -> str | None:
    """Where the plan's text ``role`` lives: ``<out>/data/...`` for a built-in or generated one, else its path."""
    source = plan.texts.get(role)
    if source is None:
        return None
    if isinstance(source, dict):
        return f"<out>/data/{role}.jsonl"
    return f"<out>/data/{TEXTS[source][0]}" if source in TEXTS else str(source)


def text_path(plan: Plan, out: Path, role: str) -> Path | None:
    """The plan's text ``role`` (``train``, ``eval`` or any it names): a built-in source (:data:`TEXTS`)
    or generated training rows written under ``out`` on first use, or a path; None where the plan names none."""
    source = plan.texts.get(role)
    if source is None:
        return None
    if isinstance(source, dict):
        return generated_rows(plan, out, role, source)
    if source in TEXTS:
        name, write = TEXTS[source]
        write(out / "data" / name)
        return out / "data" / name
    return Path(source).expanduser()


# --- 2. the models -------------------------------------------------------------------------------


def model_path(plan: Plan, out: Path, variant: str, train: bool = True, progress: bool = False) -> Path | None:
    """The variant's checkpoint, made on first use (None for a fine-tune when ``train`` is off)."""
    from ropestretch.checkpoints import resolve_model

    variant = plan.checkpoint(variant)
    spec = plan.variants[variant]
    base = resolve_model(plan.model)
    folder = out / "models" / variant
    if not spec.get("scaling"):
        return base
    if (folder / "ropestretch.json").is_file():
        return folder
    if not plan.fine_tuned(variant):
        from ropestretch.rope import load_rope_config, scale
        from ropestretch.rope.export import apply_to_checkpoint

        say(f"apply {variant}: -> {plan.target}")
        return apply_to_checkpoint(base, folder, scale(load_rope_config(base), spec["scaling"], plan.target,
                                                       **spec.get("options", {})), command="apply", model=plan.model)
    if not train:
        return None
    from ropestretch.train import make_config, train as run_train

    settings = {**plan.training, **spec.get("training", {})}
    say(f"fine-tune {variant}: {spec['positions']} positions x {spec['scaling']}")
    run_train(make_config(model=plan.model, data=str(text_path(plan, out, spec.get("data", "train"))), out=str(folder),
                          target=plan.target, positions=spec["positions"], scaling=spec["scaling"], dtype=plan.dtype,
                          progress=progress, resume=(folder / "run.json").is_file(), **settings))
    return folder


def train_command(plan: Plan, variant: str) -> str:
    """The `ropestretch train` command a fine-tune equals."""
    spec = plan.variants[variant]
    settings = {**plan.training, **spec.get("training", {})}
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in settings.items()
             if k not in ("save_steps", "save_total_limit")]
    return (f"ropestretch train --model {plan.model} --data {text_file(plan, spec.get('data', 'train'))} --out "
            f"<out>/models/{variant} --positions "
            f"{spec['positions']} --scaling {spec['scaling']} --target {plan.target} --dtype {plan.dtype} "
            + " ".join(flags))


def model_command(plan: Plan, variant: str) -> str | None:
    """The command that makes a training-free variant's checkpoint (None for the base and the fine-tunes)."""
    spec = plan.variants[variant]
    if not spec.get("scaling") or plan.fine_tuned(variant) or "checkpoint" in spec:
        return None
    return f"ropestretch apply --model {plan.model} --scaling {spec['scaling']} --target {plan.target} " \
           f"--out <out>/models/{variant}"


# --- 3. the evaluations --------------------------------------------------------------------------


def eval_command(plan: Plan, cell: Cell) -> str:
    """The `ropestretch eval` command a cell equals for any variant (what the runner calls, with
    ``<out>/models/<variant>`` for the model: the base's is the plan's model itself)."""
    from ropestretch.eval.tasks import get_task

    task = get_task(cell.task)
    flags = []
    for name, value in cell.task_options().items():
        flags += [f"--{name.replace('_', '-')}", ",".join(f"{x:g}" for x in value) if isinstance(value, list)
                  else str(value)]
    if task.retrieval:
        flags += ["--scoring", plan.evaluation.get("scoring", task.scoring),
                  "--prompt", plan.evaluation.get("prompt", "auto")]
    text = [f"--text {text_file(plan, cell.text)}"] if plan.texts.get(cell.text) else []
    which = [task.suite, "--tasks", cell.task] if task.suite else [cell.task]  # a suite's task runs through it
    return " ".join(["ropestretch eval", *which, "--model <out>/models/<variant>", *text,
                     "--lengths", ",".join(map(str, cell.lengths)), *flags, "--samples", str(cell.samples),
                     "--seed", str(cell.seed),
                     f"--batch-size {plan.evaluation.get('batch_size', 1)} --dtype {plan.dtype}",
                     f"--out <out>/evals/<variant>/{cell.name}"])


def attention_flags(plan: Plan, variant: str) -> str:
    """The flags a variant with a training-free attention method adds to its cells' commands ("" for none)."""
    spec = plan.variants[variant]
    if spec.get("attention") in (None, "none"):
        return ""
    return " ".join([f"--attention {spec['attention']}"] + [f"--{k.replace('_', '-')} {v}" for k, v in
                                                           (spec.get("attention_options") or {}).items()])


def read_archive(plan: Plan, archive: Path) -> list[dict]:
    """The archived rows as ``{variant, cell, row}``. A row archived by a study script before the
    runner (``{variant, test, row}``) is placed in the plan's first cell that holds it (its variant,
    task or label, length and depth); one no cell holds is one line."""
    from ropestretch.eval.store import cell_key

    rows, places = [], None
    for number, r in enumerate(read_jsonl(archive), 1):
        if "cell" not in r:
            cell = r["row"]["cell"]
            # each plan cell's result cells, worked out once for the whole archive
            places = places or [(c, {cell_key(x) for x in c.cells()}) for c in plan.cells]
            home = next((c for c, keys in places if r["variant"] in c.variants and c.shown == r["test"]
                         and cell_key(cell) in keys), None)
            if home is None:
                raise UsageError(f"{archive}: row {number} ({r['variant']} {r['test']} {cell}) is in no cell of the plan")
            r = {"variant": r["variant"], "cell": home.name, "row": r["row"]}
        rows.append(r)
    return rows


def archived(plan: Plan, archive: Path) -> set:
    """(variant, cell name, result cell) of every archived row."""
    from ropestretch.eval.store import cell_key

    return {(r["variant"], r["cell"], cell_key(r["row"]["cell"])) for r in read_archive(plan, archive)}


def pending(plan: Plan, done: set) -> list[tuple[str, Cell]]:
    """(variant, cell) of every planned variant cell the archive (``done``: :func:`archived`) lacks
    a row of, in the plan's order."""
    from ropestretch.eval.store import cell_key

    return [(v, c) for c in plan.cells for v in c.variants
            if any((v, c.name, cell_key(x)) not in done for x in c.cells())]


def evaluate(plan: Plan, out: Path, cell: Cell, done: set, train: bool = True, progress: bool = False) -> None:
    """The cell on each of its variants, into ``<out>/runs/<variant>/<cell>`` (the depths the
    archive lacks only, in a folder of their own)."""
    from ropestretch.eval import run
    from ropestretch.eval.store import cell_key

    from ropestretch.eval import read_results

    for variant in cell.variants:
        todo = [c for c in cell.cells() if (variant, cell.name, cell_key(c)) not in done]
        started = out / "runs" / variant / cell.name
        if todo and started.is_dir():  # a run folder of the whole cell: resumed as it was begun, or, done, skipped
            held = {cell_key(r["cell"]) for r in read_results(started)}
            todo = cell.cells() if any(cell_key(c) not in held for c in todo) else []
        if not todo:
            continue
        folder = model_path(plan, out, variant, train, progress)
        if folder is None:
            continue
        spec = plan.variants[variant]
        options, lengths, name = cell.task_options(), list(cell.lengths), cell.name
        if len(todo) < len(cell.cells()):  # the rest of a cell the archive holds in part: in a folder of its own
            lengths = sorted({c["length"] for c in todo})
            if cell.depths:
                options["depths"] = sorted({c["depth"] for c in todo})
            name = f"{cell.name}~" + ",".join(f"{d:g}" for d in options.get("depths", lengths))
        say(f"eval {variant} {name}")
        run(cell.task, str(folder), out / "runs" / variant / name, lengths=lengths, samples=cell.samples,
            seed=cell.seed, text=str(text_path(plan, out, cell.text)) if plan.texts.get(cell.text) else None,
            scoring=plan.evaluation.get("scoring"), prompt=plan.evaluation.get("prompt", "auto"),
            batch_size=plan.evaluation.get("batch_size", 1), dtype=plan.dtype, attention=spec.get("attention"),
            attention_options=spec.get("attention_options"), progress=progress, **options)


CHECKPOINT_FIELDS = ("model", "target", "dtype", "texts", "training")  # what a folder's checkpoints were made with


def claim_out(plan: Plan, out: Path) -> None:
    """Record in ``<out>/study.json`` what the folder's checkpoints and texts are made with (the plan's
    model, target, dtype, texts, training and each variant's settings); a folder made under other
    settings (another plan, or its quick form) is refused in one line, never reused or overwritten.
    Cells and variants may be added to a plan between runs."""
    path = out / "study.json"
    from ropestretch.eval.registry import recorded_path

    mine = {"plan": plan.name, **{k: getattr(plan, k) for k in CHECKPOINT_FIELDS}, "variants": plan.variants}
    mine["model"] = recorded_path(plan.model, out)  # a local folder relative to --out: the record moves with it
    if path.is_file():
        try:
            held = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(held, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{path} is not a study record; choose a new --out") from None
        changed = [k for k in CHECKPOINT_FIELDS if k in held and held[k] != json.loads(json.dumps(mine[k]))]
        changed += [f"variant {v}" for v, spec in (held.get("variants") or {}).items()
                    if v in plan.variants and json.loads(json.dumps(plan.variants[v])) != spec]
        if changed:
            raise UsageError(f"{out} holds a study made with other settings ({', '.join(changed)}: plan "
                             f"{held.get('plan')!r}); choose a new --out")
        mine["variants"] = {**(held.get("variants") or {}), **plan.variants}
    write_whole(path, json.dumps(mine, indent=2) + "\n")


def run_study(plan: Plan, out: str | os.PathLike, archive: Path | None = None, train: bool = True,
              everything: bool = False, progress: bool = False) -> None:
    """Every cell in the plan's order; a cell whose rows ``archive`` holds is skipped, and a variant
    marked ``optional`` runs only with ``everything``."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    claim_out(plan, out)
    started = time.time()
    done = archived(plan, archive) if archive is not None else set()
    for cell in plan.cells:
        chosen = tuple(v for v in cell.variants if everything or not plan.variants[v].get("optional"))
        if chosen:
            evaluate(plan, out, replace(cell, variants=chosen), done, train, progress)
    say(f"all done in {time.time() - started:.0f} s")


# --- 4. the report -------------------------------------------------------------------------------


def collect(plan: Plan, out: Path, archive: Path) -> list[dict]:
    """Every finished row as {variant, cell, row}: the archive's, and the run folders' new ones
    (``<out>/runs`` and the script-era ``<out>/evals``); the archive is rewritten with the union."""
    from ropestretch.eval import read_results
    from ropestretch.eval.store import cell_key

    rows = read_archive(plan, archive)
    seen = {(r["variant"], r["cell"], cell_key(r["row"]["cell"])) for r in rows}
    for root in ("evals", "runs"):
        for variant in plan.order():
            for folder in sorted((out / root / variant).glob("*")):
                name = folder.name.split("~")[0]  # a cell's remaining depths, run on their own
                for row in read_results(folder):
                    key = (variant, name, cell_key(row["cell"]))
                    if key not in seen:
                        seen.add(key)
                        rows.append({"variant": variant, "cell": name, "row": row})
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_whole(archive, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def relative_to_out(value, out: Path, named: dict[str, str] | None = None):
    """``value`` with every path under ``out`` written as ``<out>/...``, and each path in ``named``
    (absolute -> as the plan writes it, e.g. a local base model) as its name: a record in docs/ names
    no folder of the machine it was made on."""
    roots = {str(out): "<out>", str(out.resolve()): "<out>", **(named or {})}  # resolved once, not per value

    def portable(v):
        if isinstance(v, dict):
            return {k: portable(x) for k, x in v.items()}
        if isinstance(v, list):
            return [portable(x) for x in v]
        if isinstance(v, str) and os.path.isabs(v):
            for root, name in roots.items():
                if v == root or v.startswith(root + os.sep):
                    return name + v[len(root):]
        return v

    return portable(value)


def training_records(plan: Plan, out: Path, docs: Path) -> dict:
    """Each fine-tune's ropestretch.json (kept in docs/, as the checkpoints are not), paths as
    ``<out>/...``. The first record of a variant stays its record; a checkpoint rebuilt later (its
    folder lost with a machine) is kept beside it under ``rebuilt``, for the report to compare."""
    path = docs / "training.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    relative = not Path(plan.model).expanduser().is_absolute()  # a local base named from the checkout
    for variant in plan.order():
        meta = out / "models" / variant / "ropestretch.json"
        if not plan.fine_tuned(variant) or not meta.is_file():
            continue
        record = json.loads(meta.read_text())
        trained_from = (record.get("training") or {}).get("model")
        named = {}  # a local base as the plan names it, from whichever checkout it was trained in
        if relative and isinstance(trained_from, str) and trained_from.endswith(os.sep + os.path.normpath(plan.model)):
            named = {trained_from: plan.model}
        record = relative_to_out(record, out, named)
        if variant not in records:
            records[variant] = record
        elif record != records[variant]:
            records.setdefault("rebuilt", {})[variant] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(records, indent=2) + "\n")
    return records


def rebuilt_section(rows: list[dict], records: dict) -> list[str]:
    """Each rebuilt fine-tune against the one first measured: its final training loss, and its rerun of
    an archived cell (``-repro``) prompt by prompt (the same prompts by fingerprint, the same answers, the
    largest difference in answer log-likelihood)."""
    from ropestretch.report import markdown_table

    lines = []
    for variant, record in records.get("rebuilt", {}).items():
        first = records.get(variant, {})
        reruns = [r for r in rows if r["variant"] == variant and r["cell"].endswith("-repro")]
        archived_samples = {s["prompt"]: s for r in rows if r["variant"] == variant
                            and r["cell"] == reruns[0]["cell"].rsplit("-", 1)[0] for s in r["row"]["samples"]} if reruns else {}
        pairs = [(archived_samples[s["prompt"]], s) for r in reruns for s in r["row"]["samples"]
                 if s["prompt"] in archived_samples]
        same = sum(a["correct"] == b["correct"] for a, b in pairs)
        worst = max((abs(a["logprob"] - b["logprob"]) for a, b in pairs), default=float("nan"))
        lines.append([variant, f"{first.get('final_loss', float('nan')):.6f}", f"{record.get('final_loss', float('nan')):.6f}",
                      f"{record.get('train_seconds', 0):.0f}", reruns[0]["cell"] if reruns else "-",
                      f"{same} of {len(pairs)}" if pairs else "-", f"{worst:.2g}" if pairs else "-"])
    if not lines:
        return []
    return ["## Rebuilt checkpoints", "",
            "A fine-tune whose checkpoint was lost with its machine is rebuilt by the same command (same rows, "
            "settings, seed and dtype) and first reruns an archived cell; its rows count only if they reproduce "
            "the archived ones:", "",
            markdown_table(["variant", "final loss, first", "final loss, rebuilt", "rebuild seconds", "rerun cell",
                            "same answer", "largest answer log-lik difference (nats)"], lines), ""]


def summary(plan: Plan, runs: list[dict]) -> list[str]:
    """One row per variant over the plan's summary columns ``(what, length, depths, heading)``: a
    task's rate (or perplexity) with its 95% interval and n; ``TASK:loglik`` its answer's
    log-likelihood per token; ``TASK:ratio`` a perplexity task's ratio to the base's over the same
    windows; then the paired differences of the plan's pairs on every retrieval task (all depths
    and 25-75%)."""
    from ropestretch.compare import BAND_TEXT, differences, pair_perplexity, pair_runs
    from ropestretch.eval.tasks import TASKS, get_task
    from ropestretch.report import (loglik_difference, loglik_text, markdown_table, perplexity_text, rate_text,
                                    ratio_text, rows_at)

    by_label = {r["label"]: r for r in runs}
    base = plan.order()[0]

    def value(run: dict, what: str, length: int, depths) -> str | None:
        name, _, view = what.partition(":")
        task = get_task(plan.task_of(name))
        if view == "ratio":  # over the same windows (their fingerprints agree) under the variant and the base
            paired = pair_perplexity(run, by_label[base], name)[0] if run["label"] != base and base in by_label else []
            ratio = next((d for d in paired if d["length"] == length), None)
            return ratio and ratio_text(ratio, with_n=True)
        rows = run["results"].get(name, [])
        rows = [r for r in rows if r["cell"]["length"] == length] if not task.retrieval else rows_at(
            rows, length, tuple(depths) if depths else None, task.place)
        if not rows:
            return None
        return loglik_text(rows) if view == "loglik" else rate_text(rows) if task.retrieval else perplexity_text(rows)

    table = {r["label"]: {c[3]: value(r, *c[:3]) for c in plan.summary} for r in runs}
    columns = [c[3] for c in plan.summary if any(table[r][c[3]] for r in table)]
    if not columns:
        return []
    parts = [markdown_table(["variant"] + columns, [[label] + [row[c] or "-" for c in columns]
                                                    for label, row in table.items()]), ""]
    if plan.intervals:
        parts += [plan.intervals.strip()[0].upper() + plan.intervals.strip()[1:], ""]
    paired = []
    for task in [get_task(t) for t in plan.paired] if plan.paired else [t for t in TASKS.values() if t.retrieval]:
        for a, b in plan.pairs:
            if a not in by_label or b not in by_label or not by_label[a]["results"].get(task.name):
                continue
            pairing = pair_runs(by_label[a], by_label[b], task.name)
            if isinstance(pairing, str):
                continue
            paired += [[f"{a} - {b}", task.name, str(d["length"]), BAND_TEXT[d["band"]], f"{d['n']} ({d['units']})",
                        f"{100 * (d['acc_a'] - d['acc_b']):+.0f} points", f"{d['only_a']} / {d['only_b']}",
                        f"{d['p']:.2g}", loglik_difference(d, 2)]
                       for d in differences(pairing) if d["band"] in ("all", "middle")]
    if paired:
        parts += ["Paired on the same prompts (all depths, and depths 25-75%):", "", markdown_table(
            ["difference", "test", "length", "depths", "n pairs (units)", "accuracy", "right only in each",
             "McNemar p", "answer log-lik/token [95% paired interval]"], paired), ""]
    return parts


def write_readme(readme: Path, name: str, lines: list[str]) -> None:
    """Replace the README's block for study ``name`` (between its markers) with ``lines``."""
    text = readme.read_text(encoding="utf-8")
    begin, end = (m.format(name=name) for m in README_MARKERS)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UsageError(f"{readme} has no study block: one line {begin} and, after it, one line {end}")
    head, rest = text.split(begin)
    tail = rest.split(end)[1]
    write_whole(readme, head + "\n".join([begin] + lines + [end]) + tail)


def conclusion(docs: Path, name: str = "conclusion.md") -> list[str]:
    """The hand-written paragraph on what the data support (``<docs>/conclusion.md``) for the report,
    and its few lines for the README (``summary.md``); none until one is written."""
    path = docs / name
    return path.read_text(encoding="utf-8").strip().splitlines() + [""] if path.is_file() else []


def study_runs(plan: Plan, rows: list[dict], records: dict) -> list[dict]:
    """The rows as one report run per variant (a rerun cell, ``-repro``, left out)."""
    runs = []
    for variant in plan.order():
        mine = [r for r in rows if r["variant"] == variant and not r["cell"].endswith("-repro")]
        if not mine:
            continue
        results: dict = {}
        for r in mine:  # a task on another text under its cell's label (ppl-code), apart from the task
            results.setdefault(plan.shown_of(r["cell"], r["row"]["test"]), []).append(r["row"])
        runs.append({"label": variant, "args": {t: {"scoring": plan.evaluation.get("scoring", "generate")}
                                                for t in results}, "results": results,
                     "meta": records.get(variant, {})})
    return runs


def write_study_report(plan: Plan, out: str | os.PathLike, docs: str | os.PathLike,
                       readme: str | os.PathLike | None = None) -> Path:
    """``<docs>/report.md`` from every row measured so far (and, with ``readme``, its study block)."""
    from ropestretch.report import markdown_table, render

    out, docs = Path(out).expanduser(), Path(docs)
    rows = collect(plan, out, docs / "results.jsonl")
    records = training_records(plan, out, docs)
    runs = study_runs(plan, rows, records)
    seconds: dict = {}
    for r in rows:
        seconds[(r["variant"], r["cell"])] = seconds.get((r["variant"], r["cell"]), 0.0) + r["row"].get("seconds", 0.0)
    done = set(seconds)
    planned = [(v, c.name) for c in plan.cells for v in c.variants]
    command = f"ropestretch study {plan.source} --out <out>"
    parts = [f"# ropestretch report: {plan.title}", "",
             f"Written by `{command} --report {docs}` from every row measured so far (`results.jsonl` here keeps "
             "them all). Variants: " + ", ".join(f"`{r['label']}`" for r in runs) + ".", ""]
    head, said = summary(plan, runs), conclusion(docs)
    parts += (["## Summary", ""] + head if head else []) + (["## What the data support", ""] + said if said else [])
    parts += ["## Setup", "", plan.setup.strip(), "",
              f"Each model, reproducible as (`<out>/data/...` is written by `{command} --prepare`; the base is "
              f"`--model {plan.model}` itself):", "", "```bash"]
    parts += [c for c in (model_command(plan, v) for v in plan.order()) if c]
    parts += [train_command(plan, v) for v in plan.order() if plan.fine_tuned(v) and "checkpoint" not in plan.variants[v]]
    parts += ["```", "", "Each evaluation cell that has run, as the command it equals for any variant (the study "
              f"runs `ropestretch.eval.run` with these arguments; for the base, `--model {plan.model}`; into a fresh "
              "`<out>`, as a run folder refuses other arguments than its own):", "", "```bash",
              *dict.fromkeys(eval_command(plan, c) for c in plan.cells if any((v, c.name) in done for v in c.variants)),
              "```", ""]
    methods = [f"`{v}`: `--model " + (f"<out>/models/{plan.checkpoint(v)}" if plan.variants[plan.checkpoint(v)].get(
        "scaling") else plan.model) + f" {attention_flags(plan, v)}`" for v in plan.order() if attention_flags(plan, v)]
    if methods:
        parts += ["A variant with a training-free attention method runs those commands on another checkpoint, "
                  "with its flags: " + "; ".join(methods) + ".", ""]
    if plan.budget:
        parts += ["## Budget", "", plan.budget.strip(), ""]
    parts += ["## Time of each part", "", markdown_table(["part", "seconds"],
              [[f"fine-tune {v}", f"{records[v]['train_seconds']:.0f}"] for v in plan.order() if v in records
               and plan.fine_tuned(v)] + [[f"eval {v} {c}", f"{s:.0f}"] for (v, c), s in seconds.items()]), ""]
    order = [v for v in plan.order() if any(v in c.variants for c in plan.cells)]
    parts += ["## Planned cells, most telling first", "",
              f"{sum(p in done for p in planned)} of {len(planned)} variant cells have run (a cell missing from the "
              "tables below has not). A row per cell, in the order they first run (`x`: done, `.`: to run):", "",
              markdown_table(["cell"] + order, [[name] + [("x" if (v, name) in done else ".") if (v, name) in planned
                                                          else "" for v in order]
                                                for name in dict.fromkeys(c for _, c in planned)]), ""]
    parts += rebuilt_section(rows, records)
    parts += render(runs, docs)
    if readme is not None:
        short = conclusion(docs, "summary.md") or said  # the README's few lines; the report has the whole reading
        table = head[:next((i for i, line in enumerate(head) if line.startswith("Paired")), len(head))]
        write_readme(Path(readme), plan.name, table + [
            f"Written {time.strftime('%Y-%m-%d')} by `{command} --report {docs} --readme {readme}` from {len(rows)} "
            "result rows.", ""] + short)
    path = docs / "report.md"
    write_whole(path, "\n".join(parts) + "\n")
    return path
