"""`ropestretch train`: the saved checkpoint, resume after SIGKILL, LoRA, chat, multi-process, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from clihelp import assert_one_line_error, run_cli
from conftest import GPT2_CONFIG, REPO

BASE = ["--target", 256, "--batch-size", 2, "--lr", 1e-3, "--cream-k", 4, "--no-progress"]


def train_cli(model, data, out, *extra):
    return run_cli("train", "--model", model, "--data", data, "--out", out, *BASE, *extra)


def test_checkpoint_is_standard_and_matches_in_process_model(tiny_lm_dir, text_dir, tmp_path, cpu_bf16):
    """Under both answers of the bf16 probe: `--dtype auto` trains in bf16 mixed precision where the
    CPU has native bf16, and the model train() returns computes what the saved checkpoint computes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ropestretch.train import make_config, train

    out = tmp_path / "run"
    result = train(make_config(model=str(tiny_lm_dir), data=str(text_dir), out=str(out), target=256,
                               positions="cream", scaling="yarn", steps=4, batch_size=2, lr=1e-3, cream_k=4,
                               yarn_beta_fast=8, save_steps=2, progress=False))
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "ropestretch.json", "log.jsonl"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 256
    assert config["rope_parameters"]["rope_type"] == config["rope_scaling"]["rope_type"] == "yarn"
    assert config["rope_parameters"]["beta_fast"] == config["rope_scaling"]["beta_fast"] == 8.0
    meta = json.loads((out / "ropestretch.json").read_text())
    assert (meta["positions"], meta["scaling"], meta["window"], meta["target"], meta["steps"]) == \
        ("cream", "yarn", 64, 256, 4)
    assert meta["training"]["lr"] == 1e-3 and meta["final_loss"] is not None
    assert meta["precision"] == ("bf16" if cpu_bf16 else "fp32")
    # stock transformers, no custom code, gives the in-process model's logits at 3x the window
    stock = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 300, (1, 200))
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, result.model.eval()(ids).logits, rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(out).eos_token == "</s>"
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 for r in lines if "loss" in r)


