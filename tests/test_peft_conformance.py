"""The "cca" method under the checks of peft's generic test matrix (peft's tests/testing_common.py).

peft asks every method to behave the same way: save and load in both formats, merge and unmerge by adapter
name, several adapters, requires_grad bookkeeping, modules_to_save, dtype and device changes around merges,
generate, torch.compile. peft's own test files are not installed, so these tests restate its checks for CCA on
tiny Llama, Qwen2 and GPT-2 (fused ``c_attn``, ``Conv1D``) models, plus Phi-3 (fused ``qkv_proj``) where cheap.
Tests named ``test_defect_*`` reproduce a bug the old code had, exactly as it was reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model, tokens
from transformers import AutoModelForSequenceClassification

from peft_cca import CCAConfig, CCALayer, Circuit, describe
from peft_cca.errors import CCAError, UsageError

ARCHS = ["llama", "qwen2", "gpt2"]
ALL_ARCHS = [*ARCHS, "phi3"]


def circuit_a(model) -> Circuit:
    return Circuit(describe(model).shape, {0: {"q": [1], "k": [0], "mlp": [3, 17]}, 1: {"v": [0], "mlp": [0]}})


def circuit_b(model) -> Circuit:
    """Overlaps circuit_a in layer 0's query head 1, so merges of both touch the same rows."""
    return Circuit(describe(model).shape, {0: {"q": [1, 2]}, 1: {"mlp": [5, 6]}})


def cca(model, circuit=circuit_a, **kwargs) -> PeftModel:
    """A CCA model with random (non-identity) deltas, as peft's tests use ``init_lora_weights=False``."""
    return get_peft_model(model, CCAConfig(circuit=circuit(model), init_weights=False, **kwargs)).eval()


def logits(model, ids=None) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens() if ids is None else ids).logits


def base_weights(peft_model) -> dict[str, torch.Tensor]:
    """The base model's weights under their plain names (without the ``base_layer`` of wrapped modules)."""
    state = peft_model.get_base_model().state_dict()
    return {k.replace(".base_layer", ""): v.clone() for k, v in state.items() if "cca_" not in k}


# -- construction, init_weights, requires_grad ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_init_weights_true_is_the_identity_and_false_changes_the_output(arch):
    reference = logits(tiny_model(arch))
    zero = get_peft_model(tiny_model(arch), CCAConfig(circuit=circuit_a(tiny_model(arch))))
    assert torch.equal(logits(zero), reference)
    assert not torch.allclose(logits(cca(tiny_model(arch))), reference)


def test_defect_init_weights_was_missing():
    """Reported: no way to start from non-zero deltas, which peft's test helpers rely on."""
    config = CCAConfig(circuit=circuit_a(tiny_model("llama")), init_weights=False)
    deltas = [p for n, p in get_peft_model(tiny_model("llama"), config).named_parameters() if "cca_delta" in n]
    assert deltas and all(p.abs().sum() > 0 and p.dtype == torch.float32 for p in deltas)


@pytest.mark.parametrize("arch", ARCHS)
def test_requires_grad_follows_set_adapter_inference_mode_and_set_requires_grad(arch):
    model = cca(tiny_model(arch))
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model())))

    def trainable():
        return {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}

    assert trainable() == {"default"}
    model.set_adapter("other")
    assert trainable() == {"other"}
    model.base_model.set_adapter("other", inference_mode=True)
    assert trainable() == set()
    model.set_requires_grad("default")
    assert trainable() == {"default"}
    assert all(not p.requires_grad for n, p in model.named_parameters() if "cca_" not in n)


def test_inference_mode_config_freezes_the_adapter():
    model = get_peft_model(tiny_model("llama"), CCAConfig(circuit=circuit_a(tiny_model("llama")), inference_mode=True))
    assert model.get_nb_trainable_parameters()[0] == 0


def test_defect_user_target_modules_were_overwritten_without_a_word():
    base = tiny_model("llama")
    config = CCAConfig(circuit=circuit_a(base), target_modules=["o_proj"])
    with pytest.warns(UserWarning, match="target_modules is derived from the circuit"):
        model = get_peft_model(base, config)
    assert not any(isinstance(m, CCALayer) for n, m in model.named_modules() if n.endswith("o_proj"))
    # the config peft filled in does not warn when it is used again
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        get_peft_model(tiny_model("llama"), config)


