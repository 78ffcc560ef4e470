"""Micro-batch sizes for CCA's full-batch steps: any size gives the same gradient, so the choice is memory and speed
only. ``--micro-batch auto`` (and ``micro_batch="auto"`` in :func:`~peft_cca.amplify.trainer.amplify`) probes the
longest pivot record with :func:`~peft_cca.runtime.micro_batch.auto_micro_batch`, which LoRA's sizing shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.records import PivotCollator, as_row
from peft_cca.errors import UsageError
from peft_cca.runtime.micro_batch import auto_micro_batch
from peft_cca.runtime.placement import process_state


def _probe_records(model: nn.Module, longest: Mapping[str, Any], pad_token_id: int) -> Callable[[int], None]:
    """A forward and backward pass of ``size`` copies of the longest record; gradients are dropped after."""

    def probe(size: int) -> None:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in PivotCollator(pad_token_id)([longest] * size).items()}
        try:
            logit_difference(model, batch).sum().backward()
        finally:
            model.zero_grad(set_to_none=True)

    return probe


def resolve_micro_batch(
    micro_batch: int | str, model: nn.Module, records: Sequence[Mapping[str, Any]], pad_token_id: int
) -> int:
    """``micro_batch`` as a number: ``"auto"`` measured on ``model`` at the longest record."""
    if micro_batch != "auto":
        if not isinstance(micro_batch, int) or isinstance(micro_batch, bool) or micro_batch < 1:
            raise UsageError(f"micro-batch {micro_batch!r} must be 'auto' or an integer >= 1 (--micro-batch)")
        return micro_batch
    rows = [as_row(r) for r in records]
    longest = max(rows, key=lambda r: len(r["prefix_ids"]))
    world = process_state().num_processes
    cap = math.ceil(len(rows) / world)  # a process never sees more rows than its share
    return auto_micro_batch(
        model, [len(r["prefix_ids"]) for r in rows], _probe_records(model, longest, pad_token_id), cap
    )
