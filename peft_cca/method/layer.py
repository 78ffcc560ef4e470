"""CCALayer: trainable fp32 deltas for a few rows (or columns) of one linear-like layer.

Why not a dense masked update: a gradient or optimizer state the size of the whole weight costs
memory for nothing; a saved adapter would be as large as the layer; and in bf16/fp16 a small update
added to the weight rounds away. Here only the selected rows exist as parameters (like peft's
TrainableTokens does for embedding rows), are fp32 whatever the base dtype (unless peft is asked for
``autocast_adapter_dtype=False``: then the base's dtype, see ``CCAModel._cast_adapter_dtype``), and the forward adds
their contribution: ``y[..., rows] += x @ delta.T`` for output rows, ``y += x[..., cols] @ delta.T``
for input columns (an MLP neuron's down projection column).
"""

from __future__ import annotations

import warnings

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, _get_in_out_features, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_cca.errors import CCAError
from peft_cca.method.arch import Side

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch (``adapter_names=[...]``)
INIT_STD = 0.02  # scale of the random deltas that ``init_weights=False`` asks for


def is_quantized_weight(weight: torch.Tensor) -> bool:
    """bitsandbytes 4-bit/8-bit parameters (Params4bit, Int8Params) live in the bitsandbytes package."""
    return type(weight).__module__.split(".")[0] == "bitsandbytes"


class QuantizedMergeError(CCAError, RuntimeError):
    """Merging into a quantized weight is refused: re-quantizing rounds away most of a small update."""


