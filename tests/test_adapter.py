"""The CCA PEFT method on tiny random models of every supported layout."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import ARCHITECTURES, VOCAB, tiny_model, tokens

import peft_cca
from peft_cca import CCAConfig, Circuit, CircuitShapeError, describe
from peft_cca.method.layer import CCALayer


def small_circuit(model) -> Circuit:
    """A mix of every kind across both layers (kv head 0 exists in every tiny model)."""
    shape = describe(model).shape
    return Circuit(shape, {0: {"q": [1], "k": [0], "mlp": [3, 17]}, 1: {"v": [0], "q": [3], "mlp": [0]}})


def randomize_deltas(model, std: float = 0.05, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "cca_delta" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zero_deltas_give_bit_identical_logits(arch):
    base = tiny_model(arch)
    ids = tokens()
    reference = base(ids).logits
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base)))
    assert torch.equal(peft_model(ids).logits, reference)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trainable_parameters_are_exactly_the_selected_rows(arch):
    base = tiny_model(arch)
    circuit = small_circuit(base)
    spec = describe(base)
    expected = 0
    for layer in range(spec.shape.num_layers):
        for kind in ("q", "k", "v", "mlp"):
            selected = circuit.selected(layer, kind)
            for site in spec.param_sites(kind):
                module = spec.layers(base)[layer].get_submodule(site.module)
                in_features = module.weight.shape[0] if arch == "gpt2" else module.in_features
                expected += len(site.features(selected)) * in_features
    peft_model = get_peft_model(base, CCAConfig(circuit=circuit))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == expected > 0
    assert all(("cca_delta" in n) == p.requires_grad for n, p in peft_model.named_parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("kind", ["q", "k", "v", "mlp"])
def test_a_delta_changes_only_its_components_features(arch, kind):
    """A delta on one component changes only that component's features at the site DCM scales."""
    base = tiny_model(arch)
    spec = describe(base)
    component = spec.shape.count(kind) - 1
    circuit = Circuit(spec.shape, {1: {kind: [component]}})
    peft_model = get_peft_model(base, CCAConfig(circuit=circuit))
    # the site whose output the trained rows produce (for MLP neurons: the up projection output)
    site = spec.param_sites(kind)[0]
    module = spec.layers(peft_model)[1].get_submodule(site.module)
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    ids = tokens()
    peft_model(ids)
    randomize_deltas(peft_model)
    peft_model(ids)
    handle.remove()
    before, after = captured
    changed = (before != after).any(dim=(0, 1)).nonzero().flatten()
    assert torch.equal(changed, site.features([component]))


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi3", "gpt2", "gpt_neox", "qwen3"])
def test_gradients_reach_only_the_deltas(arch):
    base = tiny_model(arch)
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base), mlp_targets=["up", "gate", "down"]))
    peft_model.train()
    loss = peft_model(tokens()).logits.square().mean()
    loss.backward()
    for name, param in peft_model.named_parameters():
        if "cca_delta" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_merge_matches_unmerged_and_unmerge_restores_the_base_bit_for_bit(arch):
    base = tiny_model(arch)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base), mlp_targets=["up", "gate", "down"]))
    randomize_deltas(peft_model)
    ids = tokens()
    unmerged = peft_model(ids).logits
    peft_model.merge_adapter()
    merged = peft_model(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    peft_model.unmerge_adapter()
    restored = peft_model.get_base_model().state_dict()
    for key, value in original.items():
        restored_key = (
            key
            if key in restored
            else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(restored[restored_key], value), key


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi3", "gemma3_text"])
def test_save_and_load_round_trip(tmp_path, arch):
    base = tiny_model(arch)
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base)))
    randomize_deltas(peft_model)
    ids = tokens()
    expected = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "README.md") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "CCA" and config["circuit"]["format"] == "peft-cca/circuit@1"
    again = PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    assert torch.equal(again(ids).logits, expected)
    merged = again.merge_and_unload()
    assert not any(isinstance(m, CCALayer) for m in merged.modules())
    torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_saved_adapter_holds_only_the_selected_rows(tmp_path):
    from safetensors.torch import load_file

    base = tiny_model("llama")
    circuit = small_circuit(base)
    peft_model = get_peft_model(base, CCAConfig(circuit=circuit))
    peft_model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    deltas = {k: t for k, t in tensors.items() if "cca_delta" in k}
    rows = {k: t for k, t in tensors.items() if "cca_index" in k}
    assert set(tensors) == set(deltas) | set(rows)
    assert all(t.dtype == torch.float32 for t in deltas.values())
    assert sum(t.numel() for t in deltas.values()) == peft_model.get_nb_trainable_parameters()[0]
    # beside the deltas only their row numbers, one int64 per row, which loading checks against the circuit
    assert {k: t.shape[0] for k, t in deltas.items()} == {k.replace("index", "delta"): len(t) for k, t in rows.items()}


