"""Studies as plans (ropestretch.study): the SmolLM2 studies' archives read through the runner, the
report's bookkeeping, the commands it prints, bad plans, and a small plan end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
PLAN_SMOLLM2 = ROOT / "examples" / "studies" / "smollm2.yaml"
DOCS_SMOLLM2 = ROOT / "docs" / "smollm2"


def _legacy(variant, test, cell, **row):
    """A row as the study scripts before the runner archived it: keyed by test, not by cell."""
    return {"variant": variant, "test": test, "row": {"test": "ppl" if test.startswith("ppl") else test,
                                                      "cell": cell, **row}}


def test_the_first_smollm2_study_is_a_plan_whose_archive_reproduces_its_table(tmp_path):
    """The first SmolLM2 study (once benchmarks/real_model.py) as a plan: every archived row is in one
    of its cells, none is left to run but the ones never measured, and the report written from the
    archive alone (no run folder) carries the figures the script's report had."""
    from ropestretch.study import archived, load_plan, pending, read_archive, write_study_report

    plan = load_plan(PLAN_SMOLLM2)
    rows = read_archive(plan, DOCS_SMOLLM2 / "results.jsonl")
    planned = {(v, c.name) for c in plan.cells for v in c.variants}
    assert len(rows) == 239 and {(r["variant"], r["cell"]) for r in rows} <= planned
    left = {(v, c.name) for v, c in pending(plan, archived(plan, DOCS_SMOLLM2 / "results.jsonl"))}
    assert len(left) == 12 and ("cream-yarn", "passkey@16384x1s0@25,50,75") not in left
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("results.jsonl", "training.json"):
        (docs / name).write_text((DOCS_SMOLLM2 / name).read_text())
    text = write_study_report(plan, tmp_path / "out", docs).read_text()
    # the script's summary: yarn 3/7 and cream-yarn 7/7 passkeys at 16K, perplexity on prose and code
    assert "| yarn | 12.52 | 9.03 | 11.08 | 6.10 | 100% [57-100], n = 5 | 43% [16-75], n = 7 |" in text
    assert "| cream-yarn | 11.11 | 8.41 | - | 5.71 | 100% [57-100], n = 5 | 100% [65-100], n = 7 |" in text
    assert "| plain-yarn-heldout | 10.71 | 8.12 | 9.98 | 5.53 |" in text


def test_rows_archived_before_the_runner_are_placed_in_the_plan_cells(tmp_path):
    """A row keyed by test (the scripts' archive) goes into the plan's first cell holding its variant,
    task or label, length and depth; code perplexity stays apart from prose; a row no cell holds is one line."""
    from ropestretch.errors import UsageError
    from ropestretch.study import load_plan, read_archive, study_runs

    plan = load_plan(PLAN_SMOLLM2)
    archive = tmp_path / "results.jsonl"
    legacy = [_legacy("yarn", "passkey", {"length": 16384, "depth": 37.5}, correct=1, n=1),
              _legacy("yarn", "passkey", {"length": 16384, "depth": 25.0}, correct=0, n=1),
              _legacy("yarn", "ppl", {"length": 4096}, ppl=12.5),
              _legacy("yarn", "ppl-code", {"length": 4096}, ppl=6.2)]
    archive.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    rows = read_archive(plan, archive)
    assert [r["cell"] for r in rows] == ["passkey@16384x1s0@37.5,62.5", "passkey@16384x1s0@25,50,75", "ppl@4096x1s0",
                                         "ppl-code@4096x1s0"]
    runs = study_runs(plan, rows, {})
    assert [r["ppl"] for r in runs[0]["results"]["ppl"]] == [12.5]
    assert [r["ppl"] for r in runs[0]["results"]["ppl-code"]] == [6.2]
    archive.write_text(json.dumps(_legacy("yarn", "needle", {"length": 8192, "depth": 0.0}, correct=1, n=1)) + "\n")
    with pytest.raises(UsageError, match="row 1 .* is in no cell of the plan"):
        read_archive(plan, archive)


