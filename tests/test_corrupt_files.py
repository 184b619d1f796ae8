"""Broken model files and a full disk: each is one line and exit 2, and nothing a user had changes."""

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clihelp import assert_one_line_error, run_cli
from conftest import REPO

TINY = Path(REPO) / "models" / "tiny-llama-256"
APPLY = ["--scaling", "yarn", "--target", "1024"]


def copy_of(tmp_path, name="m"):
    folder = tmp_path / name
    shutil.copytree(TINY, folder)
    return folder


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused_everywhere(tmp_path, model, *fragments):
    """apply and eval on ``model`` refuse it in one line, write nothing, and leave it as it was."""
    before = snapshot(model) if model.is_dir() else model.read_bytes()
    assert_one_line_error(run_cli("apply", "--model", model, *APPLY, "--out", tmp_path / "out"), *fragments)
    assert_one_line_error(run_cli("eval", "ppl", "--model", model, "--out", tmp_path / "run", "--lengths", "64"),
                          *fragments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    assert (snapshot(model) if model.is_dir() else model.read_bytes()) == before


def test_weights_cut_short_or_with_a_damaged_header(tmp_path):
    model = copy_of(tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    refused_everywhere(tmp_path, model, "model.safetensors is truncated or not a safetensors file")
    header = int.from_bytes(data[:8], "little")
    flipped = bytearray(data)
    flipped[8 + header // 2] ^= 0x40  # a bit inside the header's JSON
    weights.write_bytes(bytes(flipped))
    refused_everywhere(tmp_path, model, "model.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe binary", b'{"version": "1.0", "truncated', b"[1, 2]"],
                         ids=["empty", "binary", "cut-short", "not-an-object"])
def test_a_tokenizer_file_that_is_not_its_json(tmp_path, content):
    model = copy_of(tmp_path)
    (model / "tokenizer.json").write_bytes(content)
    refused_everywhere(tmp_path, model, "tokenizer.json")


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n", b'{"model_type": "llama",'], ids=["empty", "binary", "cut"])
def test_a_config_that_is_not_json(tmp_path, content):
    model = copy_of(tmp_path)
    (model / "config.json").write_bytes(content)
    assert_one_line_error(run_cli("apply", "--model", model, *APPLY, "--out", tmp_path / "out"), "config.json")
    assert not (tmp_path / "out").exists()


def test_a_config_that_does_not_describe_the_weights(tmp_path):
    model = copy_of(tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] *= 2
    (model / "config.json").write_text(json.dumps(config))
    refused_everywhere(tmp_path, model, "config.json does not describe these weights", "mlp")


@pytest.mark.parametrize("layers", [+1, -1], ids=["more-layers", "fewer-layers"])
def test_a_config_with_another_number_of_layers_than_the_weights(tmp_path, layers):
    """Shapes alone agree here (every layer is alike): the tensors' names do not."""
    model = copy_of(tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] += layers
    (model / "config.json").write_text(json.dumps(config))
    fragment = "the weights lack 1 of them" if layers > 0 else "the weights hold layers config.json has no place for"
    first_odd = config["num_hidden_layers"] - 1 if layers > 0 else config["num_hidden_layers"]
    refused_everywhere(tmp_path, model, fragment, f"(layer {first_odd} on")


def test_layers_the_loader_ignores_are_extra_only_past_the_config(tmp_path, monkeypatch):
    """GLM-4.5's loader ignores ``model.layers.46.*`` and ``model.layers.92.*`` (its prediction
    layer): a pattern inside the config's layers hides nothing, one past them is no extra layer."""
    from safetensors.torch import load_file, save_file

    import ropestretch.integrity as integrity

    model = copy_of(tmp_path)
    real = integrity.expected_shapes
    monkeypatch.setattr(integrity, "expected_shapes",
                        lambda config: (real(config)[0], [r"model\.layers\.1\..*", r"model\.layers\.4\..*"]))
    integrity.check_folder(model)  # layer 1 is held, whatever the loader ignores
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.4.input_layernorm.weight"] = tensors["model.layers.3.input_layernorm.weight"].clone()
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    integrity.check_folder(model)  # a layer past the config that the loader ignores
    monkeypatch.setattr(integrity, "expected_shapes", lambda config: (real(config)[0], []))
    with pytest.raises(integrity.UsageError, match=r"no place for \(layer 4 on"):
        integrity.check_folder(model)


@pytest.mark.parametrize("change", [lambda c: [c], lambda c: {**c, "num_hidden_layers": "four"},
                                    lambda c: {**c, "hidden_act": 3}],
                         ids=["a-list", "a-count-of-the-wrong-type", "a-name-of-the-wrong-type"])
def test_a_config_of_the_wrong_type(tmp_path, change):
    model = copy_of(tmp_path)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(change(config)))
    typed = isinstance(change(config), dict)  # a field transformers' typed config refuses, named
    refused_everywhere(tmp_path, model, "config.json", *(["transformers refuses it"] if typed else []))


def test_a_tokenizer_file_that_is_json_but_no_tokenizer(tmp_path):
    model = copy_of(tmp_path)
    (model / "tokenizer.json").write_text('{"version": "1.0"}')
    refused_everywhere(tmp_path, model, "tokenizer.json is JSON but not a tokenizer")


def test_a_sharded_checkpoint_with_a_missing_shard(tmp_path):
    from safetensors.torch import load_file, save_file

    model = copy_of(tmp_path)
    tensors = load_file(model / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, model / shard, metadata={"format": "pt"})
    (model / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert run_cli("apply", "--model", model, *APPLY, "--out", tmp_path / "whole")[0] == 0  # both shards: fine
    (model / "model-00002-of-00002.safetensors").unlink()
    refused_everywhere(tmp_path, model, "1 of the 2 shards", "model-00002-of-00002.safetensors", "incomplete")


def test_a_gguf_cut_short(tmp_path):
    from ropestretch.checkpoints import bundled_file

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(bundled_file("smollm2-135m-instruct").read_bytes()[: 1 << 20])
    assert_one_line_error(run_cli("apply", "--model", cut, *APPLY, "--out", tmp_path / "x.gguf"),
                          "cut.gguf is truncated or not a GGUF file")
    assert_one_line_error(run_cli("eval", "ppl", "--model", cut, "--out", tmp_path / "run", "--lengths", "64"),
                          "cut.gguf is truncated")
    assert not (tmp_path / "x.gguf").exists() and not (tmp_path / "run").exists()


def small_volume(tmp_path, size="2m"):
    """A tmpfs of ``size`` mounted for the test where the test may mount (root), else None."""
    mount = tmp_path / "volume"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    return mount if done.returncode == 0 else None


def test_apply_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    model = copy_of(tmp_path)
    volume = small_volume(tmp_path)
    try:
        if volume is None:  # no mount here: the writer fails as a full disk makes it fail
            real = shutil.copyfile

            def full(src, dst, *a, **kw):
                if "model.safetensors" in str(dst):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
                return real(src, dst, *a, **kw)
            monkeypatch.setattr(shutil, "copyfile", full)
            volume = tmp_path / "disk"
            volume.mkdir()
        code, _, err = run_cli("apply", "--model", model, *APPLY, "--out", volume / "out")
        assert_one_line_error((code, "", err), "No space left on device", "nothing was written")
        assert not (volume / "out").exists() and list(volume.iterdir()) == []
    finally:
        if volume is not None and volume.name == "volume":
            subprocess.run(["umount", str(volume)], capture_output=True)


def test_eval_keeps_its_rows_when_the_disk_fills_and_resumes(tmp_path, monkeypatch):
    import ropestretch.eval.store as store

    run = tmp_path / "run"
    args = ["eval", "ppl", "--model", TINY, "--out", run, "--lengths", "64,128,256", "--samples", "1", "--no-progress"]
    real, written = store.append_jsonl, []

    def filling(path, record):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        written.append(record)
        return real(path, record)
    monkeypatch.setattr(store, "append_jsonl", filling)
    assert_one_line_error(run_cli(*args), "No space left on device", "every finished cell stays")
    rows = (run / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1
    monkeypatch.setattr(store, "append_jsonl", real)
    assert run_cli(*args)[0] == 0
    again = (run / "results.jsonl").read_text().splitlines()
    assert again[0] == rows[0] and len(again) == 3  # the first row kept, the other two added once


def test_train_stopped_by_a_full_disk_resumes_from_its_last_complete_checkpoint(tiny_lm_dir, text_dir, tmp_path,
                                                                               monkeypatch):
    from transformers import AutoModelForCausalLM, Trainer

    out = tmp_path / "run"
    args = ["train", "--model", tiny_lm_dir, "--data", text_dir, "--out", out, "--target", "256", "--steps", "6",
            "--batch-size", "2", "--save-steps", "2", "--save-total-limit", "1", "--positions", "cream", "--scaling",
            "linear", "--cream-k", "4", "--no-progress", "--dtype", "fp32"]
    real = Trainer._save_optimizer_and_scheduler

    def full(self, output_dir):
        if self.state.global_step == 4:  # the disk fills while checkpoint 4 is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(output_dir, "optimizer.pt"))
        return real(self, output_dir)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full)
    code, _, err = run_cli(*args)  # train's own line on what it trains, then the error's one line
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("ropestretch train: error: No space left")
    assert "optimizer.pt" in last and "--resume continues" in last
    assert not (out / "ropestretch.json").exists()
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()  # the last complete one
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real)
    code, _, err = run_cli(*args, "--resume")
    assert code == 0, err
    assert "resuming from" in err and "checkpoint-2" in err
    assert json.loads((out / "ropestretch.json").read_text())["steps"] == 6
    AutoModelForCausalLM.from_pretrained(out)


def test_gguf_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    volume = small_volume(tmp_path, "1m")  # the tiny model's f16 GGUF is about 2.3 MB
    try:
        if volume is None:
            import ropestretch.gguf.convert as export

            def full(model, out, *a, **kw):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))
            monkeypatch.setattr(export, "write_gguf", full)
            volume = tmp_path / "disk"
            volume.mkdir()
        code, _, err = run_cli("gguf", "--model", TINY, "--out", volume / "tiny.gguf")
        assert_one_line_error((code, "", err), "nothing was written")
        assert "No space left on device" in err or "is the disk full?" in err  # numpy's writer says it its own way
        assert list(volume.iterdir()) == []
    finally:
        if volume is not None and volume.name == "volume":
            subprocess.run(["umount", str(volume)], capture_output=True)


