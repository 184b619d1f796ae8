"""Writing GGUF files with a RoPE in llama.cpp's terms (:mod:`ropestretch.gguf.keys`): a GGUF
file copied with a scaled RoPE (every tensor, quantized or not, byte for byte, and every other
metadata field unchanged), the writer every GGUF output goes through (a temporary file linked into
place, never over a file a user has), and the source an ``apply`` to ``.gguf`` copies from."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ropestretch.errors import UsageError
from ropestretch.gguf.keys import ARCHITECTURES, ROPE_FREQS, GgufRope, gguf_rope
from ropestretch.rope.scalings import Scaled


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


@contextmanager
def gguf_writer(dst: Path, arch: str, **kwargs) -> Iterator:
    """A ``gguf.GGUFWriter`` on a temporary file beside ``dst``, renamed to ``dst`` when the block
    completes; on any error the partial file is removed and ``dst`` never appears."""
    import gguf

    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        raise UsageError(f"{tmp} is in the way of writing {dst}; move it or choose another --out")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create the folder of {dst}: {err.strerror}") from None
    writer = gguf.GGUFWriter(str(tmp), arch, **kwargs)
    try:
        yield writer
        writer.close()
        _publish(tmp, dst)
    except BaseException:
        try:
            writer.close()  # flushing onto a full disk fails again: the partial file goes all the same
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        raise


def _publish(tmp: Path, dst: Path) -> None:
    """``tmp`` renamed to ``dst`` unless ``dst`` appeared meanwhile (a hard link cannot overwrite)."""
    appeared = UsageError(f"{dst} appeared while it was being written; it is left as it is")
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise appeared from None
    except OSError:  # a filesystem without hard links
        if dst.exists():
            raise appeared from None
        tmp.rename(dst)
        return
    tmp.unlink()


def add_rope_keys(writer, arch: str, rope: GgufRope) -> None:
    """Write ``rope``'s metadata values under ``{arch}.``."""
    import gguf

    for key, value in rope.keys.items():
        kind = (gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.UINT32
                if isinstance(value, int) else gguf.GGUFValueType.FLOAT32)
        writer.add_key_value(f"{arch}.{key}", value, kind)


def write_scaled_gguf(src: str | os.PathLike, dst: str | os.PathLike, scaled: Scaled, reader=None) -> GgufRope:
    """Copy the GGUF file ``src`` to ``dst`` (which must not exist) with ``scaled``'s RoPE; ``reader``:
    a ``gguf.GGUFReader`` already open on ``src``, if the caller has one. The file is written beside
    ``dst`` under a temporary name and renamed when complete."""
    import gguf

    src, dst = Path(src), Path(dst)
    reader = reader or gguf.GGUFReader(str(src))
    arch = writable_architecture(reader, src.name)
    rope = gguf_rope(scaled)
    with gguf_writer(dst, arch, endianess=reader.endianess) as writer:
        alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
        if alignment is not None:  # the tensors' data is laid out at the source's alignment, as its key says
            writer.data_alignment = int(alignment.contents())
        for item in reader.fields.values():
            if item.name == gguf.Keys.General.ARCHITECTURE or item.name.startswith("GGUF."):
                continue  # written by the writer itself
            if item.name.removeprefix(f"{arch}.") in rope.keys or item.name.startswith(f"{arch}.rope.scaling."):
                continue  # replaced below: a scaling the source had is not kept beside the new one
            kind = item.types[0]
            sub = item.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(item.name, item.contents(), kind, sub_type=sub)
        add_rope_keys(writer, arch, rope)
        tensors = [t for t in reader.tensors if not (t.name == ROPE_FREQS and rope.freq_factors is not None)]
        write_tensors(writer, [(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type) for t in tensors],
                      lambda i: tensors[i].data, rope, reader.endianess)
    return rope


def write_tensors(writer, infos: list[tuple], data: Callable[[int], np.ndarray], rope: GgufRope,
                  endianess=None) -> None:
    """The rest of a GGUF file whose metadata ``writer`` holds: tensor infos (name, numpy-side shape,
    dtype, bytes, GGML type), then each tensor's data, ``data(i)``, made one at a time (in
    ``endianess``, default the machine's), and ``rope``'s rope_freqs tensor last where it has one."""
    import gguf

    factors = rope.freq_factors
    for info in infos:
        writer.add_tensor_info(*info)
    if factors is not None:
        writer.add_tensor_info(ROPE_FREQS, factors.shape, factors.dtype, factors.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i in range(len(infos)):
        writer.write_tensor_data(data(i), tensor_endianess=endianess)
    if factors is not None:
        writer.write_tensor_data(factors)


def writable_source(model: str):
    """The .gguf file a GGUF output is copied from and a reader open on it (None when ``model`` is no
    GGUF file), or one line on why ropestretch cannot write it back."""
    from ropestretch.checkpoints import BUNDLED, bundled_file, is_gguf
    from ropestretch.gguf.read import check_gguf

    if model in BUNDLED:
        source = bundled_file(model)
    elif is_gguf(model) and Path(model).is_file():
        source = Path(model)
    else:
        return None  # a checkpoint folder or hub id: applied, then converted
    reader = check_gguf(source)  # a file cut short is one line, before anything is written
    writable_architecture(reader, source.name)
    return source, reader