def test_the_heldout_recipe_has_no_passkey_rows_and_the_same_budget():
    from ropestretch.study import load_plan

    plan = load_plan(PLAN_SMOLLM2)
    full, held = plan.texts["train"], plan.texts["heldout"]
    assert "passkey" in full["mix"] and "passkey" not in held["mix"]
    assert {k: full[k] for k in ("rows", "length", "count", "seed")} == {k: held[k] for k in ("rows", "length", "count", "seed")}
    assert full["count"] == plan.training["steps"] * plan.training["batch_size"]  # one pass over the rows
    assert {v for v, spec in plan.variants.items() if spec.get("data") == "heldout"} == {
        "cream-yarn-heldout", "pose-yarn-heldout", "plain-yarn-heldout"}


PLAN_8K = ROOT / "examples" / "studies" / "smollm2-8k.yaml"
DOCS_8K = ROOT / "docs" / "smollm2-8k"


@pytest.fixture(scope="module")
def plan():
    from ropestretch.study import load_plan

    return load_plan(PLAN_8K)


def _needle_row(depth, right, logprobs, seed=0):
    samples = [{"i": i, "correct": r, "logprob": lp, "tokens": 2, "prompt": f"p{seed}-{depth}-{i}"}
               for i, (r, lp) in enumerate(zip(right, logprobs))]
    return {"test": "needle", "cell": {"length": 16384, "depth": depth}, "accuracy": sum(right) / len(right),
            "correct": sum(right), "n": len(right), "seed": seed, "samples": samples}


def test_study_8k_summary_pairs_the_same_prompts_and_fills_the_readme_block(plan, tmp_path):
    """The summary's rates and paired middle-depth differences, checked against counts made here, and
    the README block replaced in place (the rest of the README untouched), or refused without markers."""
    cream = [_needle_row(d, [True, True, d != 50.0], [-1.0, -1.0, -3.0]) for d in (0.0, 25.0, 50.0, 75.0, 100.0)]
    pose = [_needle_row(d, [d == 100.0, False, False], [-2.0, -2.0, -2.0]) for d in (0.0, 25.0, 50.0, 75.0, 100.0)]
    prints = ["w0", "w1", "w2", "w3"]
    ppl = {"test": "ppl", "cell": {"length": 4096}, "ppl": 10.0, "windows": [2.0, 2.4, 2.2, 2.6], "prints": prints}
    base_ppl = {"test": "ppl", "cell": {"length": 4096}, "ppl": 9.0, "windows": [1.9, 2.3, 2.0, 2.5], "prints": prints}
    runs = [{"label": "base", "args": {}, "meta": {}, "results": {"ppl": [base_ppl]}}]
    runs += [{"label": label, "args": {"needle": {"scoring": "generate"}}, "meta": {},
              "results": {"needle": rows, **({"ppl": [ppl]} if label == "cream-yarn" else {})}}
             for label, rows in (("cream-yarn", cream), ("pose-yarn", pose))]
    other_windows = {**ppl, "prints": ["w0", "w1", "w2", "x3"]}  # one window not the base's: paired over 3
    from ropestretch.study import README_MARKERS, summary, write_readme

    lines = summary(plan, runs + [{"label": "other", "args": {}, "meta": {}, "results": {"ppl": [other_windows]}}])
    table = "\n".join(lines)
    # perplexity against the base's on the same windows: exp of the paired t interval of the NLL differences
    diffs = np.array(ppl["windows"]) - np.array(base_ppl["windows"])
    half = stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2
    ratio = f"x{math.exp(diffs.mean()):.3f} [{math.exp(diffs.mean() - half):.3f}-{math.exp(diffs.mean() + half):.3f}], n = 4"
    assert "| base | 8.80 [" in table and "n = 4 | - | - | - | - |" in table
    # cream: middle depths 25/50/75 x 3 samples, 8 right (50% misses one); pose: 1 of 15, at 100%
    assert "| cream-yarn | 9.97 [" in table and ratio in table
    three = np.array(ppl["windows"][:3]) - np.array(base_ppl["windows"][:3])
    assert f"| other | 9.97 [6.61-15.04], n = 4 | x{math.exp(three.mean()):.3f} [" in table and "], n = 3 |" in table
    assert "93% [70-99], n = 15" in table and "89% [57-98], n = 9" in table
    assert "| pose-yarn | - | - | 7% [1-30], n = 15 | 0% [0-30], n = 9 | -1.00 [-1.00, -1.00], n = 15 |" in table
    # paired, middle band: 9 pairs over 3 draws, cream right alone in 8, pose in 0; log-lik (-1-1-3)/3/2 - (-1)
    paired = table[table.index("Paired on the same prompts (all depths, and depths 25-75%):"):]
    [pair] = [x for x in paired.splitlines() if x.startswith("| cream-yarn - pose-yarn | needle | 16384 | 25-75%")]
    cells = [c.strip() for c in pair.strip("|").split("|")]
    assert cells[4:7] == ["9 (3)", "+89 points", "8 / 0"]
    assert float(cells[7]) == pytest.approx(2 * 0.5 ** 8, rel=0.01)  # McNemar exact, 8 discordant one way
    assert cells[8].startswith("+0.17 [") and cells[8].endswith("(t)")  # 3 draws: Student's t, marked
    [whole] = [x for x in paired.splitlines() if x.startswith("| cream-yarn - pose-yarn | needle | 16384 | all")]
    assert "| 15 (3) | +87 points | 13 / 0 |" in whole  # every depth: 14 right against 1, the one at 100% shared
    readme = tmp_path / "README.md"
    begin, end = (m.format(name=plan.name) for m in README_MARKERS)
    readme.write_text(f"# title\n\nbefore\n{begin}\nold table\n{end}\nafter\n")
    write_readme(readme, plan.name, ["new table"])
    assert readme.read_text() == f"# title\n\nbefore\n{begin}\nnew table\n{end}\nafter\n"
    readme.write_text("# no block\n")
    with pytest.raises(Exception, match="has no study block"):
        write_readme(readme, plan.name, ["new table"])
    assert readme.read_text() == "# no block\n"


