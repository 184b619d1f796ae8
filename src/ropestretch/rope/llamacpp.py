"""A scaled RoPE in llama.cpp's terms, and a GGUF file written with it.

llama.cpp reads a model's RoPE from GGUF metadata and one optional tensor (``gguf`` package's
names): ``{arch}.rope.freq_base``; ``{arch}.rope.scaling.type`` (``none``, ``linear``, ``yarn``)
with ``.factor``, ``.original_context_length`` and YaRN's ``.yarn_beta_fast`` /
``.yarn_beta_slow`` (it computes YaRN's ``1 + 0.1 ln s`` attention scale itself); and
``rope_freqs.weight``, one divisor per rotary pair on the base frequencies (how Llama 3.1's
``llama3`` RoPE is written). :func:`gguf_rope` says each scaling in those terms, natively where
llama.cpp has the scaling and through ``rope_freqs`` where the frequencies are per pair (DPRoPE, a
scaling on top of Llama 3.1's); what llama.cpp cannot express is refused in one line.
:func:`write_scaled_gguf` copies a GGUF file with that RoPE: every tensor, quantized or not, byte
for byte, and every other metadata field unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ropestretch.errors import UsageError
from ropestretch.rope.scalings import Scaled

ARCHITECTURES = ("llama",)  # where llama.cpp applies rope_freqs and these keys as written here
ROPE_FREQS = "rope_freqs.weight"


@dataclass
class GgufRope:
    """Metadata values (key without the ``{arch}.`` prefix -> value) and the per-pair divisors for
    ``rope_freqs.weight`` (None: the file has no such tensor)."""

    keys: dict[str, Any]
    freq_factors: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def gguf_rope(scaled: Scaled) -> GgufRope:
    """``scaled`` as llama.cpp reads it, or a UsageError naming what llama.cpp lacks for it."""
    rope, exported = scaled.rope, scaled.exported
    if scaled.target >= 1 << 32:
        raise UsageError(f"GGUF stores the context length in 32 bits; a target of {scaled.target:,} does not fit")
    keys: dict[str, Any] = {"context_length": int(scaled.target), "rope.freq_base": float(rope.base),
                            "rope.scaling.type": "none", "rope.scaling.factor": 1.0}
    if rope.partial_rotary_factor != 1.0:
        raise UsageError("GGUF output covers models that rotate the whole head; this one rotates "
                         f"{rope.partial_rotary_factor:g} of it")
    if scaled.scaling == "dynamic":
        raise UsageError("llama.cpp has no dynamic NTK: its RoPE is fixed when the model loads. Apply ntk "
                         "(one larger base, the same at every length) or yarn instead")
    if not rope.plain:  # Llama 3.1's llama3, or another scaling already in the model: per-pair divisors
        if abs(scaled.attention_factor - 1.0) > 1e-6:
            raise UsageError(f"{scaled.scaling} on top of the model's {rope.rope_type} RoPE scales attention by "
                             f"{scaled.attention_factor:.4f}, and llama.cpp applies no attention factor together "
                             "with per-pair frequencies; apply linear or dprope instead")
        return GgufRope(keys, np.asarray(scaled.factors, dtype=np.float32))
    if scaled.scaling == "none":
        return GgufRope(keys)
    if scaled.scaling == "linear":
        keys.update({"rope.scaling.type": "linear", "rope.scaling.factor": float(scaled.factor)})
        return GgufRope(keys)
    if scaled.scaling == "ntk":
        keys["rope.freq_base"] = float(exported.base)
        return GgufRope(keys)
    if scaled.scaling == "yarn":
        params = exported.scaling
        keys.update({"rope.scaling.type": "yarn", "rope.scaling.factor": float(params.get("factor", scaled.factor)),
                     "rope.scaling.original_context_length": int(params["original_max_position_embeddings"]),
                     "rope.scaling.yarn_beta_fast": float(params.get("beta_fast", 32.0)),
                     "rope.scaling.yarn_beta_slow": float(params.get("beta_slow", 1.0))})
        expected = 0.1 * np.log(float(keys["rope.scaling.factor"])) + 1.0
        if abs(scaled.attention_factor - expected) > 1e-4:
            raise UsageError(f"yarn's attention factor here is {scaled.attention_factor:.4f}; llama.cpp computes "
                             f"{expected:.4f} (1 + 0.1 ln s) and takes no other")
        return GgufRope(keys)
    if abs(scaled.attention_factor - 1.0) > 1e-6:
        raise UsageError(f"{scaled.scaling} scales attention by {scaled.attention_factor:.4f}, which llama.cpp cannot "
                         "apply together with per-pair frequencies")
    return GgufRope(keys, np.asarray(scaled.factors, dtype=np.float32))


def writable_architecture(reader, name: str) -> str:
    """The architecture of a GGUF file (a ``gguf.GGUFReader``), or one line when ropestretch cannot
    write it back."""
    import gguf

    field_ = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    arch = str(field_.contents()) if field_ is not None else "unknown"
    if arch not in ARCHITECTURES:
        raise UsageError(f"ropestretch writes GGUF files for the {', '.join(ARCHITECTURES)} architecture (Llama, "
                         f"Mistral, SmolLM and their kin); {name} is {arch}")
    return arch


def write_scaled_gguf(src: str | os.PathLike, dst: str | os.PathLike, scaled: Scaled) -> GgufRope:
    """Copy the GGUF file ``src`` to ``dst`` (which must not exist) with ``scaled``'s RoPE. The file
    is written beside ``dst`` under a temporary name and renamed when complete."""
    import gguf

    src, dst = Path(src), Path(dst)
    reader = gguf.GGUFReader(str(src))
    arch = writable_architecture(reader, src.name)
    rope = gguf_rope(scaled)
    values = {f"{arch}.{k}": v for k, v in rope.keys.items()}
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        raise UsageError(f"{tmp} is in the way of writing {dst}; move it or choose another --out")
    writer = gguf.GGUFWriter(str(tmp), arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:  # the tensors' data is laid out at the source's alignment, as its key says
        writer.data_alignment = int(alignment.contents())
    try:
        for item in reader.fields.values():
            if item.name == gguf.Keys.General.ARCHITECTURE or item.name.startswith("GGUF."):
                continue  # written by the writer itself
            if item.name in values or item.name.startswith(f"{arch}.rope.scaling."):
                continue  # replaced below: a scaling the source had is not kept beside the new one
            kind = item.types[0]
            sub = item.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(item.name, item.contents(), kind, sub_type=sub)
        for key, value in values.items():
            kind = (gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.UINT32
                    if isinstance(value, int) else gguf.GGUFValueType.FLOAT32)
            writer.add_key_value(key, value, kind)
        tensors = [t for t in reader.tensors if not (t.name == ROPE_FREQS and rope.freq_factors is not None)]
        for t in tensors:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        if rope.freq_factors is not None:
            writer.add_tensor_info(ROPE_FREQS, rope.freq_factors.shape, rope.freq_factors.dtype,
                                   rope.freq_factors.nbytes, gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        if rope.freq_factors is not None:
            writer.write_tensor_data(rope.freq_factors)
        writer.close()
        tmp.rename(dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return rope
