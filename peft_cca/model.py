"""CCAModel: the peft tuner that puts a CCALayer on every module a circuit touches."""

from __future__ import annotations

from typing import ClassVar

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from peft_cca.arch import COMPONENT_KINDS, ArchSpec, Side, describe
from peft_cca.circuit import Circuit
from peft_cca.config import CCAConfig
from peft_cca.layer import CCALayer

TargetPlan = dict[str, tuple[Side, torch.Tensor]]


def plan_targets(spec: ArchSpec, circuit: Circuit, mlp_targets: list[str] | tuple[str, ...]) -> TargetPlan:
    """Module name -> (side, feature indices) for every module the circuit needs a delta on."""
    features: dict[str, tuple[Side, list[torch.Tensor]]] = {}
    for layer in range(spec.shape.num_layers):
        for kind in COMPONENT_KINDS:
            selected = circuit.selected(layer, kind)
            if not selected:
                continue
            for site in spec.param_sites(kind, tuple(mlp_targets)):
                name = f"{spec.layer_prefix(layer)}.{site.module}"
                side, parts = features.setdefault(name, (site.side, []))
                if side != site.side:
                    raise ValueError(f"{name} would be adapted on both its input and its output")
                parts.append(site.features(selected))
    return {name: (side, torch.cat(parts).unique(sorted=True)) for name, (side, parts) in features.items()}


class CCAModel(BaseTuner):
    """Trains only the weight rows of a circuit's components. Build it with ``get_peft_model``."""

    prefix: str = "cca_"
    tuner_layer_cls = CCALayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}  # targets come from the circuit

    def _plan(self, config: CCAConfig) -> TargetPlan:
        circuit = config.get_circuit()
        spec = describe(self.model)
        circuit.validate(spec.shape)
        return plan_targets(spec, circuit, config.mlp_targets)

    def _prepare_adapter_config(self, peft_config: CCAConfig, model_config: dict) -> CCAConfig:
        plan = self._plan(peft_config)
        if not plan:
            raise ValueError("the circuit selects no component: there is nothing for CCA to train")
        peft_config.target_modules = sorted(plan)
        return peft_config

    def _create_and_replace(
        self,
        peft_config: CCAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        # the plan is rebuilt per adapter, not per module: cache it on the config object for this injection
        plans = self.__dict__.setdefault("_cca_plans", {})
        if plans.get(adapter_name, (None,))[0] is not peft_config:
            plans[adapter_name] = (peft_config, self._plan(peft_config))
        side, index = plans[adapter_name][1][current_key]
        if isinstance(target, CCALayer):
            target.update_layer(adapter_name, side, index, inference_mode=peft_config.inference_mode)
        else:
            new_module = CCALayer(target, adapter_name, side, index)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)
            self._replace_module(parent, target_name, new_module, target)
