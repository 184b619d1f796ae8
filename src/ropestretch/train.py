"""Fine-tune a causal LM inside its window ``N`` to work at ``L``: any position sampler x any scaling.

The recipe, top to bottom (:func:`train`):

1. read the model's config, check it has RoPE, and scale it to ``L`` (``ropestretch.rope``);
2. read the data (``datasets``), tokenize, cut into samples of ``N`` tokens (``L`` for ``full``);
3. load the model with the scaled config (safetensors only), optionally wrap it in LoRA (``peft``);
4. train with ``transformers.Trainer`` and a :class:`~ropestretch.positions.PositionCollator`;
5. write a standard checkpoint: safetensors, tokenizer, ``config.json`` with ``max_position_embeddings
   = L`` and the exported RoPE, and ``ropestretch.json``.

Everything is checked before anything is written, and an output folder that holds another run
is never touched.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ropestretch.errors import UsageError, first_line
from ropestretch.jsonl import append_jsonl, write_whole

RUN_FILE = "run.json"
METADATA = "ropestretch.json"
LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"
_NOT_IDENTITY = {"resume", "progress", "out", "save_steps", "save_total_limit", "logging_steps"}


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a training run takes; the CLI flags and the YAML keys are these field names."""

    model: str = _f("", "model folder, .gguf file, bundled model name (smollm2-135m-instruct) or hub id (online)")
    data: str = _f("", "local .txt/.md/.jsonl/.json/.parquet file or folder, or a dataset hub name")
    out: str = _f("", "output folder (new, or a run of the same arguments with --resume)")
    target: int = _f(0, "target context length L")
    positions: str = _f("cream", "training position ids, a sampler")
    scaling: str = _f("linear", "RoPE scaling")
    row_length: int = _f(0, "tokens per training row R, at most the window N (0: N); positions still span [0, L) "
                         "(the samplers treat R as their window; see docs/training.md)")
    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(1, "samples per device per micro-batch")
    grad_accum: int = _f(1, "gradient accumulation steps")
    lr: float = _f(2e-5, "peak learning rate (AdamW)")
    warmup_steps: int = _f(10, "linear warm-up steps")
    schedule: str = _f("constant_with_warmup", "learning-rate schedule (transformers' names: linear, cosine, ...)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    distill: float = _f(0.0, "weight of a KL term towards the original model's next-token distributions, read on "
                        "the same rows at its own positions 0..N-1 (short-to-long distillation; 0: off)")
    dtype: str = _f("auto", "auto (bf16 mixed precision on a GPU that has it and on a CPU with AMX or "
                    "AVX512-BF16, else fp32), fp32, bf16 or fp16")
    device: str = _f("auto", "auto, cpu or cuda (several GPUs: accelerate launch)")
    device_map: str = _f(None, "auto: spread a model that does not fit one GPU over the devices (accelerate)")
    attn_implementation: str = _f("auto", "auto (sdpa wherever the model supports it, else eager), sdpa, eager, "
                                  "flash_attention_2 (if installed) or flex_attention")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass to save memory")
    seed: int = _f(42, "seed for data order, positions and initialisation of LoRA")
    chat: bool = _f(False, "data are conversations ('messages'), rendered with the chat template; loss on assistant turns")
    short_docs: str = _f("pack", "documents shorter than a sample: pack (joined with EOS) or drop (counted)")
    text_field: str = _f("text", "field holding the text in .jsonl/.parquet data")
    max_samples: int = _f(0, "use at most this many training samples (0: all)")
    mixed_window: float = _f(0.0, "share of batches trained in the short regime (LongRoPE2's mixed context windows): "
                             "plain positions at the model's own frequencies, the rest under --positions and "
                             "--scaling; the checkpoint then switches RoPE by sequence length (longrope). 0: off")
    short_data: str = _f(None, "short-context text mixed into the rows (ProLong's recipe), read as --data is")
    short_share: float = _f(0.0, "with --short-data: the share of training rows drawn from it (ProLong: 0.4)")
    lora: bool = _f(False, "train LoRA adapters (peft) instead of all weights")
    lora_rank: int = _f(8, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_targets: str = _f("q_proj,k_proj,v_proj,o_proj", "comma-separated module names for LoRA")
    lora_embed_norm: bool = _f(False, "also train embeddings and norms fully (LongLoRA found this necessary)")
    merge_lora: bool = _f(True, "merge LoRA into a full checkpoint at the end (--no-merge-lora keeps the adapter)")
    save_steps: int = _f(100, "write a checkpoint every this many steps")
    save_total_limit: int = _f(2, "keep at most this many checkpoints")
    logging_steps: int = _f(1, "log every this many steps")
    deepspeed: str = _f(None, "DeepSpeed JSON config (GPU)")
    trust_remote_code: bool = _f(False, "allow the model's own code from the hub (off by default)")
    resume: bool = _f(False, "continue the run in --out from its last complete checkpoint")
    progress: bool = _f(True, "show a progress bar")
    # each sampler's and scaling's own options, as ``<entry>_<option>`` (``cream_k``, ``yarn_beta_fast``):
    # declared by the registries (:func:`option_fields`), read as attributes, given here only
    options: dict = field(default_factory=dict, metadata={"help": "", "internal": True})

    def __getattr__(self, name: str) -> Any:
        fields_ = option_fields()
        if name == "options" or name not in fields_:
            raise AttributeError(name)
        return self.options.get(name, fields_[name][1].default)

    def identity(self) -> dict[str, Any]:
        """The arguments that define the run: a folder holding different ones is another run. An
        option at its declared default is left out, as if not given (:func:`without_defaults`)."""
        core = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IDENTITY and k != "options"}
        return without_defaults({**core, **self.options})


