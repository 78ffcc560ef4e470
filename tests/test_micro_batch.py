"""``--micro-batch``: any size gives the same full-batch gradient; ``auto`` halves on out-of-memory, follows the
CPU token budget, divides LoRA's effective batch, and is recorded."""

from __future__ import annotations

import json
import random

import pytest
import torch
from peft import get_peft_model
from tiny_models import VOCAB, tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca  # noqa: F401 - registers the "cca" method
from peft_cca import CCAConfig, Circuit, describe
from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.micro_batch import resolve_micro_batch
from peft_cca.amplify.records import PivotCollator
from peft_cca.amplify.settings import AmplifySettings
from peft_cca.amplify.trainer import amplify, train_one
from peft_cca.baselines.lora import example_lengths, lora_micro_batch, sft_dataset
from peft_cca.baselines.settings import LoraSettings
from peft_cca.defaults import CPU_TOKEN_BUDGET
from peft_cca.errors import UsageError
from peft_cca.runtime.micro_batch import auto_micro_batch, cpu_token_budget, fit_micro_batch
from peft_cca.sweep.callbacks import trainable_state
from peft_cca.sweep.runs import Readings
from peft_cca.tasks.problem import Problem

PAD = 2
RECORDS = 7


def records(n: int = RECORDS, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prefix_ids": [rng.randrange(4, VOCAB) for _ in range(rng.randrange(3, 12))],
            "desired_token_id": rng.randrange(4, VOCAB),
            "undesired_token_id": rng.randrange(4, VOCAB),
        }
        for _ in range(n)
    ]


def cca_model():
    model = tiny_model("llama")
    circuit = Circuit(describe(model).shape, {0: {"q": [1], "k": [0]}, 1: {"v": [1], "mlp": [2, 7]}})
    return get_peft_model(model, CCAConfig(circuit=circuit))


def gradient_after_one_step(micro_batch: int) -> dict[str, torch.Tensor]:
    """SGD with lr 1 from zero deltas: the deltas are minus the full-batch gradient."""
    model = cca_model()
    settings = AmplifySettings(steps=1, micro_batch=micro_batch)
    train_one(model, records(), 1.0, PAD, Readings(lambda _m: 0.0), settings, evaluate_at_start=False)
    return trainable_state(model)


def test_gradient_is_the_same_for_micro_batch_1_3_and_all():
    # the plain computation: one batch of every record, the dataset mean of the loss
    reference = cca_model()
    (-logit_difference(reference, PivotCollator(PAD)(records())).mean()).backward()
    plain = {n: -p.grad for n, p in reference.named_parameters() if p.requires_grad}
    for size in (1, 3, RECORDS):
        got = gradient_after_one_step(size)
        assert set(got) == set(plain)
        for name, value in plain.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=f"micro-batch {size}: {name}")


def test_fit_halves_on_out_of_memory_until_it_fits():
    tried = []

    def probe(size: int) -> None:
        tried.append(size)
        if size > 5:
            raise torch.OutOfMemoryError("fake")

    assert fit_micro_batch(32, probe) == 4
    assert tried == [32, 16, 8, 4]


def test_fit_gives_up_at_one():
    def probe(size: int) -> None:
        raise torch.OutOfMemoryError("fake")

    with pytest.raises(torch.OutOfMemoryError):
        fit_micro_batch(4, probe)


def test_auto_on_cpu_follows_the_token_budget_and_the_cap():
    model = tiny_model("llama")
    budget = cpu_token_budget(model)
    assert budget == CPU_TOKEN_BUDGET  # a tiny model: the cap, not the memory, decides

    def never(size: int) -> None:
        raise AssertionError("the CPU choice needs no probe")

    assert auto_micro_batch(model, [budget // 4, 10], never) == 2
    assert auto_micro_batch(model, [3, 5], never, cap=2) == 2
    assert auto_micro_batch(model, [budget * 2], never) == 1


def test_cpu_budget_follows_available_memory_and_model_size(monkeypatch):
    model = tiny_model("llama")  # 2 layers, hidden 48, intermediate 80, fp32: 2 * (288 + 320) * 4 bytes a token
    per_token = 2 * (6 * 48 + 4 * 80) * 4
    pages = {"SC_AVPHYS_PAGES": 4 * per_token * 1000, "SC_PAGE_SIZE": 1}
    monkeypatch.setattr("os.sysconf", pages.__getitem__)
    assert cpu_token_budget(model) == 1000
    assert cpu_token_budget(model.to(torch.bfloat16)) == 2000


def test_auto_is_resolved_and_recorded(tmp_path):
    model = cca_model()
    assert resolve_micro_batch("auto", model, records(), PAD) == RECORDS  # short rows: all fit the budget
    with pytest.raises(UsageError, match="micro-batch"):
        resolve_micro_batch(0, model, records(), PAD)
    settings = AmplifySettings(lrs=(0.1,), steps=1, micro_batch="auto")
    result = amplify(
        model, tiny_tokenizer(), records(), None, None, settings, evaluate_fn=lambda _m: 0.0, output_dir=tmp_path
    )
    assert result.best.micro_batch == RECORDS
    assert json.loads((tmp_path / "amplify.json").read_text())["micro_batch"] == RECORDS


def test_lora_auto_divides_the_effective_batch():
    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    problems = [Problem(id=f"p{i}", group_id="g", question=f"What is {i} + 2?", answer=str(i + 2)) for i in range(4)]
    dataset = sft_dataset(problems, tokenizer)
    lengths = example_lengths(dataset, tokenizer)
    for effective, expected in ((12, 12), (10, 10), (7, 7)):
        settings = LoraSettings(per_device_batch="auto", effective_batch=effective)
        assert lora_micro_batch(model, tokenizer, dataset, lengths, settings) == expected
    settings = LoraSettings(per_device_batch="auto", effective_batch=12)
    assert lora_micro_batch(model, tokenizer, dataset, [CPU_TOKEN_BUDGET // 5] * 4, settings) == 4  # 5 fit, 4 divides
    assert lora_micro_batch(model, tokenizer, dataset, lengths, LoraSettings(per_device_batch=3)) == 3


def test_auto_on_cuda_sizes_from_free_memory_then_halves(monkeypatch):
    """The CUDA arithmetic with the memory figures faked: probes say a row costs 300 bytes beyond 1,000 fixed."""
    from types import SimpleNamespace

    import peft_cca.runtime.micro_batch as trainer

    weight = SimpleNamespace(device=torch.device("cuda"), requires_grad=True, numel=lambda: 100, element_size=lambda: 4)
    model = SimpleNamespace(parameters=lambda: iter([weight]))
    monkeypatch.setattr(trainer, "_cuda_peak", lambda _device, _probe, size: 1000 + 300 * size)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device: (10_000, 80_000))
    tried = []

    def probe(size: int) -> None:
        tried.append(size)
        if size > 10:
            raise torch.OutOfMemoryError("fake")

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    # (0.9 * 10,000 - (1,300 - 300) - 2 * 400) / 300 = 24 rows fit by the figures; 24 fails, 12 fails, 6 runs
    assert auto_micro_batch(model, [50] * 100, probe) == 6
    assert tried == [24, 12, 6]
    assert auto_micro_batch(model, [50] * 5, probe) == 5  # never more than the rows
