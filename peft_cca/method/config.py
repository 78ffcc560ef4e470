"""CCAConfig: which circuit to amplify and which weights of an MLP neuron to train."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

from peft_cca.errors import UsageError
from peft_cca.method.arch import MLP_TARGETS
from peft_cca.method.card import write_model_card
from peft_cca.method.circuit import Circuit
from peft_cca.method.peft_type import CCA_PEFT_TYPE


@dataclass
class CCAConfig(PeftConfig):
    """Configuration of a Constructive Circuit Amplification adapter.

    Args:
        circuit: the components to update: a :class:`~peft_cca.Circuit`, its ``to_dict()`` form, or the path of a
            ``circuit.json`` (what ``peft-cca circuit`` writes). It is stored in ``adapter_config.json`` so that a
            saved adapter says exactly what it changed.
        mlp_targets: which weights of a selected MLP neuron get a trainable delta: ``"up"`` (the up
            projection row; the authors' choice), ``"gate"`` (the gate projection row) and/or ``"down"``
            (the down projection column).
        target_modules: filled in from the circuit; the fully qualified names of the adapted modules.
        modules_to_save: modules trained in full and saved with the adapter, as for every peft method (a
            classification head: peft adds ``score``/``classifier`` itself for ``task_type="SEQ_CLS"``).
        init_weights: ``True`` starts every delta at zero (the model is unchanged); ``False`` draws small random
            deltas, like peft's ``init_lora_weights=False`` (for tests).
    """

    circuit: dict[str, Any] | None = field(default=None, metadata={"help": "The circuit (Circuit.to_dict())."})
    mlp_targets: list[str] = field(default_factory=lambda: ["up"], metadata={"help": f"Subset of {MLP_TARGETS}."})
    target_modules: list[str] | str | None = field(default=None, metadata={"help": "Derived from the circuit."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides the circuit that are trained in full and saved."}
    )
    init_weights: bool = field(default=True, metadata={"help": "Zero deltas (True) or small random ones (False)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = CCA_PEFT_TYPE
        if isinstance(self.circuit, str | os.PathLike):
            self.circuit = Circuit.load(self.circuit).to_dict()  # a missing or damaged file: one line naming it
        if isinstance(self.circuit, Circuit):
            self.circuit = self.circuit.to_dict()
        if self.circuit is None:
            raise UsageError("CCAConfig needs a circuit: CCAConfig(circuit=Circuit.load('circuit.json'))")
        Circuit.from_dict(self.circuit)  # validate early: format, kinds, indices within the recorded shape
        self.mlp_targets = list(self.mlp_targets)
        unknown = set(self.mlp_targets) - set(MLP_TARGETS)
        if unknown or not self.mlp_targets:
            raise UsageError(f"mlp_targets must be a non-empty subset of {MLP_TARGETS}, got {self.mlp_targets}")
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)

    def get_circuit(self) -> Circuit:
        return Circuit.from_dict(self.circuit)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs) -> CCAConfig:
        """As peft's, but a broken circuit names the file, and the config remembers where it came from."""
        folder = os.path.join(str(pretrained_model_name_or_path), subfolder or "")
        try:
            config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except ValueError as error:  # a circuit or mlp_targets that does not validate
            if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
                raise
            raise UsageError(f"{os.path.join(folder, CONFIG_NAME)}: {error}") from error
        config._loaded_from = folder
        return config

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """As peft's, plus a README.md model card saying that loading needs ``import peft_cca``."""
        super().save_pretrained(save_directory, **kwargs)
        self.write_card(save_directory)

    def write_card(self, save_directory: str) -> str:
        """Create or update the adapter's ``README.md`` model card (also after ``Trainer`` writes its own)."""
        architecture = getattr(self, "_base_architecture", None)  # set by CCAModel, for the pipeline tag
        note = getattr(self, "_base_weights_note", None)  # set by CCAModel from peft_cca.load_model's model
        return write_model_card(save_directory, self, self.get_circuit(), self.mlp_targets, architecture, note)

    def config_file_hint(self) -> str:
        """Where this config was read from, for error messages."""
        folder = getattr(self, "_loaded_from", None)
        return os.path.join(folder, CONFIG_NAME) if folder else CONFIG_NAME

    def weights_file_hint(self) -> str:
        """The adapter weights file next to the config, for error messages."""
        folder = getattr(self, "_loaded_from", None)
        if not folder:
            return "the adapter state dict"
        safetensors = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
        return safetensors if os.path.isfile(safetensors) else os.path.join(folder, WEIGHTS_NAME)
