"""Five defects that peft's generic test matrix found in the "cca" method, each pinned by its reproduction.

1. ``adapter_names`` of another length than the batch was accepted (rows past the list got the base model);
2. ``mlp_targets=["gate"]`` on a model without a gate projection dropped every MLP neuron of the circuit;
3. ``autocast_adapter_dtype=False`` (TRL's SFTTrainer under DeepSpeed ZeRO-3) was ignored;
4. a saved adapter did not say that loading it needs ``import peft_cca`` (else a bare ``KeyError: 'CCA'``);
5. ``add_weighted_adapter`` did not exist.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import tiny_model, tokens
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from peft_cca import CCAConfig, CCALayer, Circuit, describe
from peft_cca.errors import UsageError


def circuit_a(model) -> Circuit:
    return Circuit(describe(model).shape, {0: {"q": [1], "k": [0], "mlp": [3, 17]}, 1: {"v": [0], "mlp": [0]}})


def circuit_b(model) -> Circuit:
    """Shares query head 1 of layer 0 with circuit_a, so a combination adds two deltas on the same rows."""
    return Circuit(describe(model).shape, {0: {"q": [1, 2]}, 1: {"mlp": [5, 6]}})


def cca(model, circuit=circuit_a, **kwargs) -> PeftModel:
    return get_peft_model(model, CCAConfig(circuit=circuit(model), init_weights=False, **kwargs)).eval()


def logits(model, ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens() if ids is None else ids, **kwargs).logits


# -- 1. adapter_names must have one name per input, as in LoRA -------------------------------------------------


def lora_error(batch: int, names: list[str]) -> str:
    """The message peft's LoRA raises for the same call."""
    lora = get_peft_model(tiny_model("llama"), LoraConfig(target_modules=["q_proj"])).eval()
    with pytest.raises(ValueError) as raised:
        logits(lora, tokens(batch=batch), adapter_names=names)
    return str(raised.value)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(("batch", "names"), [(2, ["default"]), (2, ["default", "default", "__base__"])])
def test_adapter_names_of_another_length_raise_loras_error(arch, batch, names):
    model = cca(tiny_model(arch))
    expected = lora_error(batch, names)
    assert expected == (
        "Length of `adapter_names` should be the same as the number of inputs, but got "
        f"{len(names)} and {batch} respectively."
    )
    with pytest.raises(ValueError) as raised:
        logits(model, tokens(batch=batch), adapter_names=names)
    assert str(raised.value) == expected


def sample(model, ids: torch.Tensor, **kwargs):
    torch.manual_seed(7)
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            do_sample=True,
            num_return_sequences=2,
            max_new_tokens=4,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
            **kwargs,
        )


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampled_copies_all_get_the_adapter(arch):
    """The report: generate(ids, adapter_names=["default"] * 2, do_sample=True, num_return_sequences=2)."""
    model = cca(tiny_model(arch))
    ids = tokens(batch=1)
    adapter = sample(model, ids)
    mixed = sample(model, ids, adapter_names=["default"] * 2)
    with model.disable_adapter():
        base = sample(model, ids)
    assert torch.equal(mixed.sequences, adapter.sequences)
    for step_mixed, step_adapter in zip(mixed.logits, adapter.logits, strict=True):
        torch.testing.assert_close(step_mixed, step_adapter, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixed.logits[0], base.logits[0])
    # as in LoRA, num_return_sequences is not expanded: one name per returned sequence
    with pytest.raises(ValueError, match="got 1 and 2 respectively"):
        sample(model, ids, adapter_names=["default"])
    with pytest.raises(ValueError, match="got 2 and 4 respectively"):
        sample(model, tokens(batch=2), adapter_names=["default"] * 2)


