"""Stage 3's quantity: ``logit[desired] - logit[undesired]`` at the last position of each prefix; the loss made
of it is :class:`~peft_cca.amplify.objective.Objective`'s."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def logit_difference(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-row ``logit[desired] - logit[undesired]`` at the last position."""
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=1,
    )
    last = outputs.logits[:, -1, :].float()
    return (last.gather(-1, batch["desired"][:, None]) - last.gather(-1, batch["undesired"][:, None])).squeeze(-1)