def option_fields() -> dict[str, tuple[str, Any]]:
    """``<entry>_<option>`` -> (entry, :class:`ropestretch.options.Option`) for every option the
    samplers (:data:`ropestretch.positions.SAMPLER_OPTIONS`) and scalings
    (:data:`ropestretch.rope.scalings.SCALING_OPTIONS`) declare: ``train``'s flags and YAML keys."""
    from ropestretch.positions import SAMPLER_OPTIONS
    from ropestretch.rope.scalings import SCALING_OPTIONS

    return {f"{entry}_{o.name}": (entry, o) for registry in (SAMPLER_OPTIONS, SCALING_OPTIONS)
            for entry, options in registry.items() for o in options}


def without_defaults(identity: dict[str, Any]) -> dict[str, Any]:
    """A run identity without the settings at their defaults (a run recorded before a setting or an
    option existed, or with every default written out, compares equal to one that leaves it out)."""
    defaults = {name: option.default for name, (_, option) in option_fields().items()}
    defaults.update({f.name: f.default for f in fields(TrainConfig) if f.default is not dataclasses.MISSING})
    return {k: v for k, v in identity.items() if not (k in defaults and v == defaults[k])}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML run file into TrainConfig fields (dashes or underscores)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no such config file: {path}") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of option: value")
    known = {f.name for f in fields(TrainConfig) if not f.metadata.get("internal")} | set(option_fields())
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"{path}: unknown option {key!r}")
        out[name] = value
    return out


def make_config(**values: Any) -> TrainConfig:
    """A validated :class:`TrainConfig` (types coerced, values checked)."""
    from ropestretch.options import as_kind

    if "precision" in values:  # its name before --dtype
        values["dtype"] = values.pop("precision")
    types = {f.name: f.type for f in fields(TrainConfig) if not f.metadata.get("internal")}
    declared = option_fields()
    values = {**(values.pop("options", None) or {}), **values}
    unknown = sorted(set(values) - set(types) - set(declared))
    if unknown:
        raise UsageError(f"unknown training option {unknown[0]!r}")
    clean: dict[str, Any] = {"options": {}}
    for name, value in values.items():
        if name in declared:
            if value is not None:
                clean["options"][name] = declared[name][1].coerce(value, name)
            continue
        if value is None:
            clean[name] = None
            continue
        clean[name] = as_kind(value, str(types[name]).split()[0], name)
    cfg = TrainConfig(**clean)
    for name in ("model", "data", "out"):
        if not getattr(cfg, name):
            raise UsageError(f"--{name} is required")
    for name in ("target", "steps", "batch_size", "grad_accum", "save_steps", "logging_steps", "lora_rank"):
        if getattr(cfg, name) <= 0:
            raise UsageError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "max_samples", "save_total_limit", "row_length"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise UsageError(f"lr must be > 0, got {cfg.lr}")
    if cfg.distill < 0:
        raise UsageError(f"distill must be >= 0, got {cfg.distill:g}")
    if not 0 <= cfg.mixed_window < 1:
        raise UsageError(f"mixed-window is the short regime's share of batches, in [0, 1), got {cfg.mixed_window:g}")
    if cfg.mixed_window and cfg.positions == "full":
        raise UsageError("--mixed-window trains some batches inside the window; positions full trains every row at "
                         "the target length (use cream, pose, randpos or none)")
    if (cfg.short_data is None) != (cfg.short_share == 0):
        raise UsageError("--short-data and --short-share go together (a text and its share of the rows, in (0, 1))")
    if not 0 <= cfg.short_share < 1:
        raise UsageError(f"short-share is a share of the rows, in (0, 1), got {cfg.short_share:g}")
    placement_of(cfg)  # device, dtype, device map and attention: checked against this machine
    return cfg


