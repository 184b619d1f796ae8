"""The real-model study's bookkeeping (benchmarks/real_model.py): every evaluation cell has its own
run folder, and the report's archive keeps rows that the run folder no longer holds."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_model.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("real_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_model"] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("real_model", None)


def test_no_two_cells_share_a_run_folder(study):
    for variant in study.ALL:
        folders = [study.cell_folder(c) for c in study.EVALS if variant in c.variants]
        assert len(folders) == len(set(folders)), variant


def _write(folder: Path, rows):
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_archive_keeps_rows_the_runs_lost(study, tmp_path):
    first = {"test": "passkey", "cell": {"length": 16384, "depth": 50.0}, "correct": 1, "n": 1}
    second = {"test": "passkey", "cell": {"length": 4096, "depth": 50.0}, "correct": 0, "n": 1}
    code = {"test": "ppl", "cell": {"length": 4096}, "ppl": 3.5}
    _write(tmp_path / "run" / "evals" / "yarn" / "passkey@16384x1", [first])
    _write(tmp_path / "run" / "evals" / "yarn" / "passkey@4096x2", [second])
    _write(tmp_path / "run" / "evals" / "yarn" / "ppl-code@4096x1", [code])
    archive = tmp_path / "results.jsonl"
    found = study.results(tmp_path / "run", archive)
    assert found[("yarn", "passkey")] == [first, second]  # two cells of one test, both read
    assert found[("yarn", "ppl-code")] == [code]  # code perplexity kept apart from prose
    # the run folders go (another machine, a cleaned folder): the archive still holds every row
    empty = tmp_path / "elsewhere"
    (empty / "evals").mkdir(parents=True)
    assert study.results(empty, archive) == found
    # a rerun of a cell replaces its archived row instead of adding a second one
    newer = dict(first, correct=0)
    _write(empty / "evals" / "yarn" / "passkey@16384x1", [newer])
    again = study.results(empty, archive)
    assert again[("yarn", "passkey")] == [newer, second]


def test_archived_cells_are_not_rerun(study, tmp_path, monkeypatch):
    """A clean machine with the archive makes no checkpoint for a cell already measured, and does
    for a cell that is not."""
    cell = study.Cell("passkey", ("cream-yarn",), (16384,), 1, (25.0, 75.0))
    archive = tmp_path / "results.jsonl"
    archive.write_text("".join(json.dumps({"variant": "cream-yarn", "test": "passkey",
                                           "row": {"cell": {"length": 16384, "depth": d}, "correct": 1, "n": 1}})
                               + "\n" for d in (25.0, 75.0)))
    made = []

    def prepare(out, base, variant, train=True):
        made.append(variant)
        return None  # as if the fine-tune had not run: nothing is evaluated

    monkeypatch.setattr(study, "prepare", prepare)
    study.evaluate(tmp_path / "run", tmp_path / "base", cell, study.archived_cells(archive))
    assert made == []
    missing = study.Cell("passkey", ("cream-yarn",), (16384,), 1, (25.0, 50.0, 75.0))  # 50% not archived
    study.evaluate(tmp_path / "run", tmp_path / "base", missing, study.archived_cells(archive))
    assert made == ["cream-yarn"]


def test_training_records_outlive_the_checkpoints(study, tmp_path):
    meta = {"train_seconds": 500.0, "train_tokens": 131072, "final_loss": 1.5, "other": 1}
    folder = tmp_path / "run" / "models" / "pose-yarn-heldout"
    folder.mkdir(parents=True)
    (folder / "ropestretch.json").write_text(json.dumps(meta))
    archive = tmp_path / "training.json"
    kept = study.training_records(tmp_path / "run", archive)
    assert kept == {"pose-yarn-heldout": {"train_seconds": 500.0, "train_tokens": 131072, "final_loss": 1.5}}
    (tmp_path / "elsewhere").mkdir()
    assert study.training_records(tmp_path / "elsewhere", archive) == kept


def test_heldout_recipe_has_no_passkey_rows_and_the_same_budget(study):
    full, held = study.RECIPES["full"], study.RECIPES["heldout"]
    assert "passkey" in dict(full.mix) and "passkey" not in dict(held.mix)
    assert (full.steps, full.batch_size, full.row_length, full.rows) == (held.steps, held.batch_size,
                                                                         held.row_length, held.rows)
