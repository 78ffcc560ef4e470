"""Weighted combination of named CCA adapters: peft's ``add_weighted_adapter`` for sparse row deltas.

A CCA adapter is an additive update ``W + D`` with ``D`` zero outside its circuit's rows (columns for a down
projection). A weighted combination is therefore exact: the new adapter's circuit is the union of the circuits
(``Circuit.union``), its MLP targets the union of theirs, and on the union of their rows its delta is
``sum_i w_i * D_i``, a row an adapter does not select counting as zero for it.

How peft's combination types map: LoRA's ``"cat"`` concatenates the ranks so that the new product is exactly
``sum_i w_i * B_i A_i``: that is this weighted sum. LoRA's ``"linear"`` sums the A and B factors separately, a
rough approximation for products but, on deltas that are not products, the same exact weighted sum; so for CCA
``"linear"`` and ``"cat"`` give the same adapter. The ``*_svd`` types re-factor a dense product to a given rank
and ``ties``/``dare_*``/``magnitude_prune`` prune and sign-elect task vectors: CCA has no rank and does not prune,
so those are refused with a message that names ``"linear"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from functools import reduce

import torch

from peft_cca.errors import UsageError
from peft_cca.method.arch import MLP_TARGETS
from peft_cca.method.circuit import Circuit
from peft_cca.method.config import CCAConfig
from peft_cca.method.layer import CCALayer

COMBINATION_TYPES = ("linear", "cat")  # both: the exact weighted sum of the row deltas
LORA_ONLY_TYPES = (
    "svd",
    "ties",
    "ties_svd",
    "dare_ties",
    "dare_linear",
    "dare_ties_svd",
    "dare_linear_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
)


def combined_config(
    configs: Mapping[str, CCAConfig],
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    combination_type: str,
) -> CCAConfig:
    """The new adapter's config (union circuit, union MLP targets), after checking that the combination exists."""
    if combination_type in LORA_ONLY_TYPES:
        raise UsageError(
            f"combination_type={combination_type!r} does not apply to CCA: it is LoRA's (an SVD re-factors a "
            "low-rank product; ties/dare/magnitude_prune prune task vectors), and CCA's row deltas have no rank. "
            f"Use combination_type='linear' (or 'cat', the same for CCA): the exact weighted sum of the deltas on "
            "the union of the circuits."
        )
    if combination_type not in COMBINATION_TYPES:
        raise UsageError(f"Invalid combination_type: {combination_type}; CCA combines with one of {COMBINATION_TYPES}")
    if adapter_name in configs:
        raise UsageError(f"adapter {adapter_name!r} already exists; choose another name or delete_adapter it first")
    if not adapters:
        raise UsageError("add_weighted_adapter needs at least one adapter to combine")
    for adapter in adapters:
        if adapter not in configs:
            raise UsageError(f"Adapter {adapter} does not exist")
    if len(weights) != len(adapters):
        raise UsageError(f"got {len(weights)} weights for {len(adapters)} adapters; give one weight per adapter")
    trained_whole = {name: configs[name].modules_to_save for name in adapters if configs[name].modules_to_save}
    if trained_whole:
        raise UsageError(
            f"cannot combine adapters that also train whole modules (modules_to_save: {trained_whole}): only CCA's "
            "row deltas have a weighted sum here. Combine adapters trained without modules_to_save."
        )
    circuit = reduce(Circuit.union, (configs[adapter].get_circuit() for adapter in adapters))
    targets = [target for target in MLP_TARGETS if any(target in configs[a].mlp_targets for a in adapters)]
    return replace(
        configs[adapters[0]],
        circuit=circuit.to_dict(),
        mlp_targets=targets,
        target_modules=None,  # derived from the union circuit when the adapter is injected
        modules_to_save=None,
        init_weights=True,
    )


@torch.no_grad()
def fill_weighted_deltas(
    layers: Iterable[CCALayer], adapters: Sequence[str], weights: Sequence[float], adapter_name: str
) -> None:
    """Set ``adapter_name``'s deltas to the weighted sum of the others', each placed at its rows in the union."""
    for layer in layers:
        if adapter_name not in layer.cca_delta:
            continue
        target, index = layer.cca_delta[adapter_name], layer.cca_index[adapter_name]
        dim = 0 if layer.side == "output" else 1  # deltas are (rows, in) for outputs, (out, columns) for inputs
        total = torch.zeros(target.shape, dtype=torch.float32, device=target.device)
        for adapter, weight in zip(adapters, weights, strict=True):
            if adapter not in layer.cca_delta:
                continue
            # every adapter's rows lie in the union's (the plan of a union circuit holds each circuit's plan)
            positions = torch.searchsorted(index, layer.cca_index[adapter].to(index.device))
            total.index_add_(dim, positions, layer.cca_delta[adapter].float().to(total.device), alpha=float(weight))
        target.copy_(total)
        target.requires_grad_(False)  # as LoRA's combined adapter: ready for inference; set_adapter trains it