def test_beam_search_repeats_each_name_for_the_beams_of_its_prompt():
    model = cca(tiny_model("llama"))
    ids = tokens(batch=2)
    kwargs = dict(num_beams=2, num_return_sequences=2, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        mixed = model.generate(input_ids=ids, adapter_names=["default", "__base__"], **kwargs)
        adapter = model.generate(input_ids=ids, **kwargs)
        with model.disable_adapter():
            base = model.generate(input_ids=ids, **kwargs)
    assert torch.equal(mixed[:2], adapter[:2]) and torch.equal(mixed[2:], base[2:])


# -- 2. mlp_targets the architecture does not have ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
@pytest.mark.parametrize("kinds", [{"mlp": [3, 17]}, {"q": [1]}])
def test_gate_target_without_a_gate_projection_is_refused(arch, kinds):
    """Reported: an MLP-only circuit then failed with "the circuit selects no component"; now it is refused at once,
    whatever the circuit selects."""
    base = tiny_model(arch)
    config = CCAConfig(circuit=Circuit(describe(base).shape, {0: kinds}), mlp_targets=["gate"])
    message = (
        rf"mlp_targets=\['gate'\]: a '{arch}' model has no gate projection in its MLP, so every MLP neuron of the "
        r"circuit would be dropped; the MLP targets it has are \['up', 'down'\]"
    )
    with pytest.raises(UsageError, match=message):
        get_peft_model(base, config)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_a_partly_missing_target_warns_and_trains_the_rest(arch):
    circuit = Circuit(describe(tiny_model(arch)).shape, {0: {"mlp": [3, 17]}})
    only_up = get_peft_model(tiny_model(arch), CCAConfig(circuit=circuit, mlp_targets=["up"]))
    with pytest.warns(UserWarning, match=rf"a '{arch}' model has no gate projection in its MLP; it is skipped"):
        with_gate = get_peft_model(tiny_model(arch), CCAConfig(circuit=circuit, mlp_targets=["up", "gate"]))
    assert with_gate.get_nb_trainable_parameters() == only_up.get_nb_trainable_parameters()


def test_gate_target_on_llama_trains_the_gate_rows():
    base = tiny_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = get_peft_model(base, CCAConfig(circuit=circuit_a(base), mlp_targets=["gate"]))
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, CCALayer)}
    assert "gate_proj" in adapted and "up_proj" not in adapted


# -- 3. autocast_adapter_dtype=False ------------------------------------------------------------------------------


def delta_dtypes(model, adapter: str = "default") -> set[torch.dtype]:
    return {p.dtype for n, p in model.named_parameters() if "cca_delta" in n and n.endswith(f".{adapter}")}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_adapter_dtype_false_stores_deltas_in_the_base_dtype(dtype):
    base = tiny_model("llama", dtype=dtype)
    with pytest.warns(UserWarning, match=rf"stored in {dtype}, the base weights' dtype.*rounds away"):
        model = get_peft_model(base, CCAConfig(circuit=circuit_a(base)), autocast_adapter_dtype=False)
    assert delta_dtypes(model) == {dtype}
    assert all(p.requires_grad for n, p in model.named_parameters() if "cca_delta" in n)
    with pytest.warns(UserWarning, match="rounds away"):
        model.add_adapter("other", CCAConfig(circuit=circuit_b(base)), autocast_adapter_dtype=False)
    assert delta_dtypes(model, "other") == {dtype}
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith(".other"))  # still inactive
    model.train()
    model(tokens()).logits.float().square().mean().backward()
    assert all(p.grad.dtype == dtype for n, p in model.named_parameters() if n.endswith("cca_delta.default"))


def test_autocast_default_keeps_fp32_and_an_fp32_base_does_not_warn():
    bf16 = tiny_model("llama", dtype=torch.bfloat16)
    assert delta_dtypes(get_peft_model(bf16, CCAConfig(circuit=circuit_a(bf16)))) == {torch.float32}
    fp32 = tiny_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = get_peft_model(fp32, CCAConfig(circuit=circuit_a(fp32)), autocast_adapter_dtype=False)
    assert delta_dtypes(model) == {torch.float32}


