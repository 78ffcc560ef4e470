"""Two ways to get ``logit(desired) - logit(undesired)`` at the last prefix position under a mask.

* :class:`FullSequencePath` runs every prefix in full, every step: the plain computation, kept as
  the oracle in the tests and the baseline in the benchmark. Prefixes are right-padded: under causal
  attention the padding after a token never changes it, and the default position ids stay right.
* :class:`OneTokenPath` runs only the last token on top of a :class:`PrefixCache`. The cached keys and
  values of a batch are left-padded to a common length; the pad slots are masked out and each row
  gets its true position id, so the result equals the full path up to float summation order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from peft_cca.dcm.cache import Overflow, PrefixCache
from peft_cca.dcm.data import Record
from peft_cca.dcm.interventions import MaskIntervention

PathName = Literal["fast", "full"]


def _gather_diff(logits: torch.Tensor, records: Sequence[Record]) -> torch.Tensor:
    """Per-example logit difference from ``(B, V)`` logits: gathered per row, never a B x B matrix."""
    desired = torch.tensor([r.desired for r in records], device=logits.device)
    undesired = torch.tensor([r.undesired for r in records], device=logits.device)
    rows = torch.arange(len(records), device=logits.device)
    return logits[rows, desired] - logits[rows, undesired]


class FullSequencePath:
    """Whole prefixes every step."""

    name = "full"

    def __init__(self, model: nn.Module, records: Sequence[Record]) -> None:
        self.model = model
        self.records = list(records)
        self.device = next(model.parameters()).device

    def logit_diff(self, indices: Sequence[int], intervention: MaskIntervention | None = None) -> torch.Tensor:
        batch = [self.records[i] for i in indices]
        longest = max(r.length for r in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        attention = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, record in enumerate(batch):
            ids[row, : record.length] = torch.tensor(record.prefix_ids)
            attention[row, : record.length] = 1
        last = torch.tensor([r.length - 1 for r in batch], device=self.device)
        if intervention is not None:
            intervention.at(last)
        # logits only at the positions we read (different per row): the few distinct ones, then pick
        keep = torch.unique(last)
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=attention.to(self.device), logits_to_keep=keep
        ).logits
        column = torch.searchsorted(keep, last)
        return _gather_diff(logits[torch.arange(len(batch), device=self.device), column], batch)


class OneTokenPath:
    """Last token only, on top of the prefix KV cache built once at construction."""

    name = "fast"

    def __init__(
        self,
        model: nn.Module,
        records: Sequence[Record],
        budget_mb: float = 2048.0,
        overflow: Overflow = "spill",
        spill_dir: str | None = None,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.records = list(records)
        self.device = next(model.parameters()).device
        self.cache = PrefixCache(
            model, [list(r.prefix_ids) for r in self.records], budget_mb, overflow, spill_dir, progress=progress
        )

    def _past(self, indices: Sequence[int]):
        """A fresh left-padded DynamicCache for the batch (stored tensors are copied, never mutated)."""
        from transformers import DynamicCache

        kvs = [self.cache.get(i) for i in indices]
        lengths = [0 if kv is None else kv.shape[-2] for kv in kvs]
        longest = max(lengths)
        attention = torch.zeros(len(indices), longest + 1, dtype=torch.long)
        attention[:, -1] = 1
        if longest == 0:
            return None, attention
        template = next(kv for kv in kvs if kv is not None)
        layers, _, heads, _, head_dim = template.shape
        padded = template.new_zeros(layers, 2, len(indices), heads, longest, head_dim)
        for row, (kv, length) in enumerate(zip(kvs, lengths, strict=True)):
            if length:
                padded[:, :, row, :, longest - length :] = kv
                attention[row, longest - length : longest] = 1
        padded = padded.to(self.device)
        return DynamicCache(ddp_cache_data=[(padded[layer, 0], padded[layer, 1]) for layer in range(layers)]), attention

    def logit_diff(self, indices: Sequence[int], intervention: MaskIntervention | None = None) -> torch.Tensor:
        batch = [self.records[i] for i in indices]
        past, attention = self._past(indices)
        last_ids = torch.tensor([[r.prefix_ids[-1]] for r in batch], device=self.device)
        positions = torch.tensor([[r.length - 1] for r in batch], device=self.device)
        if intervention is not None:
            intervention.at(torch.zeros(len(batch), dtype=torch.long, device=self.device))
        logits = self.model(
            input_ids=last_ids,
            attention_mask=attention.to(self.device),
            position_ids=positions,
            past_key_values=past,
            use_cache=past is not None,
        ).logits[:, -1]
        return _gather_diff(logits, batch)


def make_path(
    name: PathName,
    model: nn.Module,
    records: Sequence[Record],
    budget_mb: float = 2048.0,
    overflow: Overflow = "spill",
    progress: bool = True,
) -> FullSequencePath | OneTokenPath:
    if name == "full":
        return FullSequencePath(model, records)
    if name == "fast":
        return OneTokenPath(model, records, budget_mb, overflow, progress=progress)
    raise ValueError(f"unknown DCM path {name!r}; choose 'fast' or 'full'")
