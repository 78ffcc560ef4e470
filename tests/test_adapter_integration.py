"""The CCA adapter on the real offline SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_cca import CCAConfig, Circuit, describe
from peft_cca.runtime.loading import load_model

pytestmark = pytest.mark.integration


def test_adapter_round_trip_on_smollm2(tmp_path):
    model, tokenizer = load_model("smollm2-135m-instruct")
    shape = describe(model).shape
    assert (shape.num_layers, shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.intermediate_size) == (
        30,
        9,
        3,
        64,
        1536,
    )
    ids = tokenizer("Natalia sold 48 clips in April and half as many in May.", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits
    circuit = Circuit(shape, {3: {"q": [2], "k": [1]}, 17: {"v": [0], "mlp": [10, 1000]}})
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit))
    assert peft_model.get_nb_trainable_parameters()[0] == (64 + 64 + 64) * 576 + 2 * 576
    with torch.no_grad():
        assert torch.equal(peft_model(ids).logits, reference)
        for name, param in peft_model.named_parameters():
            if "cca_delta" in name:
                param.normal_(std=0.02)
        adapted = peft_model(ids).logits
    assert not torch.allclose(adapted, reference)
    peft_model.save_pretrained(tmp_path)
    base, _ = load_model("smollm2-135m-instruct")
    merged = PeftModel.from_pretrained(base, tmp_path).merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, rtol=1e-4, atol=1e-4)
