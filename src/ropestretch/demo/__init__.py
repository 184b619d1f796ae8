"""``ropestretch demo``: the whole method on the shipped base model, end to end on CPU.

From the small base model (window N = 256) to L = 2048 (8x):

- without training: ``yarn`` and ``dprope`` scaling (``ropestretch apply``; ``--all`` adds ``linear``);
- fine-tuned inside N = 256: ``pose`` and ``cream`` positions under ``yarn``, ``cream`` under
  ``dprope`` (``--all`` adds both under ``linear``); and the ``full``-length baseline at L, for cost.
  Every fine-tuned variant gets the same token budget;
- every variant (and the base, unextended) evaluated at 256 .. 2048: passkey, needle grid,
  LongChat-Lines, key-value retrieval by position, perplexity; and at 4096, beyond L, passkey (8
  samples per depth, not 20) and perplexity only (one 4096-token sample holds more tokens than one
  at each of 256 .. 2048 together, so two tests, and fewer passkeys, show the tail);
- ``report.md`` with the comparison table, the figures and each variant's training cost.

:mod:`.plan` holds what every variant shares, :mod:`.steps` the steps, :mod:`.report` the report.
"""

from ropestretch.demo.plan import BASE_MODEL, DemoPlan, variant_name, variants
from ropestretch.demo.report import summary_table, write_demo_report
from ropestretch.demo.steps import Demo

__all__ = ["BASE_MODEL", "Demo", "DemoPlan", "summary_table", "variant_name", "variants",
           "write_demo_report"]
