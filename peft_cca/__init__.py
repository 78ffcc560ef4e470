"""peft-cca: Constructive Circuit Amplification as a PEFT method.

Importing this package registers the ``"cca"`` method with peft, so ``get_peft_model(model,
CCAConfig(circuit=...))`` and ``PeftModel.from_pretrained(base, "adapter")`` work as for LoRA. The import itself is
cheap (no torch): names are loaded on first use and registration happens as peft loads (see ``registration.py``),
so the ``peft-cca`` command answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from peft_cca.registration import register_when_peft_loads

__version__ = "0.1.0"

# public name -> the module that defines it, imported on first access (PEP 562)
_EXPORTS = {
    "ArchSpec": "peft_cca.arch",
    "Layout": "peft_cca.arch",
    "ModelShape": "peft_cca.arch",
    "UnsupportedModelError": "peft_cca.arch",
    "describe": "peft_cca.arch",
    "Circuit": "peft_cca.circuit",
    "CircuitShapeError": "peft_cca.circuit",
    "CCAConfig": "peft_cca.config",
    "CCALayer": "peft_cca.layer",
    "QuantizedMergeError": "peft_cca.layer",
    "CCAModel": "peft_cca.model",
}
__all__ = [
    "ArchSpec",
    "CCAConfig",
    "CCALayer",
    "CCAModel",
    "Circuit",
    "CircuitShapeError",
    "Layout",
    "ModelShape",
    "QuantizedMergeError",
    "UnsupportedModelError",
    "describe",
]

if TYPE_CHECKING:
    from peft_cca.arch import ArchSpec, Layout, ModelShape, UnsupportedModelError, describe
    from peft_cca.circuit import Circuit, CircuitShapeError
    from peft_cca.config import CCAConfig
    from peft_cca.layer import CCALayer, QuantizedMergeError
    from peft_cca.model import CCAModel


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'peft_cca' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


register_when_peft_loads()