# --- pieces of the recipe ----------------------------------------------------------------------


def placement_of(cfg: TrainConfig):
    from ropestretch.hardware import placement

    if cfg.device.startswith("cuda:"):
        raise UsageError("train runs on the devices accelerate gives it: use --device cuda with CUDA_VISIBLE_DEVICES, "
                         "or accelerate launch for several GPUs")
    return placement(cfg.device, cfg.dtype, cfg.device_map, cfg.attn_implementation)


@functools.lru_cache(maxsize=8)
def _resolved(model: str) -> str:
    from ropestretch.checkpoints import resolve_model

    return str(resolve_model(model))


def model_dir(cfg: TrainConfig) -> str:
    """The local folder of ``cfg.model`` (a GGUF file dequantized once, a hub model fetched)."""
    return _resolved(cfg.model)


def scaled_rope(cfg: TrainConfig):
    """(raw config dict, RopeConfig, Scaled) for the model, or a UsageError saying why not."""
    from ropestretch.rope import load_config_dict, rope_config_from_dict, scale

    from ropestretch.rope.scalings import length_switching

    raw = load_config_dict(model_dir(cfg))
    rope = rope_config_from_dict(raw)
    scaled = scale(rope, cfg.scaling, cfg.target, **scaling_options(cfg))
    return raw, rope, length_switching(scaled) if cfg.mixed_window else scaled


def _entry_options(cfg: TrainConfig, entry: str) -> dict[str, Any]:
    """The options given for ``entry`` (a sampler or scaling), by their own names
    (``yarn_beta_fast`` -> ``beta_fast``); the others take their declared defaults."""
    return {key[len(entry) + 1:]: value for key, value in cfg.options.items()
            if option_fields()[key][0] == entry}


def scaling_options(cfg: TrainConfig) -> dict[str, Any]:
    """The options of ``cfg.scaling`` for :func:`ropestretch.rope.scale`."""
    return _entry_options(cfg, cfg.scaling)


def row_length(cfg: TrainConfig, window: int) -> int:
    """Tokens per training row: ``--row-length`` (at most the window ``N``), or ``N``."""
    if not cfg.row_length:
        return window
    if cfg.positions == "full":
        raise UsageError("--row-length does not apply to positions full, which trains on rows of the target length")
    if cfg.row_length > window:
        raise UsageError(f"--row-length {cfg.row_length} is longer than the model's window {window}; "
                         "rows longer than N are what positions full is for")
    return cfg.row_length


def position_options(cfg: TrainConfig) -> dict[str, Any]:
    """The options of ``cfg.positions`` for its sampler."""
    return _entry_options(cfg, cfg.positions)


def check_out_dir(cfg: TrainConfig) -> bool:
    """Refuse an output folder that holds anything but this same run (then only with --resume).
    Returns True when it holds this run, finished: ``--resume`` then has nothing to do."""
    from ropestretch.locks import is_empty

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file")
    if is_empty(out):
        if cfg.resume:
            raise UsageError(f"nothing to resume in {out}")
        return False
    record = out / RUN_FILE
    if not record.is_file():
        raise UsageError(f"output folder {out} is not empty and holds no ropestretch run; choose a new one")
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))["identity"]
        if not isinstance(previous, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise UsageError(f"{record} is unreadable; choose a new output folder") from None
    previous, current = without_defaults(previous), cfg.identity()
    differs = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if differs:
        raise UsageError(f"output folder {out} holds a different run (differs in: {', '.join(differs)}); "
                         "choose a new one")
    finished = (out / METADATA).is_file()  # written last, when the checkpoint is complete
    if not cfg.resume:
        state = "this finished run" if finished else "this run"
        raise UsageError(f"output folder {out} already holds {state}; pass --resume to continue it")
    return finished


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir(cfg), trust_remote_code=cfg.trust_remote_code)
    except Exception as err:
        raise UsageError(f"cannot load a tokenizer from {cfg.model} ({type(err).__name__})") from None
    return tok