def test_bit_flips_in_a_gguf_header_are_one_line_or_a_result(tmp_path):
    """GGUF carries no checksum: a flip in a metadata value may give another valid file. Whatever a
    flip in the header makes, apply and eval answer in one line or run: never a traceback."""
    import random

    from gguf import GGUFReader

    source = tmp_path / "tiny.gguf"
    assert run_cli("gguf", "--model", TINY, "--out", source)[0] == 0
    data = source.read_bytes()
    header = min(int(t.data_offset) for t in GGUFReader(source).tensors)  # metadata and the tensor table
    rng, outcomes = random.Random(0), set()
    for i in range(8):
        flipped = bytearray(data)
        spot = rng.randrange(8, header)
        flipped[spot] ^= 1 << rng.randrange(8)
        model = tmp_path / f"flip{i}.gguf"
        model.write_bytes(bytes(flipped))
        for argv in (["apply", "--model", model, *APPLY, "--out", tmp_path / f"out{i}.gguf"],
                     ["eval", "ppl", "--model", model, "--out", tmp_path / f"run{i}", "--lengths", "64",
                      "--no-progress"]):
            code, _, err = run_cli(*argv)
            assert "Traceback" not in err and (code == 0 or (code == 2 and len(err.strip().splitlines()) == 1)), \
                (spot, argv[0], err[-500:])
            outcomes.add(code)
    assert 2 in outcomes  # some flips are refused (a type, a count, an offset past the file)