def test_model_and_layer_status_report_the_adapter():
    model = cca(tiny_model("llama"))
    model.merge_adapter()
    status = model.get_model_status()
    assert status.peft_types == {"default": "CCA"} and status.merged_adapters == ["default"]
    assert status.available_adapters == ["default"] and status.trainable_params > 0
    assert all(layer.module_type == "cca.CCALayer" for layer in model.get_layer_status())


@pytest.mark.parametrize("arch", ARCHS)
def test_training_changes_only_the_deltas_and_inputs_embeds_work(arch):
    model = cca(tiny_model(arch)).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(tokens()).logits.square().mean().backward()
    optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != ("cca_delta" in name), name
    model.eval()
    embeds = model.get_base_model().get_input_embeddings()(tokens())
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=embeds).logits, logits(model))


# -- save and load ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_and_load_in_both_formats(tmp_path, arch, safe_serialization):
    model = cca(tiny_model(arch))
    expected = logits(model)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    weights = "adapter_model.safetensors" if safe_serialization else "adapter_model.bin"
    assert (tmp_path / weights).is_file()
    loaded = PeftModel.from_pretrained(tiny_model(arch), tmp_path)
    assert torch.equal(logits(loaded), expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference by default
    trainable = PeftModel.from_pretrained(tiny_model(arch), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()
    assert all(("cca_delta" in n) == p.requires_grad for n, p in trainable.named_parameters())


def test_save_selected_adapters_and_load_them_by_name(tmp_path):
    model = cca(tiny_model("qwen2"))
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model()), init_weights=False))
    model.set_adapter("other")
    expected_other = logits(model)
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert not (tmp_path / "adapter_model.safetensors").exists()
    loaded = PeftModel.from_pretrained(tiny_model("qwen2"), tmp_path / "other", adapter_name="other")
    assert list(loaded.peft_config) == ["other"]
    assert torch.equal(logits(loaded), expected_other)
    loaded.load_adapter(tmp_path / "other", adapter_name="again")
    loaded.set_adapter("again")
    assert torch.equal(logits(loaded), expected_other)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_get_and_set_round_trip(arch):
    source = cca(tiny_model(arch))
    state = get_peft_model_state_dict(source)
    assert state and all("cca_delta" in k or "cca_index" in k for k in state)
    assert all(".default" not in k for k in state)
    target = get_peft_model(tiny_model(arch), CCAConfig(circuit=circuit_a(tiny_model(arch)))).eval()
    result = set_peft_model_state_dict(target, state)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "cca_" in k]
    assert torch.equal(logits(target), logits(source))


def test_low_cpu_mem_usage_loading_keeps_fp32_deltas_on_a_bf16_base(tmp_path):
    """peft moves loaded adapters to the base layer's device *and dtype*; CCA's deltas must stay fp32."""
    cca(tiny_model("llama")).save_pretrained(tmp_path)
    base = tiny_model("llama", dtype=torch.bfloat16)
    loaded = PeftModel.from_pretrained(base, tmp_path, low_cpu_mem_usage=True)
    deltas = {n: p for n, p in loaded.named_parameters() if "cca_delta" in n}
    assert deltas and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in deltas.values())
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for name, param in deltas.items():
        key = name.replace(".default", "")
        assert torch.equal(param, saved[key]), name


def test_adapter_follows_a_meta_base_the_way_peft_moves_adapters():
    with torch.device("meta"):
        base = tiny_model("llama")
    model = get_peft_model(base, CCAConfig(circuit=circuit_a(base)))
    assert {p.device.type for n, p in model.named_parameters() if "cca_delta" in n} == {"meta"}
    assert {p.dtype for n, p in model.named_parameters() if "cca_delta" in n} == {torch.float32}