def build_samples(cfg: TrainConfig, tokenizer, length: int) -> tuple[list[dict], str]:
    from ropestretch.data import PackReport, chat_samples, load_records, text_samples

    records = load_records(cfg.data)
    report = PackReport()
    if cfg.chat:
        rows = chat_samples(records, tokenizer, length, report)
    else:
        rows = text_samples(records, tokenizer, length, cfg.short_docs, cfg.text_field, report)
    if cfg.max_samples:
        rows = rows[: cfg.max_samples]
    line = report.line(length)
    if cfg.short_data:
        rows, short_line = with_short_data(cfg, tokenizer, length, rows)
        line += f"; {short_line}"
    return rows, line


def with_short_data(cfg: TrainConfig, tokenizer, length: int, rows: list[dict]) -> tuple[list[dict], str]:
    """ProLong's short-data share: rows of ``--short-data`` (packed as ``--data`` is) added so that
    they make ``--short-share`` of the training rows, drawn without replacement while they last
    (then again), in an order fixed by ``--seed``; every row keeps a sample id of its own."""
    import numpy as np

    from ropestretch.data import PackReport, load_records, text_samples

    report = PackReport()
    short = text_samples(load_records(cfg.short_data), tokenizer, length, cfg.short_docs, cfg.text_field, report)
    if not short:
        raise UsageError(f"--short-data {cfg.short_data} holds no text for a {length}-token row")
    wanted = round(cfg.short_share * len(rows) / (1 - cfg.short_share))
    rng = np.random.default_rng(cfg.seed)
    picks = np.concatenate([rng.permutation(len(short)) for _ in range(-(-wanted // len(short)))])[:wanted]
    start = 1 + max((r.get("sample_id", -1) for r in rows), default=-1)
    extra = [{**short[int(i)], "sample_id": start + k} for k, i in enumerate(picks)]
    return rows + extra, (f"short data: {len(extra)} rows ({100 * len(extra) / max(1, len(rows) + len(extra)):.0f}% "
                          f"of {len(rows) + len(extra)}) from {len(short)} packed from {cfg.short_data}")


def load_model(cfg: TrainConfig, raw_config: dict, scaled):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ropestretch.rope.export import exported_config

    exported = exported_config(raw_config, scaled)
    exported.pop("transformers_version", None)
    changed = {k: v for k, v in exported.items() if raw_config.get(k) != v}
    try:  # the config exactly as the written checkpoint will hold it, read as transformers reads it
        from transformers import CONFIG_MAPPING

        if exported.get("model_type") in CONFIG_MAPPING:
            config = CONFIG_MAPPING[exported["model_type"]].from_dict(exported)
        else:  # a model type of the hub's own code
            config = AutoConfig.from_pretrained(model_dir(cfg), trust_remote_code=cfg.trust_remote_code, **changed)
    except Exception as err:
        raise UsageError(f"transformers cannot read the extended config of {cfg.model}: "
                         f"{first_line(err)}") from None
    try:
        extra = {"device_map": cfg.device_map} if cfg.device_map else {}
        if cfg.attn_implementation != "auto":
            extra["attn_implementation"] = cfg.attn_implementation
        model = AutoModelForCausalLM.from_pretrained(model_dir(cfg), config=config, use_safetensors=True,
                                                     dtype=torch.float32, trust_remote_code=cfg.trust_remote_code, **extra)
    except Exception as err:  # missing, truncated or mismatched weights: one line, never a traceback
        raise UsageError(f"cannot load safetensors weights from {cfg.model}: {first_line(err)}") from None
    if cfg.lora:
        model = wrap_lora(cfg, model)
    return model


class _TrainerNoiseFilter(logging.Filter):
    """Trainer's resume reports tied weights (a tied ``lm_head.weight``) as missing from the checkpoint,
    where they are not stored twice, and, where checkpoints are saved within one mtime tick, that it
    orders them by number instead: neither line says anything to the user, so both are dropped."""

    def __init__(self, model):
        super().__init__()
        names = set(dict(model.named_parameters()))
        self.tied = {k for k in model.state_dict() if k not in names} - set(dict(model.named_buffers()))

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith("mtime may not be reliable"):
            return False
        if not text.startswith("There were missing keys in the checkpoint model loaded:"):
            return True
        missing = set(re.findall(r"'([^']+)'", text))
        return not (missing and missing <= {k.removeprefix("base_model.model.") for k in self.tied} | self.tied)


def load_teacher(cfg: TrainConfig, dtype):
    """The original model as it was pre-trained (its own RoPE, no scaling), frozen: the teacher of ``distill``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir(cfg), use_safetensors=True, dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code)
    return model.eval().requires_grad_(False)


def distill_trainer_class(teacher, weight: float):
    """A ``Trainer`` whose loss adds ``weight`` x KL(teacher || model) per predicted token.

    Short-to-long distillation (as in LongReD, Dong et al., ACL 2025, arXiv 2502.07365): the
    teacher reads each row at its own positions ``0 .. N-1`` and frequencies, where it is at home;
    the model being extended reads the same tokens at the manipulated positions (CREAM, PoSE, ...)
    and its scaled frequencies, and is pulled towards the teacher's whole distribution at every
    token whose label counts, not only towards the label. The KL is summed over those tokens and
    divided as the cross-entropy is (by ``num_items_in_batch`` under gradient accumulation).
    """
    import torch
    from transformers import Trainer

    class DistillTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            device = outputs.logits.device
            if next(teacher.parameters()).device != device:
                teacher.to(device)
            with torch.no_grad():
                target = teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")).logits
            counted = inputs["labels"][:, 1:] != -100  # logits at t predict the label at t + 1
            student = outputs.logits[:, :-1][counted].float().log_softmax(-1)
            teacher_lp = target[:, :-1][counted].float().log_softmax(-1)
            kl = torch.nn.functional.kl_div(student, teacher_lp, log_target=True, reduction="sum")
            total = num_items_in_batch if num_items_in_batch is not None else counted.sum().clamp(min=1)
            loss = loss + weight * kl / total
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


def wrap_lora(cfg: TrainConfig, model):
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise UsageError(f"LoRA target modules not in this model: {', '.join(missing)}")
    extra = None
    if cfg.lora_embed_norm:
        extra = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                        if "norm" in type(module).__name__.lower() or name.endswith("embed_tokens")})
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, modules_to_save=extra, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers 5 for a property it has renamed
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last) is readable.

    Incomplete ones (a kill mid-save) are moved aside to ``<folder>.incomplete/``, not deleted,
    and out of the folder whose old checkpoints Trainer rotates away.
    """
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("checkpoint-*"):
        if path.is_dir() and path.name.split("-")[-1].isdigit():
            found.append((int(path.name.split("-")[-1]), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())["global_step"]
            return path
        except (OSError, ValueError, KeyError):
            aside_dir = folder.with_name(folder.name + ".incomplete")
            aside_dir.mkdir(exist_ok=True)
            aside, n = aside_dir / path.name, 1
            while aside.exists():
                aside, n = aside_dir / f"{path.name}.{n}", n + 1
            path.rename(aside)
    return None


def _callbacks(cfg: TrainConfig, out: Path, tokens_per_step: int):
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):
        """JSON-lines log and a progress bar with loss and tokens/s (main process only)."""

        def __init__(self):
            self.bar = None
            self.last_time = None
            self.last_step = 0
            self.rate = 0.0
            self.start = time.time()

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero and cfg.progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                                dynamic_ncols=True)
            self.last_time, self.last_step = time.time(), state.global_step

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            steps = state.global_step - self.last_step
            if steps > 0 and now > self.last_time:
                self.rate = 0.8 * self.rate + 0.2 * steps * tokens_per_step / (now - self.last_time) \
                    if self.rate else steps * tokens_per_step / (now - self.last_time)
            self.last_time, self.last_step = now, state.global_step
            if self.bar is not None:
                self.bar.update(steps)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            record = {"step": state.global_step, **{k: v for k, v in logs.items()}, "tokens_per_s": round(self.rate, 1),
                      "elapsed_s": round(time.time() - self.start, 3)}
            append_jsonl(out / LOG_FILE, record)
            if self.bar is not None and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{self.rate:,.0f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    return [Reporter()]


@dataclass
class TrainResult:
    out: Path
    # the trained model in memory (merged when LoRA is merged), computing what the saved checkpoint
    # computes when loaded in its dtype: fp32 weights, without the mixed-precision wrapper training
    # ran under; None on other ranks
    model: Any
    already_done: bool = False  # --resume found the run finished and changed nothing


def train(cfg: TrainConfig) -> TrainResult:
    """Run the recipe; returns the output folder holding the extended checkpoint and the model.

    The main process holds the output folder's lock throughout (a second ``train`` on it is refused),
    and nothing marks the folder as this run until every argument has been accepted by everything
    that uses it, transformers' ``TrainingArguments`` and ``Trainer`` included.
    """
    import contextlib

    from ropestretch.locks import folder_lock

    from ropestretch.paths import named_path, outside
    from ropestretch.rope.export import quiet_engine_keys

    quiet_engine_keys()
    named_path(cfg.out, "--out")
    outside(cfg.out, {"model folder": model_dir(cfg), "data folder": cfg.data if Path(cfg.data).is_dir() else None},
            "--out")
    main_process = int(os.environ.get("RANK", "0")) == 0
    with folder_lock(cfg.out, "train") if main_process else contextlib.nullcontext():
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    import torch
    from transformers import PrinterCallback, ProgressCallback, Trainer, set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar: ours

    from ropestretch.positions import PositionCollator, sample_length
    from ropestretch.rope.export import config_json, exported_config, metadata

    # 1. everything that can be wrong with the request is checked before anything is written;
    # the output folder by the main process only (the others would see the run record it writes)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed, main_process = world > 1, int(os.environ.get("RANK", "0")) == 0
    if main_process and check_out_dir(cfg):
        steps = json.loads((Path(cfg.out) / METADATA).read_text()).get("steps")
        print(f"ropestretch train: {cfg.out} holds this run, finished ({steps} steps); nothing to do", file=sys.stderr)
        return TrainResult(Path(cfg.out), None, already_done=True)
    raw_config, rope, scaled = scaled_rope(cfg)
    rows = row_length(cfg, rope.window)
    length = sample_length(cfg.positions, rows, cfg.target)
    if cfg.distill and length > rope.window:
        raise UsageError(f"--distill needs rows inside the original window ({rope.window} tokens), which the "
                         f"original model can read; positions {cfg.positions} trains on {length}-token rows")
    tokenizer = load_tokenizer(cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    collator = PositionCollator(cfg.positions, rows, cfg.target, seed=cfg.seed, pad_token_id=pad,
                                short_share=cfg.mixed_window, **position_options(cfg))  # validates the options too
    rows, data_line = build_samples(cfg, tokenizer, length)
    set_seed(cfg.seed)
    from ropestretch.hardware import warn_if_emulated

    warn_if_emulated(placement_of(cfg))
    model = load_model(cfg, raw_config, scaled)

    out = Path(cfg.out)

    # 2. Trainer
    where = placement_of(cfg)
    cuda = where.device.startswith("cuda")
    precision = where.dtype
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * length
    try:
        args = training_arguments(cfg, out, length, precision, cuda, distributed)
    except (ValueError, TypeError) as err:  # a scheduler name, a DeepSpeed file, ... transformers refuses
        raise UsageError(f"transformers refuses these training arguments: {first_line(err)}") from None
    from datasets import Dataset

    trainer_class = Trainer
    if cfg.distill:
        teacher = load_teacher(cfg, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32))
        trainer_class = distill_trainer_class(teacher, cfg.distill)
    try:
        trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collator,
                                callbacks=_callbacks(cfg, out, tokens_per_step))
    except (ValueError, TypeError, RuntimeError) as err:
        raise UsageError(f"transformers' Trainer refuses this run: {first_line(err)}") from None
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    # every argument has been accepted: from here on, the folder holds this run
    if main_process and not (out / RUN_FILE).exists():
        out.mkdir(parents=True, exist_ok=True)
        write_whole(out / RUN_FILE, json.dumps({"identity": cfg.identity(), "window": rope.window}, indent=2))
    if main_process:
        print(f"ropestretch train: {cfg.positions} positions x {cfg.scaling} scaling, window {rope.window} -> "
              f"{cfg.target}, rows of {length} tokens; {data_line}", file=sys.stderr)
    resume_from, earlier = None, 0.0
    if cfg.resume:
        resume_from = latest_complete_checkpoint(out / CHECKPOINTS) if main_process else None
        if distributed:
            import torch.distributed as dist

            holder = [str(resume_from) if resume_from else None]
            if dist.is_available() and dist.is_initialized():
                dist.broadcast_object_list(holder, src=0)
            resume_from = Path(holder[0]) if holder[0] else None
        if main_process:
            print(f"resuming from {resume_from}" if resume_from else "no complete checkpoint: starting over",
                  file=sys.stderr)
            done = json.loads((resume_from / "trainer_state.json").read_text())["global_step"] if resume_from else 0
            kept = [r for r in _read_log(out) if r.get("step", 0) <= done]  # drop what the lost steps logged
            (out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
            earlier = logged_seconds(kept)
    quiet = _TrainerNoiseFilter(trainer.model)
    loggers = [logging.getLogger(name) for name in ("transformers.trainer", "transformers.trainer_utils")]
    for logger in loggers:
        logger.addFilter(quiet)
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except RuntimeError as err:  # torch.save's own words for a write that failed (a full disk among them)
        if "file write failed" in str(err) or "No space left" in str(err):
            import errno

            raise OSError(errno.ENOSPC, f"writing a checkpoint failed ({first_line(err)})", str(out / CHECKPOINTS)) \
                from err
        raise
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
    seconds = time.time() - started

    # 3. the checkpoint
    if not trainer.is_world_process_zero():
        return TrainResult(out, None)
    # the model as the checkpoint holds it: mixed precision left accelerate's autocast wrapper on its
    # forward (bf16 matmuls over fp32 weights), which the saved weights do not carry
    final = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if cfg.lora and cfg.merge_lora:
        final = final.merge_and_unload()
    staging = out / ".final.partial"
    if staging.exists():
        shutil.rmtree(staging)
    final.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if not (cfg.lora and not cfg.merge_lora):
        saved = json.loads((staging / "config.json").read_text())
        (staging / "config.json").write_text(config_json(exported_config(saved, scaled)))
    losses = [r for r in _read_log(out) if "loss" in r]
    record = metadata(
        scaled, positions=cfg.positions, position_options=position_options(cfg), sample_length=length,
        training=dataclasses.asdict(cfg), final_loss=losses[-1]["loss"] if losses else None,
        steps=trainer.state.global_step, train_tokens=tokens_per_step * cfg.steps,
        train_seconds=round(earlier + seconds, 2), train_loss=result.training_loss, data=data_line,
        world_size=trainer.args.world_size,
        precision=precision,  # what --dtype auto resolved to on this machine
        # batches the loader collated in this process (it may collate one ahead of the last step)
        **({"mixed_window": {"short_share": cfg.mixed_window, "batches_collated": dict(collator.counts),
                             "switch_at": rope.window}} if cfg.mixed_window else {}),
    )
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    staging.rmdir()
    (out / METADATA).write_text(json.dumps(record, indent=2) + "\n")  # written last: the run is done
    return TrainResult(out, final)


def training_arguments(cfg: TrainConfig, out: Path, length: int, precision: str, cuda: bool, distributed: bool):
    """transformers' ``TrainingArguments`` for the run (checkpoints under ``out/checkpoints``)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out / CHECKPOINTS), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.schedule, weight_decay=cfg.weight_decay, optim="adamw_torch",
        bf16=precision == "bf16", fp16=precision == "fp16", **_checkpointing_arg(cfg.gradient_checkpointing),
        seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit or None, report_to=[],
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True, use_cpu=not cuda,
        deepspeed=cfg.deepspeed, ddp_find_unused_parameters=False,
        ddp_backend=None if cuda else ("gloo" if distributed else None),
    )


def _checkpointing_arg(on: bool) -> dict[str, bool]:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    import inspect

    from transformers import TrainingArguments

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(
        TrainingArguments.__init__).parameters else "gradient_checkpointing"
    return {name: on}


def logged_seconds(log: list[dict]) -> float:
    """The seconds a run's logged steps took, over every process that ran them: a resumed run's
    clock (``elapsed_s``) restarts, so each earlier process adds its last kept record's time (the
    steps it lost to the interruption were dropped from the log, and are not counted)."""
    total, last = 0.0, 0.0
    for record in log:
        elapsed = record.get("elapsed_s")
        if elapsed is None:
            continue
        if elapsed < last:
            total += last
        last = elapsed
    return total + last


def _read_log(out: Path) -> list[dict]:
    from ropestretch.jsonl import read_jsonl

    return read_jsonl(out / LOG_FILE)
