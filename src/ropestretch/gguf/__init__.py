"""GGUF, llama.cpp's format, in one place: reading a file and dequantizing a model
(:mod:`~ropestretch.gguf.read`), the one mapping of a RoPE to llama.cpp's keys
(:mod:`~ropestretch.gguf.keys`), copying a GGUF file with a scaled RoPE (:mod:`~ropestretch.gguf.write`)
and converting a checkpoint folder (:mod:`~ropestretch.gguf.convert`). The rope package computes
frequencies and writes no files."""
