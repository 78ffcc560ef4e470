"""The shared runtime below every stage: where a model runs, loading it by name, batched generation, run folders.

- :mod:`~peft_cca.runtime.placement`: device, dtype, attention kernel, processes (``--device``, ``--dtype``, ...);
- :mod:`~peft_cca.runtime.loading`: offline names, hub ids and local paths to a model and tokenizer; adapters;
- :mod:`~peft_cca.runtime.generation`: batched, cached, seeded decoding with per-row stops;
- :mod:`~peft_cca.runtime.runfolder`: atomic writes, settings that must match on resume, output checks.

It imports the method package (to load CCA adapters) and nothing of the pipeline above it. Importing this package
is cheap; ``peft_cca.runtime.<name>`` of the 0.1 module ``peft_cca/runtime.py`` still resolves, with a
DeprecationWarning, to :mod:`peft_cca.runtime.placement`.
"""

from __future__ import annotations

from typing import Any

from peft_cca._moved import forward_attribute


def __getattr__(name: str) -> Any:
    return forward_attribute(__name__, "peft_cca.runtime.placement", name)
