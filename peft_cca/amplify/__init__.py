"""Stage 3, amplify: gradient steps on the logit-difference loss, applied only to the circuit (``CCATrainer``).

:mod:`~peft_cca.amplify.trainer` holds the ``transformers.Trainer`` subclass, the pivot dataset and collator, the
micro-batching that never changes the gradient, the best-step callback and :func:`amplify`, the lr sweep that
``peft-cca amplify`` runs. It imports the method package, the runtime, the tasks and evaluation (validation),
never a later stage. Importing this package is cheap: names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = ("CCATrainer", "BestStepCallback", "PivotCollator", "PivotDataset", "amplify", "cca_training_arguments")
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("peft_cca.amplify.trainer"), name)
