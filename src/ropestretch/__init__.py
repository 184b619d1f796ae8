"""ropestretch: extend the context window of pre-trained RoPE language models.

Modules, one job each:

- :mod:`ropestretch.rope`: RoPE frequency scalings (PI, NTK, dynamic NTK, YaRN, DPRoPE),
  the rotary-angle distributions behind DPRoPE, and export to standard Hugging Face configs.
- :mod:`ropestretch.positions`: training-time position ids (CREAM, PoSE, RandPos, full length).
- :mod:`ropestretch.cli`: the ``ropestretch`` command.
"""

from ropestretch.errors import UsageError

__version__ = "0.1.0"
__all__ = ["UsageError", "__version__"]