def test_loading_with_autocast_false_gives_base_dtype_deltas(tmp_path):
    cca(tiny_model("llama")).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="rounds away"):
        loaded = PeftModel.from_pretrained(
            tiny_model("llama", dtype=torch.bfloat16), tmp_path, autocast_adapter_dtype=False
        )
    assert delta_dtypes(loaded) == {torch.bfloat16}
    assert delta_dtypes(PeftModel.from_pretrained(tiny_model("llama", dtype=torch.bfloat16), tmp_path)) == {
        torch.float32
    }


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_bf16_deltas_saved_with_autocast_false_load_as_frozen_fp32(tmp_path, low_cpu_mem_usage):
    """peft's own upcast re-creates a ParameterDict entry as trainable: an inference-loaded adapter would train."""
    base = tiny_model("llama", dtype=torch.bfloat16)
    config = CCAConfig(circuit=circuit_a(base), init_weights=False)
    with pytest.warns(UserWarning, match="rounds away"):
        model = get_peft_model(base, config, autocast_adapter_dtype=False)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(
        tiny_model("llama", dtype=torch.bfloat16), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage
    )
    assert delta_dtypes(loaded) == {torch.float32}
    assert loaded.get_nb_trainable_parameters()[0] == 0
    for name, param in loaded.named_parameters():
        if "cca_delta" in name:
            assert torch.equal(param, model.get_parameter(name).float()), name


# -- 4. the saved folder says what loading it needs ---------------------------------------------------------------


def named(model, name: str = "tiny/llama"):
    """peft takes base_model for the card from these two (a model built from a config has neither)."""
    model.name_or_path = model.config._name_or_path = name
    return model


def test_saved_adapter_has_a_model_card_with_peft_fields_and_the_import(tmp_path):
    model = cca(named(tiny_model("llama")))
    model.add_adapter("other", CCAConfig(circuit=circuit_b(model.get_base_model())))
    model.save_pretrained(tmp_path)
    for folder in (tmp_path, tmp_path / "other"):  # a named adapter's subfolder gets its own card
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == "peft" and card.data.base_model == "tiny/llama"
        assert {"peft-cca", "cca", "base_model:adapter:tiny/llama"} <= set(card.data.tags)
        assert card.data.pipeline_tag == "text-generation"
        assert "pip install peft-cca" in card.text
        assert 'import peft_cca  # registers the "cca" method' in card.text
        assert "work without the import too" in card.text
        assert 'AutoModelForCausalLM.from_pretrained("tiny/llama")' in card.text
    model.save_pretrained(tmp_path)  # saving again updates the card instead of adding a second section
    assert (tmp_path / "README.md").read_text().count("## Loading this CCA adapter") == 1


def test_sequence_classification_card_names_its_pipeline_and_class(tmp_path):
    torch.manual_seed(0)
    config = tiny_model("llama").config
    config.num_labels, config.pad_token_id = 3, 0
    base = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    get_peft_model(base, CCAConfig(circuit=circuit_a(base), task_type="SEQ_CLS")).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    assert "AutoModelForSequenceClassification.from_pretrained" in card.text
    assert "base_model" not in card.data.to_dict()  # unknown: no empty field


LOAD_WITHOUT_PEFT_CCA = """
import sys
sys.path.insert(0, {tests!r})
import torch
assert "peft_cca" not in sys.modules  # nothing imported it: the start-up hook waits for peft
from peft import AutoPeftModelForCausalLM, PeftModel
from tiny_models import tiny_model
model = PeftModel.from_pretrained(tiny_model("llama"), {adapter!r})
auto = AutoPeftModelForCausalLM.from_pretrained({adapter!r})
assert type(auto).__name__ == "PeftModelForCausalLM", type(auto)
ids = torch.tensor([[5, 6, 7]])
torch.testing.assert_close(auto(ids).logits, model(ids).logits)
print("loaded", type(model.peft_config["default"]).__name__)
"""


