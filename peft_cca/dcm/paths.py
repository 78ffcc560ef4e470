"""Two ways to get ``logit(desired) - logit(undesired)`` at the last prefix position under a mask.

* :class:`FullSequencePath` runs every prefix in full, every step: the plain computation, kept as
  the oracle in the tests and the baseline in the benchmark. Prefixes are right-padded: under causal
  attention the padding after a token never changes it, and the default position ids stay right.
* :class:`OneTokenPath` runs only the last token on top of a :class:`PrefixCache`. The cached keys and
  values of a batch (a shared prefix and the record's own suffix) are left-padded to a common length;
  the pad slots are masked out and each row gets its true position id, so the result equals the full
  path up to float summation order.

Both compute the logit difference in fp32 whatever the model's dtype (a bf16 base on CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from peft_cca.dcm.cache import Overflow, PrefixCache
from peft_cca.dcm.interventions import MaskIntervention
from peft_cca.errors import UsageError
from peft_cca.localize.records import Record
from peft_cca.runtime.generation import cache_argument

PathName = Literal["fast", "full"]


class _Targets:
    """Desired and undesired token ids of every record, moved to the logits' device once (not every step)."""

    def __init__(self, records: Sequence[Record], device: torch.device) -> None:
        self.desired = torch.tensor([r.desired for r in records], device=device)
        self.undesired = torch.tensor([r.undesired for r in records], device=device)

    def diff(self, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Per-example ``logit_d - logit_u`` from ``(B, V)`` logits, in fp32 whatever the model's dtype:
        gathered per row, never a B x B matrix."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        picked = logits.float()
        return picked[rows, self.desired[indices]] - picked[rows, self.undesired[indices]]


def _output_device(model: nn.Module) -> torch.device:
    """Where the logits come out (the last device under ``device_map="auto"``)."""
    return model.get_output_embeddings().weight.device


def _input_device(model: nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


class FullSequencePath:
    """Whole prefixes every step."""

    name = "full"

    def __init__(self, model: nn.Module, records: Sequence[Record]) -> None:
        self.model = model
        self.records = list(records)
        self.device = _input_device(model)
        self.targets = _Targets(self.records, _output_device(model))

    def logit_diff(self, indices: Sequence[int], intervention: MaskIntervention | None = None) -> torch.Tensor:
        batch = [self.records[i] for i in indices]
        longest = max(r.length for r in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        attention = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, record in enumerate(batch):
            ids[row, : record.length] = torch.tensor(record.prefix_ids)
            attention[row, : record.length] = 1
        last = torch.tensor([r.length - 1 for r in batch])
        if intervention is not None:
            intervention.at(last.to(self.device))
        # logits only at the positions we read (different per row): the few distinct ones, then pick
        keep = torch.unique(last)
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=attention.to(self.device), logits_to_keep=keep
        ).logits
        column = torch.searchsorted(keep, last).to(logits.device)
        rows = torch.arange(len(batch), device=logits.device)
        return self.targets.diff(logits[rows, column], torch.tensor(list(indices), device=logits.device))


class OneTokenPath:
    """Last token only, on top of the prefix KV cache built once at construction."""

    name = "fast"

    def __init__(
        self,
        model: nn.Module,
        records: Sequence[Record],
        budget_mb: float | None = None,
        overflow: Overflow = "recompute",
        spill_dir: str | None = None,
        progress: bool = True,
        host_budget_mb: float | None = None,
    ) -> None:
        self.model = model
        self.records = list(records)
        self.device = _input_device(model)
        self.targets = _Targets(self.records, _output_device(model))
        self.cache = PrefixCache(
            model,
            [list(r.prefix_ids) for r in self.records],
            budget_mb,
            overflow,
            spill_dir,
            progress=progress,
            host_budget_mb=host_budget_mb,
        )

    def _past(self, indices: Sequence[int]):
        """A fresh left-padded DynamicCache for the batch, each layer on its own device.

        Row ``b`` holds ``[pad ; shared ; suffix]`` right-aligned: real tokens stay contiguous, so relative
        distances (and sliding windows) are those of the whole prefix. Stored tensors are copied, never mutated.
        """
        from transformers import DynamicCache

        parts = [self.cache.parts(i) for i in indices]
        lengths = [sum(part[0][0].shape[-2] for part in row) for row in parts]
        longest = max(lengths)
        attention = torch.zeros(len(indices), longest + 1, dtype=torch.long)
        attention[:, -1] = 1
        for row, length in enumerate(lengths):
            attention[row, longest - length : longest] = 1
        if longest == 0:
            return None, attention
        template = next(row[0] for row in parts if row)
        layers = []
        for layer, device in enumerate(self.cache.layer_devices):
            heads, _, head_dim = template[layer][0].shape
            dtype = template[layer][0].dtype
            keys = torch.zeros(len(indices), heads, longest, head_dim, dtype=dtype, device=device)
            values = torch.zeros_like(keys)
            for row, (row_parts, length) in enumerate(zip(parts, lengths, strict=True)):
                start = longest - length
                for part in row_parts:
                    k, v = part[layer]
                    end = start + k.shape[-2]
                    keys[row, :, start:end].copy_(k, non_blocking=True)
                    values[row, :, start:end].copy_(v, non_blocking=True)
                    start = end
            layers.append((keys, values))
        return DynamicCache(ddp_cache_data=layers), attention

    def logit_diff(self, indices: Sequence[int], intervention: MaskIntervention | None = None) -> torch.Tensor:
        batch = [self.records[i] for i in indices]
        past, attention = self._past(indices)
        last_ids = torch.tensor([[r.prefix_ids[-1]] for r in batch])
        positions = torch.tensor([[r.length - 1] for r in batch])
        if intervention is not None:
            intervention.at(torch.zeros(len(batch), dtype=torch.long, device=self.device))
        logits = self.model(
            input_ids=last_ids.to(self.device),
            attention_mask=attention.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=past is not None,
            **{cache_argument(self.model): past},
        ).logits[:, -1]
        return self.targets.diff(logits, torch.tensor(list(indices), device=logits.device))


def make_path(
    name: PathName,
    model: nn.Module,
    records: Sequence[Record],
    budget_mb: float | None = None,
    overflow: Overflow = "recompute",
    progress: bool = True,
    host_budget_mb: float | None = None,
) -> FullSequencePath | OneTokenPath:
    if name == "full":
        return FullSequencePath(model, records)
    if name == "fast":
        return OneTokenPath(model, records, budget_mb, overflow, progress=progress, host_budget_mb=host_budget_mb)
    raise UsageError(f"unknown DCM path {name!r}; choose 'fast' or 'full'")
