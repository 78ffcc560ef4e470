"""peft-cca: Constructive Circuit Amplification as a PEFT method.

Importing this package registers the ``"cca"`` method with peft, so ``get_peft_model(model,
CCAConfig(circuit=...))`` and ``PeftModel.from_pretrained(base, "adapter")`` work as for LoRA.
"""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from peft_cca.arch import ArchSpec, Layout, ModelShape, UnsupportedModelError, describe
from peft_cca.circuit import Circuit, CircuitShapeError
from peft_cca.config import CCAConfig
from peft_cca.layer import CCALayer, QuantizedMergeError
from peft_cca.model import CCAModel
from peft_cca.peft_type import CCA_PEFT_TYPE

__version__ = "0.1.0"

if CCA_PEFT_TYPE not in PEFT_TYPE_TO_TUNER_MAPPING:
    register_peft_method(name="cca", config_cls=CCAConfig, model_cls=CCAModel)

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
