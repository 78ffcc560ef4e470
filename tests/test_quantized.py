"""CCA over a bitsandbytes-quantized base, like LoRA over QLoRA: fp32 deltas beside the 4/8-bit weight."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import tokens

from peft_cca import CCAConfig, Circuit, QuantizedMergeError, describe

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def quantized_path(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig

    # bitsandbytes' CPU 4-bit kernel packs output rows in blocks of 32: every projection width is a multiple of 32
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def load_quantized(path, bits: int):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu").eval()


@pytest.mark.parametrize("bits", [4])
def test_adapter_trains_and_runs_on_a_quantized_base(quantized_path, tmp_path, bits):
    base = load_quantized(quantized_path, bits)
    ids = tokens()
    reference = base(ids).logits
    circuit = Circuit(describe(base).shape, {0: {"q": [1], "mlp": [4]}, 1: {"k": [0]}})
    peft_model = get_peft_model(base, CCAConfig(circuit=circuit))
    # bitsandbytes' CPU kernels differ slightly between calls (packed inference vs dequantized paths)
    torch.testing.assert_close(peft_model(ids).logits, reference, atol=5e-3, rtol=0)
    deltas = [p for n, p in peft_model.named_parameters() if p.requires_grad]
    assert deltas and all("cca_delta" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    assert all(p.dtype == torch.float32 for p in deltas)

    peft_model.train()
    optimizer = torch.optim.SGD(deltas, lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(ids).logits[..., 5].mean().neg().backward()
        optimizer.step()
    peft_model.eval()
    trained = peft_model(ids).logits
    assert trained[..., 5].mean() > reference[..., 5].mean()

    with pytest.raises(QuantizedMergeError, match="quantized"):
        peft_model.merge_adapter()

    peft_model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(load_quantized(quantized_path, bits), tmp_path)
    torch.testing.assert_close(again(ids).logits, trained, atol=5e-3, rtol=0)
