"""Where and in what precision a model runs: ``--device``, ``--dtype``, ``--device-map`` and
``--attn-implementation``, shared by ``train``, ``eval`` and the lm-evaluation-harness bridge.

Each is checked against the machine before anything is loaded or written, so a request it cannot
serve (``--device cuda`` without CUDA, bf16 on a GPU without it, flash attention not installed)
is one clear line.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

from ropestretch.errors import UsageError

DTYPE_NAMES = ("auto", "fp32", "bf16", "fp16")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flex_attention")


@dataclass(frozen=True)
class Placement:
    """A resolved request: ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``), ``dtype`` name,
    ``device_map`` (None or ``auto``) and the attention implementation."""

    device: str
    dtype: str
    device_map: str | None = None
    attn_implementation: str = "auto"

    @property
    def torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained``."""
        kwargs: dict[str, Any] = {"dtype": self.torch_dtype}
        if self.attn_implementation != "auto":  # auto: transformers' choice, sdpa wherever the model has it
            kwargs["attn_implementation"] = self.attn_implementation
        if self.device_map:
            kwargs["device_map"] = self.device_map
        return kwargs

    def describe(self) -> str:
        where = f"device_map {self.device_map}" if self.device_map else self.device
        return f"{where}, {self.dtype}, {self.attn_implementation} attention"


def resolve_device(name: str = "auto") -> str:
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
                             "use --device cpu or auto")
        if ":" in name:
            index = name.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        return name
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("--device mps: this machine has no Apple GPU; use --device cpu or auto")
        return name
    raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


PROBE_ENV = "ROPESTRETCH_CPU_BF16"


def cpu_bf16() -> bool:
    """True where torch reports native bf16 on this CPU: AMX tiles or AVX512-BF16 (where it has
    neither, torch emulates bf16 arithmetic, several times slower than fp32).

    ``ROPESTRETCH_CPU_BF16=0`` (or ``1``) overrides the probe, so that ``--dtype auto`` resolves as on
    a CPU without (or with) native bf16: a run reproduces one made on another kind of CPU, and the
    test suite pins the answer (and runs the tests that depend on it under both)."""
    import os

    import torch

    forced = os.environ.get(PROBE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(getattr(torch, "cpu", None), probe, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:  # a build without the probe's kernels
            continue
    return False


def resolve_dtype(name: str, device: str) -> str:
    """``auto`` is bf16 on a CUDA GPU that has it and on a CPU with native bf16 (:func:`cpu_bf16`),
    else fp32; bf16 and fp16 are checked against the device. bf16 asked for on a CPU without it
    runs, with one warning line (:func:`warn_if_emulated`)."""
    import torch

    name = (name or "auto").strip()
    if name not in DTYPE_NAMES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    cuda = device.startswith("cuda")
    if name == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device == "cpu" and cpu_bf16() else "fp32"
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use fp16 or fp32")
    return name


def warn_if_emulated(where: Placement) -> None:
    """One warning line when bf16 is to run on a CPU that emulates it; said as the model loads, so
    a command refused for another reason prints only its error."""
    if where.dtype == "bf16" and where.device == "cpu" and not cpu_bf16():
        print("ropestretch: warning: this CPU has no native bf16 (no AMX or AVX512-BF16, as torch reports it), so "
              "torch emulates bf16 here; --dtype fp32 will be faster", file=sys.stderr)


def check_attention(name: str, device: str) -> str:
    name = (name or "auto").strip()
    if name not in ATTENTION:
        raise UsageError(f"--attn-implementation must be one of {', '.join(ATTENTION)}, got {name!r}")
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise UsageError("--attn-implementation flash_attention_2 needs the flash-attn package "
                             "(pip install flash-attn); sdpa is the default")
        if not device.startswith("cuda"):
            raise UsageError("--attn-implementation flash_attention_2 runs on CUDA only")
    return name


def placement(device: str = "auto", dtype: str = "auto", device_map: str | None = None,
              attn_implementation: str = "auto") -> Placement:
    """Check a request against this machine (see the module docstring)."""
    resolved = resolve_device(device)
    if device_map not in (None, "", "auto"):
        raise UsageError(f"--device-map takes auto (accelerate places the layers), got {device_map!r}")
    if device_map and importlib.util.find_spec("accelerate") is None:
        raise UsageError("--device-map auto needs accelerate: pip install accelerate")
    return Placement(resolved, resolve_dtype(dtype, resolved), device_map or None,
                     check_attention(attn_implementation, resolved))


def add_arguments(parser, dtype_help: str = "auto (bf16 on a GPU that supports it and on a CPU with AMX or AVX512-BF16, "
                  "else fp32), fp32, bf16 or fp16") -> None:
    """The four options on an argparse parser."""
    parser.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--dtype", default="auto", metavar="DTYPE", help=dtype_help)
    parser.add_argument("--device-map", default=None, metavar="auto",
                        help="auto: spread a model that does not fit one GPU over the devices (accelerate)")
    parser.add_argument("--attn-implementation", default="auto", metavar="IMPL",
                        help="auto (sdpa wherever the model supports it, else eager), sdpa, eager, "
                        "flash_attention_2 (if installed) or flex_attention")
