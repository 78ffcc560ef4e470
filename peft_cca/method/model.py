"""CCAModel: the peft tuner that puts a CCALayer on every module a circuit touches."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
from peft.tuners.tuners_utils import AuxiliaryTrainingWrapper, BaseTuner
from torch import nn

from peft_cca.errors import UsageError
from peft_cca.method.arch import COMPONENT_KINDS, ArchSpec, Side, describe
from peft_cca.method.card import task_of
from peft_cca.method.circuit import Circuit, CircuitShapeError
from peft_cca.method.combine import combined_config, fill_weighted_deltas
from peft_cca.method.config import CCAConfig
from peft_cca.method.layer import BASE_ADAPTER, CCALayer

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


def _matched_modules(target_modules: str | list[str] | set[str], names: list[str]) -> set[str]:
    """Module names that ``target_modules`` selects, with peft's rule (regex for a string, else name or suffix)."""
    if isinstance(target_modules, str):
        return {name for name in names if re.fullmatch(target_modules, name)}
    return {name for name in names if any(name == t or name.endswith(f".{t}") for t in target_modules)}


def _adapter_names_hook(_module: nn.Module, args: tuple, kwargs: dict, adapter_names: list[str]) -> tuple:
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


class CCAModel(BaseTuner):
    """Trains only the weight rows of a circuit's components. Build it with ``get_peft_model``."""

    prefix: str = "cca_"
    tuner_layer_cls = CCALayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}  # targets come from the circuit

    def _plan(self, config: CCAConfig) -> TargetPlan:
        circuit = config.get_circuit()
        spec = describe(self.model)
        try:
            circuit.validate(spec.shape)
        except CircuitShapeError as error:
            if getattr(config, "_loaded_from", None) is None:
                raise
            # a saved adapter loaded onto another model: name the file whose circuit does not fit
            raise CircuitShapeError(f"{config.config_file_hint()}: {error}") from error
        spec.check_mlp_targets(config.mlp_targets)
        return plan_targets(spec, circuit, config.mlp_targets)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        # the plan is built once per injection (not once per module) and dropped afterwards, so that neither a
        # deleted adapter's config nor its index tensors outlive the injection
        plans = self.__dict__.setdefault("_cca_plans", {})
        plans[adapter_name] = self._targets(self.peft_config[adapter_name])
        try:
            super().inject_adapter(model, adapter_name, **kwargs)
        finally:
            plans.pop(adapter_name, None)

    def _targets(self, peft_config: CCAConfig) -> TargetPlan:
        """The plan, with ``target_modules`` set to its modules (a different user value is replaced with a warning)."""
        plan = self._plan(peft_config)
        if not plan:
            raise ValueError("the circuit selects no component: there is nothing for CCA to train")
        if peft_config.target_modules is not None:
            given = _matched_modules(peft_config.target_modules, [name for name, _ in self.model.named_modules()])
            if given != set(plan):
                extra, missing = sorted(given - set(plan)), sorted(set(plan) - given)
                warnings.warn(
                    "CCAConfig.target_modules is derived from the circuit; the given value is replaced (it adds "
                    f"{len(extra)} modules such as {extra[:2]} and leaves out {len(missing)} such as {missing[:2]}). "
                    "Choose the components in the circuit instead.",
                    UserWarning,
                    stacklevel=3,
                )
        peft_config.target_modules = sorted(plan)
        peft_config._base_architecture = type(self.model).__name__  # for the model card's pipeline tag
        # a quantized offline copy says so (peft_cca.load_model sets it), and the card tells its readers
        peft_config._base_weights_note = getattr(self.model, "peft_cca_weights_note", None)
        if peft_config.task_type is None:  # AutoPeftModelForCausalLM and the Hub read it from adapter_config.json
            peft_config.task_type = task_of(None, peft_config._base_architecture)
        return plan

    def _prepare_adapter_config(self, peft_config: CCAConfig, model_config: dict) -> CCAConfig:
        return peft_config  # target_modules were set from the circuit in inject_adapter

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
        side, index = self._cca_plans[adapter_name][current_key]
        if isinstance(target, CCALayer):
            target.update_layer(
                adapter_name,
                side,
                index,
                init_weights=peft_config.init_weights,
                inference_mode=peft_config.inference_mode,
            )
        else:
            new_module = CCALayer(target, adapter_name, side, index, init_weights=peft_config.init_weights)
            if adapter_name not in self.active_adapters:
                new_module.requires_grad_(False)
            self._replace_module(parent, target_name, new_module, target)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft's flag, honoured: ``False`` stores the deltas in the base weights' dtype instead of fp32.

        TRL's SFTTrainer passes ``False`` under DeepSpeed ZeRO-3 with an unquantized base. It matters there: DeepSpeed
        0.19.2 keeps a zero.Init model's dtypes but gathers persistent parameters into buffers of the first one's
        dtype, so bf16 weights beside fp32 deltas fail at the first optimizer step (``ProcessGroupGloo::allgather:
        invalid tensor type``, run with ``benchmarks/zero3_trl.py``); up to 0.19.1 DeepSpeed casts every parameter
        to bf16 itself, from 0.19.3 it gathers each parameter in its own dtype. The cost is precision where no fp32
        master copy is kept (DeepSpeed keeps one): a step much smaller than the delta itself rounds away.
        """
        cast = set()
        for module in self.model.modules():
            if isinstance(module, CCALayer) and adapter_name in module.cca_delta:
                # True: back to fp32 the half-precision deltas a file saved with False holds. Done here, not by
                # peft's cast, which re-creates a ParameterDict entry as trainable (an inference-loaded adapter too).
                current = module.cca_delta[adapter_name].dtype
                if autocast_adapter_dtype:
                    dtype = torch.float32 if current.itemsize < 4 else None
                else:
                    dtype = module.base_float_dtype()
                if dtype is not None and dtype != current:
                    module.cast_delta(adapter_name, dtype)
                    cast.add(dtype)
        if autocast_adapter_dtype:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=True)  # modules_to_save copies, as peft
            return
        for dtype in sorted(cast, key=str):
            resolution = torch.finfo(dtype).eps / 2
            warnings.warn(
                f"autocast_adapter_dtype=False: the CCA deltas of adapter {adapter_name!r} are stored in {dtype}, the "
                f"base weights' dtype, not float32; unless the optimizer keeps float32 master weights (DeepSpeed "
                f"does), a step smaller than about {resolution:.0e} of a delta's own size rounds away. Keep the "
                "default float32 deltas where the setup allows (DeepSpeed ZeRO-3 0.17.6 to 0.19.8 trains them on a "
                "bf16 base, except 0.19.2); with TRL, pass a model already wrapped by get_peft_model instead of "
                "peft_config.",
                UserWarning,
                stacklevel=2,
            )

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: Literal["linear", "cat"] = "linear",
    ) -> None:
        """Add ``adapter_name``: the exact weighted sum of the named adapters' row deltas, on the union of their rows.

        peft's call, for CCA: ``"linear"`` and ``"cat"`` both mean ``sum_i weights[i] * delta_i`` (what LoRA's
        ``"cat"`` computes exactly and its ``"linear"`` approximates); the new adapter's circuit is the union of the
        circuits and its MLP targets the union of theirs. LoRA's SVD, ties, dare and magnitude_prune types re-factor
        or prune low-rank factors and are refused, naming ``"linear"``. As in LoRA the new adapter is added frozen
        and not activated (``set_adapter(adapter_name)``); unlike LoRA, an existing ``adapter_name`` is an error,
        not a silent no-op. See :mod:`peft_cca.method.combine`.
        """
        config = combined_config(self.peft_config, adapters, weights, adapter_name, combination_type)
        self.peft_config[adapter_name] = config
        self.inject_adapter(self.model, adapter_name)
        fill_weighted_deltas(
            (module for module in self.model.modules() if isinstance(module, CCALayer)), adapters, weights, adapter_name
        )

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Mixed batches, as peft's LoRA: ``model(ids, adapter_names=["a", "__base__", ...])``, one name a sample.

        As in LoRA, ``generate(num_beams=n)`` repeats each name n times (the beams of one prompt share its adapter),
        while ``num_return_sequences`` is not expanded: sampling k sequences of each of b prompts takes b * k names,
        one per returned row. Any other length is LoRA's ValueError, raised by each layer against its input.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        if any(module.merged for module in self.modules() if isinstance(module, CCALayer)):
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
            )
        unknown = {name for name in adapter_names if name != BASE_ADAPTER} - set(self.peft_config)
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unknown))}")
        num_beams = kwargs.get("num_beams")
        if isinstance(num_beams, int) and num_beams > 1:  # generate repeats every sample num_beams times
            if not isinstance(adapter_names, (list, tuple)):
                raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
            adapter_names = [name for name in adapter_names for _ in range(num_beams)]
        handles = [
            module.register_forward_pre_hook(
                lambda m, a, k, names=adapter_names: _adapter_names_hook(m, a, k, names), with_kwargs=True
            )
            for module in self.modules()
            if isinstance(module, (CCALayer, AuxiliaryTrainingWrapper))
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: CCAConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Refuse adapter files that lie: non-finite values, or rows that differ from the config's circuit."""
        source = config.weights_file_hint()
        for key, value in state_dict.items():
            if value.is_floating_point() and value.device.type != "meta" and not torch.isfinite(value).all():
                raise UsageError(
                    f"{source}: tensor {key} holds NaN or inf values; the adapter is broken, re-train or re-save it"
                )
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        suffix = f".cca_index.{adapter_name}"
        current = {k: v for k, v in model.state_dict().items() if k.endswith(suffix)}
        saved = [k for k in current if k in remapped]
        if not saved and current:
            warnings.warn(
                f"{source} has no row indices (saved before peft-cca recorded them), so it cannot be checked against "
                "the circuit in adapter_config.json; load it and save_pretrained() again to add them.",
                UserWarning,
                stacklevel=2,
            )
            remapped.update(current)  # nothing to check against: keep the config's rows, and no missing-key warning
        for key in saved:
            rows, expected = remapped[key], current[key]
            if rows.shape != expected.shape or not torch.equal(rows.to(expected.device), expected):
                module = key.removesuffix(suffix).removeprefix("base_model.model.")
                raise UsageError(
                    f"{config.config_file_hint()}: its circuit selects rows {expected.tolist()[:8]} of {module} but "
                    f"{source} was trained for rows {rows.tolist()[:8]}; restore the adapter_config.json saved with "
                    "these weights"
                )
        return remapped
