"""The LoRA SFT baseline on a tiny random model: the prompt is masked from the loss and a run trains and saves."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from peft import PeftModel
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.baselines.lora import (
    _sft_config,
    example_lengths,
    lora_config,
    lora_sft,
    sequence_limit,
    sft_dataset,
    target_kind,
)
from peft_cca.baselines.settings import LoraSettings
from peft_cca.tasks.problem import Problem

PROBLEMS = [
    Problem(id=f"p{i}", group_id=f"g{i % 2}", question=f"What is {i} + 2?", answer=str(i + 2)) for i in range(6)
]


def test_prompt_tokens_are_masked_from_the_loss(tmp_path):
    from trl import SFTTrainer

    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    dataset = sft_dataset(PROBLEMS[:2], tokenizer)
    assert dataset[0]["completion"] == "The answer is 2."
    peft_model = __import__("peft").get_peft_model(model, lora_config(model, LoraSettings()))
    trainer = SFTTrainer(
        model=peft_model,
        args=_sft_config(str(tmp_path), 1e-3, LoraSettings(per_device_batch=2)),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    for row in range(2):
        labels = batch["labels"][row]
        trained = labels[labels != -100].tolist()
        # exactly the completion and the EOS TRL appends: no prompt token is a target
        assert tokenizer.decode(trained) == dataset[row]["completion"] + tokenizer.eos_token


def test_lora_recipe_runs_steps_and_keeps_the_best(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    scores = iter([0.0, 0.1, 0.5, 0.2, 0.3])  # lr 1: steps 0, 1, 2; lr 2: steps 1, 2 (the base is evaluated once)
    snapshots = []

    def scripted(m) -> float:
        snapshots.append({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        return next(scores)

    settings = LoraSettings(per_device_batch=2, effective_batch=4, max_steps=2, eval_every=1)
    result = lora_sft(
        model, tokenizer, PROBLEMS, None, replace(settings, lrs=(1e-2, 1e-3)), evaluate_fn=scripted, output_dir=tmp_path
    )
    assert [[h["step"] for h in r.history] for r in result.runs] == [[0, 1, 2], [0, 1, 2]]
    assert (result.best.lr, result.best.best_step) == (1e-2, 2)
    best = snapshots[2]
    assert any(not torch.equal(v, snapshots[0][n]) for n, v in best.items())  # training moved LoRA
    saved = json.loads((tmp_path / "lora.json").read_text())
    assert saved["best"]["best_step"] == 2
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    params = dict(reloaded.named_parameters())
    for name, value in best.items():
        torch.testing.assert_close(params[name], value)


GSM = Problem(
    id="t0-0",
    group_id="t0",
    question="Ann has 3 boxes of 4 pens. How many pens does she have?",
    answer="12",
    solution="Each box holds 4 pens.\nSo 3 boxes hold 3 * 4 = <<3*4=12>>12 pens.",
)


def test_sft_examples_of_a_gsm_problem_contain_its_worked_solution():
    tokenizer = tiny_tokenizer()
    fewshot = sft_dataset([GSM], tokenizer, "fewshot")[0]["completion"]
    assert fewshot == "Each box holds 4 pens. So 3 boxes hold 3 * 4 = 12 pens. The answer is 12."
    authors = sft_dataset([GSM], tokenizer, "authors")[0]
    assert authors["completion"] == "Each box holds 4 pens. So 3 boxes hold 3 * 4 = 12 pens. The final answer is 12."
    assert authors["prompt"].endswith("A: Let's think step by step.")
    assert target_kind([GSM]) == "worked solution + answer sentence"
    assert target_kind(PROBLEMS).startswith("answer sentence only")
    assert "1 of 2" in target_kind([GSM, PROBLEMS[0]])


def test_nothing_is_cut_unless_asked_and_a_cut_is_announced(caplog):
    tokenizer = tiny_tokenizer()
    dataset = sft_dataset([GSM, *PROBLEMS[:2]], tokenizer, "fewshot")
    lengths = example_lengths(dataset, tokenizer)
    assert lengths[0] == len(tokenizer(dataset[0]["prompt"] + dataset[0]["completion"])["input_ids"]) + 1
    assert sequence_limit(lengths, None) is None
    assert not caplog.records
    assert sequence_limit(lengths, min(lengths)) == min(lengths)
    longer = sum(1 for n in lengths if n > min(lengths))
    assert longer and f"cuts {longer} of 3" in caplog.text


def test_lora_records_its_target_and_length(tmp_path):
    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    settings = LoraSettings(lrs=(1e-3,), per_device_batch=2, effective_batch=2, max_steps=1, eval_every=1)
    lora_sft(model, tokenizer, [GSM, *PROBLEMS[:1]], None, settings, evaluate_fn=lambda _m: 0.0, output_dir=tmp_path)
    saved = json.loads((tmp_path / "lora.json").read_text())
    assert saved["target"].startswith("worked solution + answer sentence for 1 of 2")
    assert saved["max_length"] is None and saved["longest_example_tokens"] > 0 and saved["micro_batch"] == 2