# -- merge, unmerge, unload, disable ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_unmerge_safe_merge_and_merge_and_unload_by_adapter_name(arch):
    model = cca(tiny_model(arch))
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model()), init_weights=False))
    original = base_weights(model)
    with model.disable_adapter():
        reference = logits(model)
    model.base_model.set_adapter(["default", "other"])
    both = logits(model)
    assert not torch.allclose(both, reference)

    model.merge_adapter(adapter_names=["default", "other"], safe_merge=True)
    torch.testing.assert_close(logits(model), both, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    assert all(torch.equal(v, original[k]) for k, v in base_weights(model).items())
    assert torch.equal(logits(model), both)

    model.merge_adapter(adapter_names=["other"])
    merged_layers = [m for m in model.modules() if isinstance(m, CCALayer) and m.merged]
    assert merged_layers and all(m.merged_adapters == ["other"] for m in merged_layers)
    model.unmerge_adapter()

    model.set_adapter("default")
    only_default = logits(model)
    merged = model.merge_and_unload(adapter_names=["default"], safe_merge=True)
    assert not any(isinstance(m, CCALayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged), only_default, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_unload_and_disable_give_the_base_model_back(arch):
    base = tiny_model(arch)
    reference = logits(base)
    model = cca(base)
    model.merge_adapter()
    with model.disable_adapter():
        assert torch.equal(logits(model), reference)  # disabling unmerges
    assert torch.equal(logits(model.unload()), reference)


def test_defect_safe_merge_message_differs_from_peft():
    model = cca(tiny_model("llama"))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "cca_delta" in n)[0, 0] = float("nan")
    with pytest.raises(
        ValueError, match=r"^NaNs detected in the merged weights. The adapter default seems to be broken$"
    ):
        model.merge_adapter(safe_merge=True)


# -- several adapters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_add_set_delete_adapters(arch):
    model = cca(tiny_model(arch))
    first = logits(model)
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model()), init_weights=False))
    assert torch.equal(logits(model), first)  # adding does not activate
    model.set_adapter("other")
    second = logits(model)
    assert not torch.equal(second, first)
    model.merge_adapter(["other"])
    with pytest.raises(ValueError, match="merged"):
        model.delete_adapter("other")  # peft refuses to delete a merged adapter
    model.unmerge_adapter()
    model.delete_adapter("default")
    assert list(model.peft_config) == ["other"]
    for module in model.modules():
        if isinstance(module, CCALayer):
            assert "default" not in module.cca_delta and "default" not in module.cca_index
    assert torch.equal(logits(model), second)


def test_delete_unknown_adapter_raises_and_merging_twice_is_a_no_op():
    model = cca(tiny_model("llama"))
    with pytest.raises(ValueError, match="Adapter nope does not exist"):
        model.delete_adapter("nope")
    original = base_weights(model)
    model.merge_adapter()
    merged = base_weights(model)
    with pytest.warns(UserWarning, match="already merged"):
        model.merge_adapter()
    assert all(torch.equal(v, merged[k]) for k, v in base_weights(model).items())
    model.unmerge_adapter()
    assert all(torch.equal(v, original[k]) for k, v in base_weights(model).items())


def test_defect_plan_cache_kept_deleted_adapters():
    """Reported: the per-adapter plan cache kept deleted adapters' configs and index tensors."""
    model = cca(tiny_model("llama"))
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model())))
    model.delete_adapter("other")
    assert not model.base_model.__dict__.get("_cca_plans")


def test_mixed_adapter_batches_like_lora():
    model = cca(tiny_model("llama"))
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model()), init_weights=False))
    ids = tokens(batch=3)
    expected = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        expected[name] = logits(model, ids)
    with model.disable_adapter():
        expected["__base__"] = logits(model, ids)
    names = ["other", "__base__", "default"]
    with torch.no_grad():
        mixed = model(ids, adapter_names=names).logits
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], expected[name][row], rtol=1e-5, atol=1e-5)
    generated = model.generate(input_ids=ids, adapter_names=names, max_new_tokens=2, do_sample=False)
    assert generated.shape == (3, ids.shape[1] + 2)
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(ids, adapter_names=["nope", "default", "default"])
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged adapters, please call `unmerge_adapter` first"):
        model(ids, adapter_names=names)
    model.unmerge_adapter()
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(ids, adapter_names=names)