def test_study_8k_commands_are_ones_the_cli_takes_for_the_same_cells(plan, tmp_path):
    """The report's commands parse with the CLI's own parser into each cell's settings, and the
    evaluation text they read (`--prepare`'s eval.jsonl) is the study's documents, in order."""
    import shlex

    from ropestretch.cli import build_parser
    from ropestretch.data.corpus import language_reference, load_records
    from ropestretch.study import eval_command, model_command, text_path, train_command

    path = text_path(plan, tmp_path, "eval")
    read = [t for t in load_records(path)["text"] if isinstance(t, str) and t.strip()]  # as `ropestretch eval` reads
    assert read == language_reference() and len(read) > 50
    assert text_path(plan, tmp_path, "eval") == path  # the same text again: kept as it is
    path.write_text('{"text": "a file of the user\'s"}\n')
    with pytest.raises(Exception, match="move it aside"):
        text_path(plan, tmp_path, "eval")
    assert path.read_text() == '{"text": "a file of the user\'s"}\n'  # not overwritten
    parser = build_parser()

    def parse(command: str):
        assert command.startswith("ropestretch ")
        return parser.parse_args(shlex.split(command.replace("<out>", str(tmp_path)).replace("<variant>", "v"))[1:])

    from ropestretch.eval.tasks import get_task

    for cell in plan.cells:
        args = parse(eval_command(plan, cell))
        suite = get_task(cell.task).suite
        assert (args.test, args.lengths, args.samples, args.seed, args.dtype) == (
            suite or cell.task, list(cell.lengths), cell.samples, cell.seed, "fp32")
        assert suite is None or args.tasks == cell.task
        assert args.text == str(text_path(plan, tmp_path, cell.text) if cell.text != "eval" else path)
        assert args.out.endswith(f"/evals/v/{cell.name}")
        if get_task(cell.task).retrieval:
            assert (args.scoring, args.prompt) == ("generate", "chat")
        if cell.depths:
            assert args.depths == list(cell.depths)
    for variant in [v for v in plan.order() if plan.fine_tuned(v)]:
        args = parse(train_command(plan, variant))
        spec = plan.variants[variant]
        assert (args.positions, args.scaling, str(args.target)) == (spec["positions"], spec["scaling"], str(plan.target))
    args = parse(model_command(plan, "yarn"))
    assert (args.scaling, str(args.target)) == ("yarn", str(plan.target)) and model_command(plan, "base") is None


