"""The position collator alone and inside a transformers.Trainer run."""

import json

import numpy as np
import pytest
import torch

from clihelp import assert_one_line_error, run_cli
from ropestretch import UsageError
from ropestretch.positions import PositionCollator


def features(n_rows, length, vocab=100, seed=0, with_ids=True):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        row = {"input_ids": rng.integers(3, vocab, length).tolist()}
        if with_ids:
            row["sample_id"] = i
        rows.append(row)
    return rows


def test_pads_masks_and_labels():
    collate = PositionCollator("cream", 32, 256, seed=1, pad_token_id=0, k=4)
    rows = features(3, 32)
    rows[1]["input_ids"] = rows[1]["input_ids"][:20]
    rows[2]["labels"] = [-100] * 10 + rows[2]["input_ids"][10:]
    batch = collate(rows)
    assert batch["input_ids"].shape == batch["position_ids"].shape == (3, 32)
    assert batch["attention_mask"][1].tolist() == [1] * 20 + [0] * 12
    assert (batch["labels"][1, 20:] == -100).all() and (batch["input_ids"][1, 20:] == 0).all()
    assert batch["labels"][0].tolist() == rows[0]["input_ids"]
    assert batch["labels"][2, :10].eq(-100).all() and batch["labels"][2, 10:].tolist() == rows[2]["input_ids"][10:]
    pos = batch["position_ids"]
    assert (pos.diff(dim=1) > 0).all() and pos[:, 0].eq(0).all() and pos.max() < 256


def test_same_sample_ids_same_positions():
    """Seeded by the batch's sample ids: a resumed run draws what an uninterrupted one drew."""
    a = PositionCollator("pose", 32, 256, seed=3)
    b = PositionCollator("pose", 32, 256, seed=3)
    rows = features(4, 32)
    b(features(4, 32, seed=9))  # a different history must not matter
    assert torch.equal(a(rows)["position_ids"], b(rows)["position_ids"])
    other = [dict(r, sample_id=r["sample_id"] + 100) for r in rows]
    assert not torch.equal(a(rows)["position_ids"], a(other)["position_ids"])


def test_full_length_rows_and_errors():
    collate = PositionCollator("full", 32, 128)
    assert collate(features(2, 128))["position_ids"][0].tolist() == list(range(128))
    with pytest.raises(UsageError, match="more than the sample length"):
        PositionCollator("cream", 32, 128, k=4)(features(1, 40))
    with pytest.raises(UsageError, match="unknown positions"):
        PositionCollator("cram", 32, 128)
    with pytest.raises(UsageError, match="sigma"):
        PositionCollator("cream", 32, 128, k=4, sigma=0)


def test_trainer_feeds_sampled_positions_to_the_model(tiny_llama_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    seen = []
    model.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get("position_ids")),
                                          with_kwargs=True)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True,
                             logging_steps=1, disable_tqdm=True)
    collate = PositionCollator("cream", 64, 512, seed=0, k=8)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(features(12, 64, vocab=128)),
                      data_collator=collate)
    result = trainer.train()
    assert len(seen) == 3 and all(p is not None and p.shape == (4, 64) for p in seen)
    assert all(int(p.max()) > 64 for p in seen)  # positions beyond the window reached the model
    assert np.isfinite(result.training_loss)


def test_positions_cli(tmp_path):
    out = tmp_path / "pos.npy"
    code, stdout, err = run_cli("positions", "--method", "cream", "--window", 256, "--target", 2048,
                                "--samples", 500, "--seed", 3, "--out", out, "--json")
    assert code == 0, err
    data = json.loads(stdout)
    arr = np.load(out)
    assert arr.shape == (500, 256) and arr.dtype == np.int64
    assert set(data) >= {"strategy_fraction", "middle_centre_quantiles", "relative_coverage"}
    assert 0 < data["relative_coverage"] <= 1
    code, stdout, _ = run_cli("positions", "--method", "cream", "--window", 256, "--target", 2048,
                              "--samples", 500, "--seed", 3, "--json")
    assert json.loads(stdout) == data  # same seed, same answer
    png = tmp_path / "p.png"
    code, stdout, _ = run_cli("positions", "--method", "pose", "--window", 128, "--target", 512, "--samples", 50,
                              "--plot", png)
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG" and "skip" in stdout
    before = out.read_bytes()
    assert_one_line_error(run_cli("positions", "--method", "cream", "--window", 256, "--target", 2048,
                                  "--out", out), "already exists")
    assert out.read_bytes() == before


@pytest.mark.parametrize("argv,fragment", [
    (["--method", "cream", "--window", 256, "--target", 128], "at least the window"),
    (["--method", "cream", "--window", 0, "--target", 128], "positive integer"),
    (["--method", "cream", "--window", "x", "--target", 128], "positive integer"),
    (["--method", "cream", "--window", 256, "--target", 2048, "--k", 128], "k must be"),
    (["--method", "cream", "--window", 256, "--target", 2048, "--sigma", 0], "sigma"),
    (["--method", "warp", "--window", 256, "--target", 2048], "unknown positions method"),
    (["--method", "pose", "--window", 256, "--target", 2048, "--k", 8], "cream only"),
])
def test_positions_cli_bad_input(argv, fragment):
    assert_one_line_error(run_cli("positions", *argv), fragment)


def test_segments_attend_to_each_other(tiny_llama_dir):
    """transformers 5 reads jumps in position_ids as packed sequences, and blocks attention across
    them, when no attention_mask is given. The collator always gives one, so CREAM's tail still
    sees its head: changing a head token changes the tail's logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    collate = PositionCollator("cream", 64, 512, seed=0, k=4)
    rows = features(1, 64, vocab=128)
    batch = collate(rows)
    assert "attention_mask" in batch and (batch["position_ids"].diff(dim=1) > 1).any()
    changed = [dict(rows[0], input_ids=[7] + rows[0]["input_ids"][1:])]
    with torch.no_grad():
        tail = model(**batch, use_cache=False).logits[0, -1]
        tail_changed = model(**collate(changed), use_cache=False).logits[0, -1]
        # what happens without the mask: the tail is cut off from the head
        no_mask = {k: v for k, v in batch.items() if k != "attention_mask"}
        no_mask_changed = {k: v for k, v in collate(changed).items() if k != "attention_mask"}
        cut = model(**no_mask, use_cache=False).logits[0, -1]  # no cache, as in training
        cut_changed = model(**no_mask_changed, use_cache=False).logits[0, -1]
    assert not torch.allclose(tail, tail_changed)
    assert torch.allclose(cut, cut_changed)  # documents the trap the collator avoids