# -- dtype and device changes around merges -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cast", ["bf16", "half"])
def test_defect_unmerge_after_a_dtype_change(arch, cast):
    """Reported: merge_adapter(), model.to(bfloat16) (or .half()), unmerge_adapter() raised in index_copy_."""
    model = cca(tiny_model(arch))
    expected = base_weights(model)
    model.merge_adapter()
    model = model.to(torch.bfloat16) if cast == "bf16" else model.half()
    model.unmerge_adapter()
    dtype = torch.bfloat16 if cast == "bf16" else torch.float16
    for key, value in base_weights(model).items():
        assert torch.equal(value, expected[key].to(dtype)), key  # as if the base had been cast on its own


@pytest.mark.parametrize("arch", ARCHS)
def test_defect_disable_adapter_after_a_dtype_change(arch):
    """Reported: the same crash inside forward under disable_adapter()."""
    base = tiny_model(arch)
    reference = logits(tiny_model(arch, dtype=torch.bfloat16))
    model = cca(base)
    model.merge_adapter()
    model.to(torch.bfloat16)
    with model.disable_adapter():
        assert torch.equal(logits(model), reference)


def test_forward_after_a_dtype_change_matches_the_merged_model():
    model = cca(tiny_model("llama")).to(torch.bfloat16)
    unmerged = logits(model)
    model.merge_adapter()
    torch.testing.assert_close(logits(model), unmerged, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_generates_and_merges(dtype):
    model = cca(tiny_model("qwen2", dtype=dtype))
    ids = tokens(batch=1)
    assert model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 10)
    unmerged = logits(model)
    model.merge_adapter(safe_merge=True)
    assert logits(model).dtype == dtype
    torch.testing.assert_close(logits(model), unmerged, rtol=0.05, atol=0.05)


def test_defect_unmerge_after_a_device_change():
    """The originals follow the model to another device (meta here: no GPU), so unmerge runs where the weight is."""
    model = cca(tiny_model("gpt2"))
    model.merge_adapter()
    model.to("meta")
    assert {b.device.type for n, b in model.named_buffers() if "cca_original" in n} == {"meta"}
    model.unmerge_adapter()
    assert not any(isinstance(m, CCALayer) and m.merged for m in model.modules())


# -- modules_to_save --------------------------------------------------------------------------------------------