def test_the_archived_rows_stay_valid_through_the_runner(plan):
    """Every row of the 8K study's archive belongs to a cell of its plan (the script's cells, now data,
    in the same order), and the runner has none of them left to run."""
    from ropestretch.study import archived, pending

    done = archived(plan, DOCS_8K / "results.jsonl")
    planned = {(v, c.name) for c in plan.cells for v in c.variants}
    assert {(v, name) for v, name, _ in done} <= planned
    assert len(done) > 100
    from ropestretch.eval.store import cell_key

    left = {(v, c.name) for v, c in pending(plan, done)}
    complete = {(v, c.name) for c in plan.cells for v in c.variants
                if all((v, c.name, cell_key(x)) in done for x in c.cells())}
    assert complete and not complete & left and len(left) + len(complete) == len(planned)
    assert [c.name for c in plan.cells[:3]] == ["ppl@4096x4s0", "passkey@4096x2s0", "needle@16384x2s0"]


def test_study_8k_report_carries_the_written_conclusion_into_the_report_and_the_readme(plan, tmp_path):
    """The report, written from the real archive into a scratch folder: the hand-written paragraph on
    what the data support follows the summary, in the report and in the README block, and is left out
    (no empty heading) until it is written; the archive's rows all survive the rewrite."""
    import shutil

    from ropestretch.study import README_MARKERS, write_study_report

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(DOCS_8K / "results.jsonl", docs / "results.jsonl")
    rows = (docs / "results.jsonl").read_text()
    begin, end = (m.format(name=plan.name) for m in README_MARKERS)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{begin}\nold\n{end}\nafter\n")
    write_study_report(plan, tmp_path / "out", docs, readme)
    text = (docs / "report.md").read_text()
    assert "## Summary" in text and "## What the data support" not in text
    (docs / "conclusion.md").write_text("The data support X and not Y.\n")
    write_study_report(plan, tmp_path / "out", docs, readme)
    text = (docs / "report.md").read_text()
    assert text.index("## Summary") < text.index("## What the data support\n\nThe data support X and not Y.\n") \
        < text.index("## Setup")
    block = readme.read_text().split(begin)[1].split(end)[0]
    assert block.index("| variant |") < block.index("Written ") < block.index("The data support X and not Y.")
    assert readme.read_text().endswith(f"{end}\nafter\n")
    assert (docs / "results.jsonl").read_text() == rows
    (docs / "summary.md").write_text("In short: X.\n")  # the README's few lines; the report keeps the paragraph
    write_study_report(plan, tmp_path / "out", docs, readme)
    block = readme.read_text().split(begin)[1].split(end)[0]
    assert "In short: X." in block and "The data support X and not Y." not in block
    assert "The data support X and not Y." in (docs / "report.md").read_text()