def test_circuit_for_another_shape_is_refused_with_the_difference_named():
    llama = tiny_model("llama")
    gemma = tiny_model("gemma2")
    with pytest.raises(CircuitShapeError, match=r"head_dim: 16 != 12"):
        get_peft_model(llama, CCAConfig(circuit=small_circuit(gemma)))


def test_empty_circuit_is_a_clear_error():
    base = tiny_model("llama")
    with pytest.raises(ValueError, match="selects no component"):
        get_peft_model(base, CCAConfig(circuit=Circuit.empty(base)))


def test_disable_adapter_and_unload_give_the_base_model():
    base = tiny_model("qwen2")
    ids = tokens()
    reference = base(ids).logits
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base)))
    randomize_deltas(peft_model)
    assert not torch.equal(peft_model(ids).logits, reference)
    with peft_model.disable_adapter():
        assert torch.equal(peft_model(ids).logits, reference)
    unloaded = peft_model.unload()
    assert torch.equal(unloaded(ids).logits, reference)


def test_several_named_adapters():
    base = tiny_model("llama")
    ids = tokens()
    reference = base(ids).logits
    shape = describe(base).shape
    first = Circuit(shape, {0: {"q": [0]}})
    second = Circuit(shape, {0: {"q": [0, 2]}, 1: {"mlp": [5]}})
    peft_model = get_peft_model(base, CCAConfig(circuit=first))
    peft_model.add_adapter("second", CCAConfig(circuit=second))
    randomize_deltas(peft_model)
    out_first = peft_model(ids).logits
    peft_model.set_adapter("second")
    out_second = peft_model(ids).logits
    assert not torch.equal(out_first, out_second)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".second") for n in trainable)
    peft_model.delete_adapter("default")
    assert list(peft_model.peft_config) == ["second"]
    assert not any(n.endswith(".default") for n, _ in peft_model.named_parameters())
    assert torch.equal(peft_model(ids).logits, out_second)
    with peft_model.disable_adapter():
        assert torch.equal(peft_model(ids).logits, reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_base_keeps_fp32_deltas(dtype):
    base = tiny_model("llama", dtype=dtype)
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base)))
    deltas = [p for n, p in peft_model.named_parameters() if "cca_delta" in n]
    assert deltas and all(p.dtype == torch.float32 for p in deltas)
    ids = tokens()
    assert peft_model(ids).logits.dtype == dtype
    peft_model.train()
    peft_model(ids).logits.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in deltas)
    # an update far below bf16/fp16 resolution of the weight survives in the fp32 delta
    with torch.no_grad():
        deltas[0].add_(1e-6)
    assert deltas[0].abs().min() > 0


def test_unsupported_model_error_names_the_module_and_the_way_out():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    model.config.model_type = "mystery"
    with pytest.raises(peft_cca.UnsupportedModelError, match=r"no layout known for model_type 'mystery'.*Layout"):
        describe(model)
    model.config.model_type = "llama"
    layout = peft_cca.method.arch.LAYOUTS["llama"]
    broken = peft_cca.Layout(**{**layout.__dict__, "up": "mlp.up"})
    with pytest.raises(peft_cca.UnsupportedModelError, match=r"could not find the mlp.up .* module 'mlp.up'"):
        describe(model, layout=broken)


def test_works_with_transformers_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    base = tiny_model("llama")
    peft_model = get_peft_model(base, CCAConfig(circuit=small_circuit(base)))
    ids = tokens(batch=8, length=6)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    Trainer(model=peft_model, args=args, train_dataset=data).train()
    for name, param in peft_model.named_parameters():
        assert torch.equal(param, before[name]) != ("cca_delta" in name), name