KILLER = textwrap.dedent("""
    import os, signal, sys, time
    import ropestretch.train as T
    from transformers import Trainer, TrainerCallback
    mode, step = sys.argv[1], int(sys.argv[2])
    orig = T._callbacks
    class Slow(TrainerCallback):  # the killed process takes >= 0.2 s a step, for the record's time to count it
        def on_step_end(self, args, state, control, **kw):
            time.sleep(0.2)
            if mode == "step" and state.global_step == step:  # SIGKILL right after optimizer step `step`
                os.kill(os.getpid(), signal.SIGKILL)
    T._callbacks = lambda *a: [Slow()] + orig(*a)
    if mode == "save":  # SIGKILL in the middle of writing checkpoint `step`: weights written, trainer state not
        orig_save = Trainer._save_optimizer_and_scheduler
        def save(self, output_dir):
            if self.state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig_save(self, output_dir)
        Trainer._save_optimizer_and_scheduler = save
    from ropestretch.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def final_loss(out):
    losses = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in losses if "loss" in r][-1]


@pytest.mark.parametrize("mode,step", [("step", 13), ("save", 15)])
def test_sigkill_and_resume_matches_straight_run(tiny_lm_dir, text_dir, tmp_path, mode, step):
    args = ["train", "--model", tiny_lm_dir, "--data", text_dir, *BASE, "--steps", 20, "--save-steps", 5,
            "--save-total-limit", 1, "--positions", "cream", "--scaling", "linear"]
    straight = tmp_path / "straight"
    assert run_cli(*args, "--out", straight)[0] == 0
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "src"))
    done = subprocess.run([sys.executable, "-c", KILLER, mode, str(step), *map(str, args), "--out", str(killed)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr[-2000:]
    assert not (killed / "ropestretch.json").exists()
    if mode == "save":
        assert (killed / "checkpoints" / "checkpoint-15").exists()  # a half-written checkpoint
    code, _, err = run_cli(*args, "--out", killed, "--resume")
    assert code == 0, err
    if mode == "save":  # the half-written checkpoint was set aside, not resumed from, not deleted
        assert (killed / "checkpoints.incomplete" / "checkpoint-15" / "model.safetensors").exists()
    a, b = final_loss(straight), final_loss(killed)
    assert a["step"] == b["step"] == 20
    assert abs(a["loss"] - b["loss"]) <= 1e-4, (a, b)
    steps = [json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == list(range(1, 21))  # what the lost steps logged was dropped on resume
    # the record's time counts both processes: the first one's clock at its last kept step, then the second's
    log = [json.loads(x) for x in (killed / "log.jsonl").read_text().splitlines()]
    restart = next(i for i in range(1, len(log)) if log[i]["elapsed_s"] < log[i - 1]["elapsed_s"])
    record = json.loads((killed / "ropestretch.json").read_text())
    assert record["train_seconds"] >= log[restart - 1]["elapsed_s"] >= 0.2 * 10


def test_lora_model_in_process_is_the_merged_checkpoint(tiny_lm_dir, text_dir, tmp_path, cpu_bf16):
    from transformers import AutoModelForCausalLM

    from ropestretch.train import make_config, train

    out = tmp_path / "run"
    result = train(make_config(model=str(tiny_lm_dir), data=str(text_dir), out=str(out), target=256, positions="pose",
                               scaling="yarn", steps=2, batch_size=2, lr=1e-3, lora=True, lora_rank=4, progress=False))
    stock = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.randint(0, 300, (1, 150))
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, result.model.eval()(ids).logits, rtol=1e-5, atol=1e-5)


def test_lora_merged_with_embeddings_and_norms(tiny_lm_dir, text_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    code, _, err = train_cli(tiny_lm_dir, text_dir, out, "--steps", 3, "--lora", "--lora-rank", 4,
                             "--lora-embed-norm", "--save-steps", 10)
    assert code == 0, err
    base = load_file(tiny_lm_dir / "model.safetensors")
    tuned = load_file(out / "model.safetensors")
    assert set(base) == set(tuned)  # merged: plain weight names, no lora_ tensors
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert any("q_proj" in k for k in changed) and any("embed_tokens" in k for k in changed)
    assert any("norm" in k for k in changed)
    assert not any("mlp" in k for k in changed)  # untouched by LoRA on attention projections
    AutoModelForCausalLM.from_pretrained(out)


def test_chat_mode_masks_all_but_assistant(tiny_lm_dir, tmp_path):
    from transformers import AutoTokenizer

    from ropestretch.data import chat_samples, load_records

    chats = tmp_path / "chat.jsonl"
    with chats.open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                              {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n")
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    rows = chat_samples(load_records(chats), tok, 64)
    row = rows[0]
    assert len(row["input_ids"]) <= 64
    kept = tok.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert "It is 1." in kept and "plus one" not in kept
    code, _, err = train_cli(tiny_lm_dir, chats, tmp_path / "out", "--chat", "--steps", 2, "--save-steps", 5)
    assert code == 0, err


def test_yaml_config_and_flag_override(tiny_lm_dir, text_dir, tmp_path):
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"model: {tiny_lm_dir}\ndata: {text_dir}\ntarget: 256\nsteps: 2\npositions: pose\n"
                        f"scaling: dprope\nbatch-size: 2\nlr: 0.001\nsave_steps: 5\nprogress: false\n")
    out = tmp_path / "out"
    code, _, err = run_cli("train", "--config", run_file, "--out", out, "--positions", "randpos")
    assert code == 0, err
    meta = json.loads((out / "ropestretch.json").read_text())
    assert (meta["positions"], meta["scaling"], meta["steps"]) == ("randpos", "dprope", 2)
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == "longrope"


def test_accelerate_two_processes(tiny_lm_dir, text_dir, tmp_path):
    out = tmp_path / "ddp"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "ropestretch", "train", "--model", str(tiny_lm_dir), "--data", str(text_dir), "--out", str(out),
           *map(str, BASE), "--steps", "3", "--save-steps", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "ropestretch.json").read_text())
    assert meta["world_size"] == 2
    assert meta["train_tokens"] == 3 * 2 * 2 * 64  # steps x batch x ranks x tokens: both ranks trained
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3"]
    assert done.stdout.count("wrote") == 2  # each rank finished


def test_bad_input(tiny_lm_dir, text_dir, tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(open(GPT2_CONFIG).read())
    assert_one_line_error(train_cli(gpt2, text_dir, tmp_path / "o1"), "no rotary")
    assert_one_line_error(run_cli("train", "--model", tiny_lm_dir, "--data", text_dir, "--out", tmp_path / "o2",
                                  "--target", 64), "longer than")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b\n")
    assert_one_line_error(train_cli(tiny_lm_dir, empty, tmp_path / "o3"), "no .txt")
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("   \n")
    assert_one_line_error(train_cli(tiny_lm_dir, blank, tmp_path / "o4"), "no usable text")
    shorts = tmp_path / "shorts"
    shorts.mkdir()
    for i in range(3):
        (shorts / f"{i}.txt").write_text("A short note.")
    assert_one_line_error(train_cli(tiny_lm_dir, shorts, tmp_path / "o5", "--short-docs", "drop"), "shorter than")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, tmp_path / "o6", "--positions", "crem"),
                          "unknown positions")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, tmp_path / "o7", "--scaling", "yarn2"), "unknown scaling")
    nochat = tmp_path / "c.jsonl"
    nochat.write_text(json.dumps({"text": "hello"}) + "\n")
    assert_one_line_error(train_cli(tiny_lm_dir, nochat, tmp_path / "o8", "--chat"), "messages")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, tmp_path / "o9", "--steps", "many"), "steps")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, tmp_path / "o10", "--distill", -1), "distill must be >= 0")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, tmp_path / "o11", "--distill", 1, "--positions", "full"),
                          "inside the original window")
    for n in range(1, 12):
        assert not (tmp_path / f"o{n}").exists()  # nothing written for a refused run
    # an output folder holding a different run is never touched
    out = tmp_path / "done"
    assert train_cli(tiny_lm_dir, text_dir, out, "--steps", 2, "--save-steps", 5)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, out, "--steps", 2, "--lr", 5e-4), "different run", "lr")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, out, "--steps", 2, "--save-steps", 5), "--resume")
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert_one_line_error(train_cli(tiny_lm_dir, text_dir, other, "--steps", 2), "not empty")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert (other / "mine.txt").read_text() == "keep me"


def test_library_config_refuses_unknown_options():
    from ropestretch.errors import UsageError
    from ropestretch.train import make_config

    with pytest.raises(UsageError, match="unknown training option 'lora_rnak'"):
        make_config(model="m", data="d", out="o", target=512, lora_rnak=4)


def test_distillation_adds_kl_to_the_teacher_at_its_own_positions(tiny_lm_dir, tmp_path):
    """The loss is cross-entropy plus weight x KL(teacher || model), averaged over counted tokens,
    checked against a token-by-token sum; the teacher reads positions 0..n-1 whatever the model reads."""
    from transformers import AutoModelForCausalLM, TrainingArguments

    from ropestretch.train import distill_trainer_class

    teacher = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(3, 300, (2, 24))
    positions = torch.cat([torch.arange(8), torch.arange(100, 108), torch.arange(200, 208)]).repeat(2, 1)
    labels = ids.clone()
    labels[1, :10] = -100  # a row with a prompt that does not count
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": positions, "labels": labels}
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[])
    trainer = distill_trainer_class(teacher, 0.7)(model=student, args=args)
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(inputs))
        ce = student(**inputs).loss
        s_logits = student(input_ids=ids, position_ids=positions).logits
        t_logits = teacher(input_ids=ids).logits
    kls = []
    for row in range(2):
        for t in range(23):
            if labels[row, t + 1] == -100:
                continue
            p, q = t_logits[row, t].softmax(-1).double(), s_logits[row, t].softmax(-1).double()
            kls.append(float((p * (p.log() - q.log())).sum()))
    assert len(kls) == 23 + 14  # labels 10 .. 23 of the second row
    assert float(loss) == pytest.approx(float(ce) + 0.7 * sum(kls) / len(kls), rel=1e-4)
    assert sum(kls) / len(kls) > 1e-3  # the perturbed model does differ from its teacher
    # the same weights at the teacher's own positions: nothing to distil
    same = distill_trainer_class(teacher, 0.7)(model=teacher, args=args)
    plain = {k: v for k, v in inputs.items() if k != "position_ids"}
    with torch.no_grad():
        assert float(same.compute_loss(teacher, dict(plain))) == pytest.approx(float(teacher(**plain).loss), rel=1e-5)


def test_cli_training_with_distillation_runs_and_records_it(tiny_lm_dir, text_dir, tmp_path):
    out = tmp_path / "run"
    assert train_cli(tiny_lm_dir, text_dir, out, "--steps", 2, "--scaling", "yarn", "--distill", 0.5)[0] == 0
    meta = json.loads((out / "ropestretch.json").read_text())
    assert meta["training"]["distill"] == 0.5 and meta["final_loss"] is not None