def _absolute_paths(value):
    if isinstance(value, dict):
        return [p for v in value.values() for p in _absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _absolute_paths(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def test_records_in_docs_name_no_folder_of_the_machine_they_were_made_on():
    """Every JSON record under docs/ names the study's folders as <out>/..., never a machine's path."""
    docs = ROOT / "docs"
    found = []
    for path in sorted(docs.rglob("*.json")) + sorted(docs.rglob("*.jsonl")):
        lines = [path.read_text()] if path.suffix == ".json" else path.read_text().splitlines()
        found += [(path.name, p) for line in lines if line.strip() for p in _absolute_paths(json.loads(line))]
    assert not found, found[:5]


def test_study_8k_training_records_are_relative_and_a_rebuilt_checkpoint_is_kept_beside_the_first(plan, tmp_path):
    from ropestretch.study import rebuilt_section, training_records

    out, docs = tmp_path / "out", tmp_path / "docs"
    meta = out / "models" / "cream-yarn" / "ropestretch.json"
    meta.parent.mkdir(parents=True)
    docs.mkdir()
    first = {"final_loss": 2.5, "training": {"data": str(out / "data" / "train"), "out": str(meta.parent), "lr": 1e-4}}
    meta.write_text(json.dumps(first))
    records = training_records(plan, out, docs)
    assert records["cream-yarn"]["training"] == {"data": "<out>/data/train", "out": "<out>/models/cream-yarn", "lr": 1e-4}
    assert "rebuilt" not in records and training_records(plan, out, docs) == records  # the same checkpoint again
    meta.write_text(json.dumps({**first, "final_loss": 2.5001}))  # rebuilt on another machine
    records = training_records(plan, out, docs)
    assert records["cream-yarn"]["final_loss"] == 2.5 and records["rebuilt"]["cream-yarn"]["final_loss"] == 2.5001
    # the rebuilt one's rerun of an archived cell, prompt by prompt: one answer differs, log-liks by up to 0.3
    archived = {"variant": "cream-yarn", "cell": "passkey@4096x2s0", "row": {"samples": [
        {"prompt": "a", "correct": True, "logprob": -1.0}, {"prompt": "b", "correct": True, "logprob": -2.0}]}}
    rerun = {"variant": "cream-yarn", "cell": "passkey@4096x2s0-repro", "row": {"samples": [
        {"prompt": "a", "correct": True, "logprob": -1.1}, {"prompt": "b", "correct": False, "logprob": -2.3}]}}
    section = "\n".join(rebuilt_section([archived, rerun], records))
    assert "| cream-yarn | 2.500000 | 2.500100 | 0 | passkey@4096x2s0-repro | 1 of 2 | 0.3 |" in section
    assert not rebuilt_section([archived], {"cream-yarn": first})


def test_a_local_base_model_is_recorded_as_the_plan_names_it(tmp_path, monkeypatch):
    """The demo's base is a folder of the checkout (``models/tiny-llama-256``): training writes its
    absolute path, and the record in docs/ names it as the plan does."""
    from ropestretch.study import load_plan, training_records

    monkeypatch.chdir(ROOT)
    plan = load_plan(ROOT / "examples" / "studies" / "demo.yaml")
    out, docs = tmp_path / "out", tmp_path / "docs"
    meta = out / "models" / "cream-yarn" / "ropestretch.json"
    meta.parent.mkdir(parents=True)
    base = tmp_path / "another-checkout" / "models" / "tiny-llama-256"  # trained in another worktree
    meta.write_text(json.dumps({"training": {"model": str(base), "config": str(base / "config.json"),
                                             "out": str(meta.parent)}}))
    assert training_records(plan, out, docs)["cream-yarn"]["training"] == {
        "model": "models/tiny-llama-256", "config": "models/tiny-llama-256/config.json",
        "out": "<out>/models/cream-yarn"}


@pytest.mark.parametrize("text, fragment", [
    ("name: x\n", "the plan has no 'model'"),
    ("name: x\nmodel: m\ntarget: 8\nvariants: {a: {}}\ncells: [{task: nope, variants: [a], length: 4, samples: 1}]\n",
     "unknown evaluation task 'nope'"),
    ("name: x\nmodel: m\ntarget: 8\nvariants: {a: {}}\ncells: [{task: passkey, variants: [b], length: 4, samples: 1}]\n",
     "unknown variant 'b'"),
    ("name: x\nmodel: m\ntarget: 8\nvariants: {a: {}}\ncells: [{task: passkey, variants: [a]}]\n",
     "needs task, variants, length and samples"),
    ("name: x\nmodel: m\ntarget: 8\nvariants: {a: {}}\ncells: [{task: ppl, variants: [a], length: 4, samples: 1},"
     " {task: ppl, variants: [a], length: 4, samples: 1}]\n", "two cells share the run folder a/ppl@4x1s0"),
    ("[1, 2]\n", "must hold a mapping"),
])
def test_a_bad_plan_is_one_line(tmp_path, text, fragment):
    from clihelp import assert_one_line_error, run_cli

    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    assert_one_line_error(run_cli("study", plan, "--out", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_a_plan_runs_end_to_end_resumes_and_reports(tiny_lm_dir, text_dir, tmp_path):
    """A small plan on the tiny model: a variant applied, one fine-tuned, cells in order into their own
    run folders, a rerun that runs nothing, and the report from every row (archived, then the union)."""
    from clihelp import run_cli

    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""name: tiny
title: a tiny study
model: {tiny_lm_dir}
target: 256
texts:
  train: {{rows: mix, length: 64, count: 4, seed: 0, mix: {{text: 1.0, copy: 1.0}}}}
  other: {text_dir}
evaluation: {{prompt: legacy, batch_size: 2, depths: [0, 100]}}
training: {{steps: 2, batch_size: 2, lr: 1.0e-3, cream_k: 4, save_steps: 2}}
variants:
  base: {{}}
  yarn: {{scaling: yarn}}
  cream-yarn: {{positions: cream, scaling: yarn}}
  se-yarn: {{checkpoint: yarn, attention: self-extend, attention_options: {{group: 2, neighbor: 32}}}}
summary: [[passkey, 128, null, passkey 128], ["ppl:ratio", 128, null, ppl ratio], [ppl-other, 128, null, other ppl]]
pairs: [[cream-yarn, yarn]]
cells:
  - {{task: passkey, variants: [base, yarn, cream-yarn], length: 128, samples: 2}}
  - {{task: ppl, variants: [base, yarn, se-yarn], length: 128, samples: 1}}
  - {{task: ppl, as: ppl-other, text: other, variants: [base], length: 128, samples: 1}}
""")
    out, docs = tmp_path / "out", tmp_path / "docs"
    code, _, err = run_cli("study", plan, "--out", out)
    assert code == 0, err
    assert (out / "models" / "yarn" / "ropestretch.json").is_file() and not (out / "models" / "se-yarn").exists()
    record = json.loads((out / "models" / "cream-yarn" / "ropestretch.json").read_text())
    assert record["steps"] == 2 and record["training"]["data"] == str(out / "data" / "train.jsonl")
    rows = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["input_ids"]) == 64 for r in rows) and {r["kind"] for r in rows} <= {
        "text", "copy"}
    folders = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").glob("*/*"))
    assert folders == ["base/passkey@128x2s0", "base/ppl-other@128x1s0", "base/ppl@128x1s0",
                       "cream-yarn/passkey@128x2s0", "se-yarn/ppl@128x1s0", "yarn/passkey@128x2s0", "yarn/ppl@128x1s0"]
    args = json.loads((out / "runs" / "se-yarn" / "ppl@128x1s0" / "eval-args.json").read_text())["ppl"]
    assert args["model"].endswith("models/yarn") and args["attention"]["method"] == "self-extend"
    other = json.loads((out / "runs" / "base" / "ppl-other@128x1s0" / "eval-args.json").read_text())["ppl"]
    folder = out / "runs" / "base" / "ppl-other@128x1s0"
    prose = json.loads((out / "runs" / "base" / "ppl@128x1s0" / "eval-args.json").read_text())["ppl"]
    assert (folder / other["text"]).resolve() == text_dir.resolve() and prose.get("text") != other["text"]
    code, _, err = run_cli("study", plan, "--out", out, "--report", docs)
    assert code == 0, err
    text = (docs / "report.md").read_text()
    assert "# ropestretch report: a tiny study" in text and "| variant | passkey 128 | ppl ratio | other ppl |" in text
    assert "| cream-yarn - yarn | passkey | 128 | all |" in text
    assert "`se-yarn`: `--model <out>/models/yarn --attention self-extend --group 2 --neighbor 32`" in text
    assert len((docs / "results.jsonl").read_text().splitlines()) == 2 * 3 + 4
    # with the archive, nothing runs again even where the run folders are gone
    import shutil

    shutil.rmtree(out / "runs")
    code, _, err = run_cli("study", plan, "--out", out, "--archive", docs / "results.jsonl")
    assert code == 0, err
    assert not (out / "runs").exists()
