"""KL drift: mean KL(base || updated) of next-token distributions over neutral text (offline)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from peft_cca.runtime.generation import left_pad, pad_token_id

# Plain encyclopedic sentences with no arithmetic: drift here is drift in general language modelling.
NEUTRAL_TEXTS: tuple[str, ...] = (
    "The river winds through a wide valley before it reaches the sea, and small villages line its banks.",
    "Many birds migrate south in autumn, following routes that their species have used for thousands of years.",
    "The library opens early on weekdays, and students often gather there to read and discuss their projects.",
    "A violin is a string instrument played with a bow; its body is usually made of spruce and maple.",
    "In the morning the market fills with people buying bread, fruit, cheese and fresh flowers.",
    "Volcanoes form where molten rock rises through the crust, and their eruptions can reshape the landscape.",
    "The novel follows a young sailor who leaves his home town to explore distant islands.",
    "Tea was first cultivated in East Asia and later became a popular drink across the whole world.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "The old bridge was rebuilt in stone after a flood destroyed the wooden one that stood there before.",
    "Museums preserve paintings, sculptures and tools that tell the story of how people lived long ago.",
    "Whales communicate with songs that can travel for many kilometres under the ocean surface.",
)


@torch.no_grad()
def _next_token_logprobs(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def kl_drift(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str] = NEUTRAL_TEXTS,
    *,
    base_model: nn.Module | None = None,
    batch_size: int = 8,
) -> float:
    """Mean over all text positions of KL(base || updated) between next-token distributions.

    Without ``base_model``, ``model`` must be a PeftModel: the base is the same model with adapters
    disabled (exact for CCA and LoRA, no second copy in memory).
    """
    if base_model is None and not hasattr(model, "disable_adapter"):
        raise ValueError("kl_drift needs base_model, or a PeftModel whose adapters can be disabled")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    for begin in range(0, len(encoded), batch_size):
        input_ids, mask = left_pad(encoded[begin : begin + batch_size], pad_token_id(tokenizer))
        input_ids, mask = input_ids.to(device), mask.to(device)
        updated = _next_token_logprobs(model, input_ids, mask)
        if base_model is None:
            with model.disable_adapter():
                base = _next_token_logprobs(model, input_ids, mask)
        else:
            base = _next_token_logprobs(base_model, input_ids, mask)
        kl = F.kl_div(updated, base, log_target=True, reduction="none").sum(-1)  # KL(base || updated) per position
        total += float((kl * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / count
