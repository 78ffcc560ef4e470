"""Stage 3, amplify: gradient steps on the logit-difference loss, applied only to the circuit (``CCATrainer``).

One job per module: :mod:`~peft_cca.amplify.arguments` (``CCATrainingArguments``, the paper's defaults),
:mod:`~peft_cca.amplify.records` (text or token-id rows, the padded dataset, the collator),
:mod:`~peft_cca.amplify.loss` (the logit difference), :mod:`~peft_cca.amplify.micro_batch` (sizes that never change
the gradient), :mod:`~peft_cca.amplify.cca_trainer` (``CCATrainer``) and :mod:`~peft_cca.amplify.trainer` (CCA's lr
sweep that ``peft-cca amplify`` runs, through :mod:`peft_cca.sweep`, which the LoRA baseline shares: validation,
the best step and the forgetting bound, for any ``Trainer``). They import the method package, the runtime, the tasks,
evaluation and the sweep, never a later stage. Importing this package is cheap: names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CCATrainer": "peft_cca.amplify.cca_trainer",
    "CCATrainingArguments": "peft_cca.amplify.arguments",
    "BestStepCallback": "peft_cca.sweep.callbacks",
    "exact_match_callback": "peft_cca.sweep.callbacks",
    "PivotCollator": "peft_cca.amplify.records",
    "PivotDataset": "peft_cca.amplify.records",
    "amplify": "peft_cca.amplify.trainer",
    "cca_training_arguments": "peft_cca.amplify.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