class CCALayer(nn.Module, BaseTunerLayer):
    """Wraps ``nn.Linear`` (also bitsandbytes ``Linear4bit``/``Linear8bitLt``) or transformers ``Conv1D``."""

    adapter_layer_names = ("cca_delta",)
    other_param_names = ("cca_index", "cca_original")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, side: Side, index: torch.Tensor, init_weights: bool = True
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.cca_delta = nn.ParameterDict()
        # The rows are saved beside the deltas (a few bytes per row), so that loading can check them against the
        # circuit in adapter_config.json: an edited config must not silently move trained rows elsewhere.
        self.cca_index = BufferDict(persistent=True)
        # Base rows a merge overwrote. Buffers, not a plain dict, so that model.to(dtype or device) converts them
        # together with the weight they will be written back into.
        self.cca_original = BufferDict(persistent=False)
        self.side: Side = side
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        self.transposed = isinstance(base, Conv1D)  # Conv1D stores weight as (in, out)
        self.in_features, self.out_features = _get_in_out_features(base)
        if self.in_features is None:
            raise TypeError(f"CCA supports nn.Linear and Conv1D layers, not {type(base).__name__}")
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, side, index, init_weights=init_weights)

    def update_layer(
        self,
        adapter_name: str,
        side: Side,
        index: torch.Tensor,
        init_weights: bool = True,
        inference_mode: bool = False,
    ) -> None:
        """Add a delta for ``index`` (output rows or input columns) under ``adapter_name``.

        ``init_weights=True`` starts from zero (the model is unchanged); ``False`` draws small random deltas, as
        peft's ``init_lora_weights=False`` does, for tests that need an adapter that changes the output.
        """
        if side != self.side:
            raise ValueError(f"a layer adapts either output rows or input columns, not both ({self.side} vs {side})")
        index = torch.as_tensor(index, dtype=torch.long).unique(sorted=True)
        limit = self.out_features if side == "output" else self.in_features
        if index.numel() == 0 or int(index.max()) >= limit or int(index.min()) < 0:
            raise ValueError(f"indices for {side} side must lie in 0..{limit - 1} and be non-empty")
        other = self.in_features if side == "output" else self.out_features
        shape = (index.numel(), other) if side == "output" else (other, index.numel())
        delta = torch.zeros(shape, dtype=torch.float32)
        if not init_weights:
            delta.normal_(std=INIT_STD)
        self.cca_delta[adapter_name] = nn.Parameter(delta)
        self.cca_index[adapter_name] = index
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple[torch.device | None, None]:
        """The base layer's device but never its dtype: peft would cast the deltas to a bf16 base's bf16."""
        device, _ = super()._get_base_layer_device_and_dtype(base_layer)
        return device, None

    def base_float_dtype(self) -> torch.dtype | None:
        """The base weight's floating dtype; None for a quantized (integer-stored) weight."""
        weight = self._base_weight()
        return None if is_quantized_weight(weight) or not weight.is_floating_point() else weight.dtype

    def cast_delta(self, adapter: str, dtype: torch.dtype) -> None:
        """Store ``adapter``'s delta in ``dtype``, keeping whether it trains (peft's cast would make it trainable)."""
        delta = self.cca_delta[adapter]
        self.cca_delta[adapter] = nn.Parameter(delta.detach().to(dtype), requires_grad=delta.requires_grad)

    def _base_weight(self) -> torch.Tensor:
        return self.get_base_layer().weight

    def _weight_dim(self) -> int:
        """Dimension of the stored weight that the indices select."""
        row_of_output = 1 if self.transposed else 0
        return row_of_output if self.side == "output" else 1 - row_of_output

    def _oriented_delta(self, adapter: str) -> torch.Tensor:
        """The fp32 delta laid out like ``weight.index_select(self._weight_dim(), index)``."""
        # .float() is a no-op for the fp32 deltas; after a user's model.to(bf16) it keeps the arithmetic in fp32
        delta = self.cca_delta[adapter].float()
        return delta.T if self.transposed else delta

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """Dense fp32 delta in the base weight's layout (for inspection; merging never builds it)."""
        weight = self._base_weight()
        dense = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        return dense.index_add_(self._weight_dim(), self.cca_index[adapter], self._oriented_delta(adapter).detach())

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write the deltas into the base weight, keeping the original rows so unmerge is exact."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self._base_weight()
        for adapter in adapter_names:
            if adapter not in self.cca_delta:
                continue
            if is_quantized_weight(weight):
                raise QuantizedMergeError(
                    f"cannot merge CCA adapter {adapter!r} into a quantized ({type(weight).__name__}) weight: "
                    "re-quantizing would round away most of the update. Keep the adapter unmerged, or load the "
                    "base model unquantized to merge."
                )
            dim, index = self._weight_dim(), self.cca_index[adapter]
            original = weight.data.index_select(dim, index)
            # index add computed in fp32: a bf16/fp16 weight receives the rounded sum, not a rounded delta
            merged = (original.float() + self._oriented_delta(adapter).detach()).to(weight.dtype)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            self.cca_original[adapter] = original
            weight.data.index_copy_(dim, index, merged)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        """Restore the saved original rows, newest merge first: the base comes back bit for bit."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = self._base_weight()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            original = self.cca_original[adapter]
            del self.cca_original[adapter]
            # .to() is a no-op unless something moved or cast the weight without the buffers (they move together)
            weight.data.index_copy_(self._weight_dim(), self.cca_index[adapter].to(weight.device), original.to(weight))

    def _contribution(self, adapter: str, x32: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to the output: rows ``index`` for the output side, every feature for the input side."""
        delta, index = self.cca_delta[adapter].float(), self.cca_index[adapter]
        return x32 @ delta.T if self.side == "output" else x32.index_select(-1, index) @ delta.T

    def _add(self, result: torch.Tensor, adapter: str, x32: torch.Tensor) -> torch.Tensor:
        update = self._contribution(adapter, x32).to(result.dtype)
        if self.side == "output":
            return result.index_add(-1, self.cca_index[adapter], update)
        return result + update

    def forward(self, x: torch.Tensor, *args, adapter_names: list[str] | None = None, **kwargs) -> torch.Tensor:
        if adapter_names is not None and len(x) != len(adapter_names):
            # peft's LoRA check, word for word: rows past a short list would silently get the base model's output
            raise ValueError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {len(x)} respectively."
            )
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(result, x, adapter_names)
        if self.merged:
            return result
        x32 = x.to(torch.float32)
        for adapter in self.active_adapters:
            if adapter in self.cca_delta:
                result = self._add(result, adapter, x32)
        return result

    def _mixed_batch_forward(self, result: torch.Tensor, x: torch.Tensor, adapter_names: list[str]) -> torch.Tensor:
        """Sample ``i`` of the batch gets adapter ``adapter_names[i]`` (``"__base__"``: none), as in peft's LoRA."""
        result = result.clone()
        for adapter in sorted(set(adapter_names)):
            if adapter == BASE_ADAPTER or adapter not in self.cca_delta:
                continue
            rows = [i for i, name in enumerate(adapter_names) if name == adapter]
            result[rows] = self._add(result[rows], adapter, x[rows].to(torch.float32))
        return result

    def __repr__(self) -> str:
        return "cca." + super().__repr__()