def test_report_onto_a_full_disk_keeps_the_report_it_had(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert run_cli("eval", "ppl", "--model", TINY, "--out", run, "--lengths", "64", "--no-progress")[0] == 0
    volume = small_volume(tmp_path, "1m")
    try:
        out = (volume or tmp_path / "disk") / "report"
        assert run_cli("report", run, "--out", out)[0] == 0
        before = (out / "report.md").read_text()
        if volume is not None:  # the volume filled to its last byte
            with open(volume / "filler", "wb") as filler:
                with pytest.raises(OSError):
                    while True:
                        filler.write(b"\0" * 65536)
                        filler.flush()
        else:
            import pathlib

            real = pathlib.Path.write_text

            def full(self, *a, **kw):
                if self.name.endswith(".partial"):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
                return real(self, *a, **kw)
            monkeypatch.setattr(pathlib.Path, "write_text", full)
            for figure in out.glob("*.png"):
                figure.unlink()  # so that the report gets as far as its text
        code, _, err = run_cli("report", run, "--out", out)
        assert_one_line_error((code, "", err), "a report.md from before stays whole")
        assert (out / "report.md").read_text() == before and not list(out.glob("*.partial"))
    finally:
        if volume is not None:
            subprocess.run(["umount", str(volume)], capture_output=True)


def test_a_gguf_is_dequantized_once_whatever_its_path_and_a_full_disk_leaves_no_partial_copy(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    from ropestretch.gguf.read import from_gguf, gguf_cache_folder

    monkeypatch.setenv("ROPESTRETCH_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "a" / "tiny.gguf"
    first.parent.mkdir()
    assert run_cli("gguf", "--model", TINY, "--out", first)[0] == 0
    second = tmp_path / "b" / "copy.gguf"
    second.parent.mkdir()
    shutil.copyfile(first, second)
    assert gguf_cache_folder(first) == gguf_cache_folder(second)  # another folder, another name: one copy
    other = tmp_path / "c" / "tiny.gguf"
    other.parent.mkdir()
    changed = bytearray(first.read_bytes())
    changed[-1] ^= 1  # the last weight's last byte: another file, of the same size and header
    other.write_bytes(bytes(changed))
    assert gguf_cache_folder(other) != gguf_cache_folder(first)
    hashes = json.loads((tmp_path / "cache" / "gguf" / "hashes.json").read_text())
    assert len(hashes) == 3 and len(set(hashes.values())) == 2  # each file hashed once, remembered

    real = PreTrainedModel.save_pretrained

    def full(self, folder, *a, **kw):
        real(self, folder, *a, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    with pytest.raises(OSError):
        from_gguf(first, quiet=True)
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.is_dir()]  # no half-written copy left
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real)
    assert (from_gguf(first, quiet=True) / "model.safetensors").is_file()