def test_peft_loads_a_cca_adapter_with_no_import_of_peft_cca(tmp_path):
    """The start-up hook (peft_cca_autoload.pth, installed with the package) registers "cca" when peft loads, for
    PeftModel and AutoPeftModelForCausalLM alike; the adapter names a base that loads from its folder."""
    tiny_model("llama").save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    peft_model = cca(base)
    assert peft_model.peft_config["default"].task_type == "CAUSAL_LM"
    peft_model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM" and saved["base_model_name_or_path"] == str(tmp_path / "base")
    code = LOAD_WITHOUT_PEFT_CCA.format(tests=str(Path(__file__).parent), adapter=str(tmp_path / "adapter"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "loaded CCAConfig"


def test_the_start_up_hook_imports_nothing_until_peft_does():
    code = "import sys; print(sorted(m for m in sys.modules if m.startswith(('peft', 'torch', 'typing'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "['peft_cca_autoload']"


def test_a_built_wheel_carries_the_start_up_hook(tmp_path):
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, root]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("peft_cca-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "peft_cca_autoload.pth" in names and "peft_cca_autoload.py" in names
    line = zipfile.ZipFile(wheel).read("peft_cca_autoload.pth").decode().strip()
    assert line == "import peft_cca_autoload; peft_cca_autoload.install()"


# -- 5. add_weighted_adapter ----------------------------------------------------------------------------------------


def by_hand(peft_model, arch: str, weights: dict[str, float]) -> torch.Tensor:
    """Logits of a fresh base whose weights get ``sum_i w_i * delta_i`` added, delta_i dense from each adapter."""
    reference = tiny_model(arch)
    state = reference.state_dict()
    for name, module in peft_model.get_base_model().named_modules():
        if isinstance(module, CCALayer):
            for adapter, weight in weights.items():
                if adapter in module.cca_delta:
                    state[f"{name}.weight"] += weight * module.get_delta_weight(adapter)
    reference.load_state_dict(state)
    return logits(reference)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
@pytest.mark.parametrize("combination_type", ["linear", "cat"])
def test_weighted_adapter_equals_the_weighted_deltas_applied_by_hand(arch, combination_type):
    model = cca(tiny_model(arch))
    other = CCAConfig(circuit=circuit_b(model.get_base_model()), init_weights=False, mlp_targets=["down"])
    model.add_adapter("b", other)
    weights = {"default": 0.7, "b": -1.3}
    model.add_weighted_adapter(list(weights), list(weights.values()), "mix", combination_type=combination_type)
    assert model.active_adapters == ["default"]  # as in LoRA: added, not activated, and frozen
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith(".mix"))
    config = model.peft_config["mix"]
    assert config.get_circuit() == circuit_a(model.get_base_model()) | circuit_b(model.get_base_model())
    assert config.mlp_targets == ["up", "down"]
    model.set_adapter("mix")
    torch.testing.assert_close(logits(model), by_hand(model, arch, weights), rtol=1e-5, atol=1e-5)


def test_weighted_adapter_saves_and_loads(tmp_path):
    model = cca(tiny_model("llama"))
    model.add_adapter("b", CCAConfig(circuit=circuit_b(model.get_base_model()), init_weights=False))
    model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "mix")
    model.set_adapter("mix")
    expected = logits(model)
    model.save_pretrained(tmp_path, selected_adapters=["mix"])
    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "mix")
    assert torch.equal(logits(loaded), expected)


@pytest.mark.parametrize("combination_type", ["svd", "ties", "dare_linear", "magnitude_prune_svd"])
def test_lora_only_combination_types_are_refused_naming_linear(combination_type):
    model = cca(tiny_model("llama"))
    model.add_adapter("b", CCAConfig(circuit=circuit_b(model.get_base_model())))
    with pytest.raises(UsageError, match=rf"combination_type='{combination_type}' does not apply to CCA.*'linear'"):
        model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "mix", combination_type=combination_type)
    assert "mix" not in model.peft_config


@pytest.mark.parametrize(
    ("adapters", "weights", "name", "message"),
    [
        (["default", "nope"], [1.0, 1.0], "mix", "Adapter nope does not exist"),
        (["default"], [1.0, 2.0], "mix", "got 2 weights for 1 adapters"),
        (["default"], [1.0], "default", "adapter 'default' already exists"),
        ([], [], "mix", "needs at least one adapter"),
    ],
)
def test_bad_weighted_adapter_calls_are_clear_errors(adapters, weights, name, message):
    model = cca(tiny_model("llama"))
    with pytest.raises(UsageError, match=message):
        model.add_weighted_adapter(adapters, weights, name)


def test_adapters_with_modules_to_save_are_not_combined():
    model = cca(tiny_model("llama"), modules_to_save=["lm_head"])
    with pytest.raises(UsageError, match=r"modules_to_save: \{'default': \['lm_head'\]\}"):
        model.add_weighted_adapter(["default"], [2.0], "double")
