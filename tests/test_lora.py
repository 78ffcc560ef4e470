"""The LoRA SFT baseline on a tiny random model: the prompt is masked from the loss and a run trains and saves."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.lora_baseline import LoraSettings, _sft_config, lora_config, lora_sft, sft_dataset
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
        args=_sft_config(str(tmp_path), 1e-3, LoraSettings(per_device_batch=2), 0),
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
        model, tokenizer, PROBLEMS, lrs=(1e-2, 1e-3), settings=settings, evaluate_fn=scripted, output_dir=tmp_path
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
