"""peft-cca: Constructive Circuit Amplification as a PEFT method.

Importing this package registers the ``"cca"`` method with peft, so ``get_peft_model(model,
CCAConfig(circuit=...))`` and ``PeftModel.from_pretrained(base, "adapter")`` work as for LoRA. The import itself is
cheap (no torch): names are loaded on first use and the method package :mod:`peft_cca.method`, which registers
``"cca"``, loads as soon as peft does (``_peft_hook.py``), so the ``peft-cca`` command answers ``--help`` at once.
Module paths of the 0.1 layout (``peft_cca.method.config``, ``peft_cca.trainer``, ...) still import, with a
DeprecationWarning naming the new path (``_moved.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from peft_cca import _moved, _peft_hook

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first access (PEP 562)
_EXPORTS = {
    "ArchSpec": "peft_cca.method.arch",
    "Layout": "peft_cca.method.arch",
    "ModelShape": "peft_cca.method.arch",
    "UnsupportedModelError": "peft_cca.method.arch",
    "describe": "peft_cca.method.arch",
    "Circuit": "peft_cca.method.circuit",
    "CircuitShapeError": "peft_cca.method.circuit",
    "CCAConfig": "peft_cca.method.config",
    "CCALayer": "peft_cca.method.layer",
    "QuantizedMergeError": "peft_cca.method.layer",
    "CCAModel": "peft_cca.method.model",
    "CCATrainer": "peft_cca.amplify.cca_trainer",
    "CCATrainingArguments": "peft_cca.amplify.arguments",
    "BestStepCallback": "peft_cca.sweep.callbacks",
    "exact_match_callback": "peft_cca.sweep.callbacks",
    "load_model": "peft_cca.runtime.loading",
    "LocalizeConfig": "peft_cca.localize.run",
    "localize_errors": "peft_cca.localize.run",
    "load_error_localization": "peft_cca.localize.dataset",
    "DCMConfig": "peft_cca.dcm.train",
    "find_circuit": "peft_cca.dcm.find",
    "search_circuits": "peft_cca.dcm.find",
    "load_problems": "peft_cca.tasks",
    "Problem": "peft_cca.tasks.problem",
}
__all__ = [
    "ArchSpec",
    "BestStepCallback",
    "CCAConfig",
    "CCALayer",
    "CCAModel",
    "CCATrainer",
    "CCATrainingArguments",
    "Circuit",
    "CircuitShapeError",
    "DCMConfig",
    "Layout",
    "LocalizeConfig",
    "ModelShape",
    "Problem",
    "QuantizedMergeError",
    "UnsupportedModelError",
    "describe",
    "exact_match_callback",
    "find_circuit",
    "load_error_localization",
    "load_model",
    "load_problems",
    "localize_errors",
    "search_circuits",
]

if TYPE_CHECKING:
    from peft_cca.amplify.arguments import CCATrainingArguments
    from peft_cca.amplify.cca_trainer import CCATrainer
    from peft_cca.dcm.find import find_circuit, search_circuits
    from peft_cca.dcm.train import DCMConfig
    from peft_cca.localize.dataset import load_error_localization
    from peft_cca.localize.run import LocalizeConfig, localize_errors
    from peft_cca.method.arch import ArchSpec, Layout, ModelShape, UnsupportedModelError, describe
    from peft_cca.method.circuit import Circuit, CircuitShapeError
    from peft_cca.method.config import CCAConfig
    from peft_cca.method.layer import CCALayer, QuantizedMergeError
    from peft_cca.method.model import CCAModel
    from peft_cca.runtime.loading import load_model
    from peft_cca.sweep.callbacks import BestStepCallback, exact_match_callback
    from peft_cca.tasks import load_problems
    from peft_cca.tasks.problem import Problem


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'peft_cca' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


_moved.install()
_peft_hook.load_method_when_peft_loads()
