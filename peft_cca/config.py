"""CCAConfig: which circuit to amplify and which weights of an MLP neuron to train."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig

from peft_cca.arch import MLP_TARGETS
from peft_cca.circuit import Circuit
from peft_cca.peft_type import CCA_PEFT_TYPE


@dataclass
class CCAConfig(PeftConfig):
    """Configuration of a Constructive Circuit Amplification adapter.

    Args:
        circuit: the components to update, a :class:`~peft_cca.Circuit` or its ``to_dict()`` form. It is
            stored in ``adapter_config.json`` so that a saved adapter says exactly what it changed.
        mlp_targets: which weights of a selected MLP neuron get a trainable delta: ``"up"`` (the up
            projection row; the authors' choice), ``"gate"`` (the gate projection row) and/or ``"down"``
            (the down projection column).
        target_modules: filled in from the circuit; the fully qualified names of the adapted modules.
    """

    circuit: dict[str, Any] | None = field(default=None, metadata={"help": "The circuit (Circuit.to_dict())."})
    mlp_targets: list[str] = field(default_factory=lambda: ["up"], metadata={"help": f"Subset of {MLP_TARGETS}."})
    target_modules: list[str] | None = field(default=None, metadata={"help": "Derived from the circuit."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = CCA_PEFT_TYPE
        if isinstance(self.circuit, Circuit):
            self.circuit = self.circuit.to_dict()
        if self.circuit is None:
            raise ValueError("CCAConfig needs a circuit: CCAConfig(circuit=Circuit.load('circuit.json'))")
        Circuit.from_dict(self.circuit)  # validate early: format, kinds, indices within the recorded shape
        self.mlp_targets = list(self.mlp_targets)
        unknown = set(self.mlp_targets) - set(MLP_TARGETS)
        if unknown or not self.mlp_targets:
            raise ValueError(f"mlp_targets must be a non-empty subset of {MLP_TARGETS}, got {self.mlp_targets}")

    def get_circuit(self) -> Circuit:
        return Circuit.from_dict(self.circuit)