def seq_cls(arch: str):
    torch.manual_seed(0)
    base = tiny_model(arch)
    config = base.config
    config.num_labels, config.pad_token_id = 3, 0
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_defect_seq_cls_head_is_trained_and_saved(tmp_path, arch):
    """Reported: task_type="SEQ_CLS" left the new head frozen and unsaved; reloading gave a fresh random head."""
    base = seq_cls(arch)
    model = get_peft_model(base, CCAConfig(circuit=circuit_a(base), task_type="SEQ_CLS", init_weights=False))
    head = [n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    assert head and all("score" in n for n in head)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(1.0)
        expected = model(tokens()).logits
    model.save_pretrained(tmp_path)
    assert any("score" in k for k in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(seq_cls(arch), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(tokens()).logits, expected)


def test_defect_modules_to_save_was_a_type_error():
    base = tiny_model("llama")
    model = get_peft_model(base, CCAConfig(circuit=circuit_a(base), modules_to_save=["lm_head"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lm_head.modules_to_save.default" in n for n in trainable)
    assert any("lm_head" in k for k in get_peft_model_state_dict(model))


# -- generate, gradient checkpointing, torch.compile --------------------------------------------------------------


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_generate_matches_the_merged_model(arch):
    model = cca(tiny_model(arch))
    ids = tokens(batch=1)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    unmerged = model.generate(input_ids=ids, **kwargs)
    merged = model.merge_and_unload().generate(input_ids=ids, **kwargs)
    assert torch.equal(unmerged, merged)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_checkpointing_gives_the_same_gradients(arch):
    grads = []
    for checkpointing in (False, True):
        model = cca(tiny_model(arch))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.enable_input_require_grads()
        model.train()
        model(tokens()).logits.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_torch_compile_matches_eager():
    if shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on CPU and none is installed")
    model = cca(tiny_model("gpt2"))
    expected = logits(model)
    compiled = torch.compile(model, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(tokens()).logits, expected, rtol=1e-4, atol=1e-4)


# -- adapter files that lie (issue 13) ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_adapter_file_is_refused_naming_file_and_tensor(tmp_path, value):
    cca(tiny_model("llama")).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    key = sorted(k for k in tensors if "cca_delta" in k)[0]
    tensors[key][0, 0] = value
    save_file(tensors, path)
    with pytest.raises(CCAError, match=rf"adapter_model.safetensors: tensor {key} holds NaN or inf"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_edited_circuit_in_adapter_config_is_refused(tmp_path):
    cca(tiny_model("llama")).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["circuit"]["layers"]["0"]["q"] = [2]  # same number of rows, other rows: shapes alone would not tell
    config_path.write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"adapter_config.json: its circuit selects rows .* was trained for rows"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_adapter_saved_without_row_indices_still_loads_with_a_warning(tmp_path):
    model = cca(tiny_model("llama"))
    expected = logits(model)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if "cca_index" not in k}, path)
    with pytest.warns(UserWarning, match="has no row indices"):
        loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert torch.equal(logits(loaded), expected)


@pytest.mark.parametrize(("bad", "shown"), [(1.7, "1.7"), (True, "True")])
def test_circuit_file_with_non_integer_index_is_refused(tmp_path, bad, shown):
    path = tmp_path / "circuit.json"
    circuit_a(tiny_model("llama")).save(path)
    data = json.loads(path.read_text())
    data["layers"]["0"]["mlp"] = [bad]
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=rf"circuit.json: layers.0.mlp: index {shown} is not a whole number"):
        Circuit.load(path)


def test_circuit_index_out_of_range_names_layer_kind_and_size(tmp_path):
    path = tmp_path / "circuit.json"
    circuit_a(tiny_model("llama")).save(path)
    data = json.loads(path.read_text())
    data["layers"]["1"]["mlp"] = [80]
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=r"layer 1 mlp: indices \[80\] outside 0..79: the model has 80 mlp"):
        Circuit.load(path)


def test_broken_circuit_in_adapter_config_names_the_file(tmp_path):
    cca(tiny_model("llama")).save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["circuit"]["layers"]["0"]["mlp"] = [3.5]
    config_path.write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"adapter_config.json: layers.0.mlp: index 3.5 is not a whole number"):
        PeftModel.from_pretrained(tiny_model("llama"), tmp_path)


LOAD_IN_A_FRESH_PROCESS = """
import sys
sys.path.insert(0, {tests!r})
{first}
{second}
import torch
from tiny_models import tiny_model, tokens
model = PeftModel.from_pretrained(tiny_model("llama"), {adapter!r})
with torch.no_grad():
    torch.save(model(tokens()).logits, {out!r})
"""


@pytest.mark.parametrize("peft_first", [False, True], ids=["peft_cca-then-peft", "peft-then-peft_cca"])
def test_defect_loading_a_saved_adapter_in_a_fresh_process_gave_key_error_cca(tmp_path, peft_first):
    """Reported: ``PeftModel.from_pretrained(base, saved_cca)`` raised a bare ``KeyError: 'CCA'``. Now ``import
    peft_cca`` (torch-free) registers the method as peft loads, whichever of the two is imported first."""
    model = cca(tiny_model("llama"))
    model.save_pretrained(tmp_path / "adapter")
    imports = ["import peft_cca", "from peft import PeftModel"]
    first, second = reversed(imports) if peft_first else imports
    code = LOAD_IN_A_FRESH_PROCESS.format(
        tests=str(Path(__file__).parent),
        first=first,
        second=second,
        adapter=str(tmp_path / "adapter"),
        out=str(tmp_path / "logits.pt"),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), logits(model))


def test_import_peft_cca_alone_imports_no_torch():
    code = "import sys, peft_cca; print('torch' in sys.modules, 'peft' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_adapter_loaded_onto_another_model_names_its_config(tmp_path):
    cca(tiny_model("llama")).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"adapter_config.json: this circuit was made for another model shape"):
        PeftModel.from_pretrained(tiny_model("gemma2"), tmp_path)
