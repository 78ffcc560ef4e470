"""The one-token path equals the full-sequence path: same loss, same gradients, same mask after training."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from peft_cca.dcm.interventions import ComponentMask, MaskIntervention
from peft_cca.dcm.paths import FullSequencePath, OneTokenPath
from peft_cca.dcm.train import DCMConfig, batch_loss, train_mask
from peft_cca.localize.records import Record
from peft_cca.method.arch import describe

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2, head_dim=16),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    # head_dim 24 != 64 / 4, and a sliding window shorter than the prefixes
    "gemma2": lambda: Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=24, sliding_window=4),
    # per-head q/k norms: DCM scales those heads after the norm
    "qwen3": lambda: Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=16),
    "gemma3_text": lambda: Gemma3TextConfig(**COMMON, num_key_value_heads=1, head_dim=16, sliding_window=4),
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=96, bos_token_id=0, eos_token_id=0
    ),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON),
    "phi3": lambda: Phi3Config(**COMMON, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}
LENGTHS = (7, 12, 1, 9, 5, 12, 3, 10)


def tiny_model(arch: str, attn: str = "eager", seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation=attn).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def random_records(
    n: int = 8, seed: int = 1, lengths: tuple[int, ...] = LENGTHS, tokens: tuple[int, int] | None = None
) -> list[Record]:
    """Random prefixes; ``tokens`` fixes (desired, undesired) so that every record pulls the same way."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (lengths[i % len(lengths)],), generator=g).tolist()
        desired, undesired = tokens or torch.randperm(VOCAB, generator=g)[:2].tolist()
        out.append(Record(tuple(ids), desired, undesired, problem_id=str(i)))
    return out


def _loss_and_grad(model, path, records, form="paper", lam=0.01):
    spec = describe(model)
    mask = ComponentMask(spec.shape, form)
    with torch.no_grad():  # a generic point inside [0,1], the same for both paths
        for v in mask.values.values():
            v.copy_(torch.rand(v.shape, generator=torch.Generator().manual_seed(v.numel())))
    with MaskIntervention(model, spec, mask) as intervention:
        loss, diff = batch_loss(path, intervention, mask, list(range(len(records))), lam)
    loss.backward()
    return loss.detach(), diff.detach(), torch.cat([v.grad.reshape(-1) for v in mask.values.values()])


CASES = [(a, "eager") for a in CONFIGS] + [(a, "sdpa") for a in CONFIGS if a not in ("gemma2", "gemma3_text")]


@pytest.mark.parametrize(("arch", "attn"), CASES)
@pytest.mark.parametrize("form", ["paper", "authors"])
def test_one_token_path_matches_full_sequence(arch, attn, form):
    model = tiny_model(arch, attn)
    records = random_records()
    full = _loss_and_grad(model, FullSequencePath(model, records), records, form)
    fast = _loss_and_grad(model, OneTokenPath(model, records, progress=False), records, form)
    torch.testing.assert_close(fast[0], full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], full[1], rtol=1e-5, atol=1e-5)
    assert full[2].abs().max() > 1e-3  # the mask does move the logits
    torch.testing.assert_close(fast[2], full[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text"])
def test_query_and_key_heads_move_the_logits_under_per_head_norms(arch):
    """Scaling a head before a per-head RMSNorm is undone by the norm (zero gradient); after it, it is not."""
    model = tiny_model(arch)
    records = random_records()
    spec = describe(model)
    assert spec.site("q").module.endswith("q_norm") and spec.site("k").module.endswith("k_norm")
    mask = ComponentMask(spec.shape, "paper")
    with MaskIntervention(model, spec, mask) as intervention:
        loss, _ = batch_loss(FullSequencePath(model, records), intervention, mask, list(range(len(records))), 0.0)
    loss.backward()
    for kind in ("q", "k"):
        assert mask.values[kind].grad.abs().max() > 1e-4, kind


def test_full_path_padding_does_not_change_results():
    model = tiny_model("llama")
    records = random_records()
    with torch.no_grad():
        batched = FullSequencePath(model, records).logit_diff(range(len(records)))
        alone = torch.cat([FullSequencePath(model, [r]).logit_diff([0]) for r in records])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_intervention_is_identity_at_init_and_removed_on_exit():
    model = tiny_model("llama")
    records = random_records()
    path = FullSequencePath(model, records)
    spec = describe(model)
    with torch.no_grad():
        plain = path.logit_diff(range(8))
        for form in ("paper", "authors"):
            mask = ComponentMask(spec.shape, form)
            if form == "authors":  # 0.5 is the identity of h -> 2 m h
                for v in mask.values.values():
                    v.fill_(0.5)
            with MaskIntervention(model, spec, mask) as iv:
                torch.testing.assert_close(path.logit_diff(range(8), iv), plain)
            with MaskIntervention(model, spec, mask) as iv:
                for v in mask.values.values():
                    v.fill_(1.0)
                assert not torch.allclose(path.logit_diff(range(8), iv), plain)
        torch.testing.assert_close(path.logit_diff(range(8)), plain)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox", "phi3"])
def test_same_mask_after_training_on_both_paths(arch):
    model = tiny_model(arch)
    records = random_records(12, tokens=(3, 5))
    config = DCMConfig(lam=0.002, lr=0.1, epochs=4, batch_size=4, early_stop_fraction=None)
    fast = train_mask(model, records, DCMConfig(**{**config.__dict__, "path": "fast"}), progress=False)
    full = train_mask(model, records, DCMConfig(**{**config.__dict__, "path": "full"}), progress=False)
    torch.testing.assert_close(fast.mask.flat(), full.mask.flat(), rtol=0, atol=1e-4)
    assert fast.circuit == full.circuit
    assert len(fast.circuit) > 0
