"""Measuring a model: exact match on the target task, and what an update may have cost elsewhere.

This layer sits below the stages because stage 3 (and the LoRA baseline) validate with it; it imports the runtime
and the tasks, never a stage. Importing the package is cheap: names load on first use.

- :mod:`~peft_cca.evaluation.exact_match`: per group and macro, resumable, split across processes;
- :mod:`~peft_cca.evaluation.retention`: exact match on reasoning-gym tasks that are not the target;
- :mod:`~peft_cca.evaluation.drift`: KL(base || updated) on neutral text;
- :mod:`~peft_cca.evaluation.lm_eval_bridge`: lm-eval's ``simple_evaluate`` on the model object;
- :mod:`~peft_cca.evaluation.model_eval`: all of it for one model (what ``peft-cca evaluate`` writes).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate_exact_match": "exact_match",
    "on_main": "exact_match",
    "prepare_cache": "exact_match",
    "validation_scorer": "exact_match",
    "RETENTION_TASKS": "retention",
    "retention": "retention",
    "retention_problems": "retention",
    "NEUTRAL_TEXTS": "drift",
    "kl_drift": "drift",
    "lm_eval_bridge": "lm_eval_bridge",
    "adapter_summary": "model_eval",
    "evaluate_model": "model_eval",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "LM_EVAL_TASKS":  # the 0.1 module re-exported it; its home is peft_cca.defaults
        from peft_cca.defaults import LM_EVAL_TASKS

        return LM_EVAL_TASKS
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
