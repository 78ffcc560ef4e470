"""The CCA PEFT method, in PEFT's own shape: ``config``, ``layer``, ``model``, plus the circuit and architecture facts.

A training script needs only this package (and peft, torch, transformers): it imports nothing of the pipeline that
finds circuits. Importing it registers ``"cca"`` with peft, here and only here, once every module the registration
needs has loaded; ``peft_cca`` imports this package as soon as peft loads (see ``peft_cca._peft_hook``).
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from peft_cca.method.arch import ArchSpec, Layout, ModelShape, UnsupportedModelError, describe
from peft_cca.method.circuit import Circuit, CircuitShapeError
from peft_cca.method.config import CCAConfig
from peft_cca.method.layer import CCALayer, QuantizedMergeError
from peft_cca.method.model import CCAModel
from peft_cca.method.peft_type import CCA_PEFT_TYPE

__all__ = [
    "CCA_PEFT_TYPE",
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

if CCA_PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:  # idempotent: a reload or a peft that knows CCA
    register_peft_method(name="cca", config_cls=CCAConfig, model_cls=CCAModel)
