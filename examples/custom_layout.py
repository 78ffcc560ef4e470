"""A model peft-cca has no layout for (here StarCoder2, whose MLP has no gate): say where its modules are.

python examples/custom_layout.py
"""

import torch
from peft import get_peft_model
from transformers import Starcoder2Config, Starcoder2ForCausalLM

from peft_cca import CCAConfig, Circuit, describe
from peft_cca.method.arch import LAYOUTS, Layout

LAYOUTS["starcoder2"] = Layout(
    layers="model.layers",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    up="mlp.c_fc",
    down="mlp.c_proj",
    mlp_packing="none",  # no gate projection: a neuron is one c_fc row
)

config = Starcoder2Config(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, bos_token_id=0, eos_token_id=0,
)  # fmt: skip
model = Starcoder2ForCausalLM(config)  # randomly initialised: replace with from_pretrained("bigcode/starcoder2-3b")
circuit = Circuit(describe(model).shape, {0: {"q": [1], "v": [0]}, 1: {"mlp": [3, 17]}})
peft_model = get_peft_model(model, CCAConfig(circuit=circuit))
peft_model.print_trainable_parameters()  # 2 heads of 16 rows each and 2 neuron rows, of 64 inputs: 2,176
with torch.no_grad():
    print(peft_model(torch.tensor([[1, 2, 3]])).logits.shape)
