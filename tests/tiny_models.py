"""Tiny randomly initialised causal LMs of every supported layout, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 97

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=12,
    max_position_embeddings=128,
    bos_token_id=0,
    eos_token_id=1,
)

CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON),
    # Gemma-2: head_dim (16) is not hidden / heads (12)
    "gemma2": lambda: Gemma2Config(**{**_COMMON, "head_dim": 16}),
    # a sliding window shorter than most test sequences, so the windowed attention path is exercised
    "gemma3_text": lambda: Gemma3TextConfig(
        **{**_COMMON, "head_dim": 16, "num_key_value_heads": 1, "sliding_window": 6}
    ),
    "olmo2": lambda: Olmo2Config(**_COMMON),
    "phi3": lambda: Phi3Config(**{k: v for k, v in _COMMON.items() if k != "head_dim"}, pad_token_id=0),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB,
        n_embd=48,
        n_layer=2,
        n_head=4,
        n_inner=80,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=1,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=80,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=1,
    ),
}

ARCHITECTURES = sorted(CONFIGS)


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A fresh tiny model; the same ``seed`` gives the same weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation="eager").to(dtype)
    return model.eval()


def tokens(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)
