"""CCATrainer in TRL's shape on tiny random models: rows as text or ids, full-batch steps, Trainer habits, evaluate."""

from __future__ import annotations

import random

import pytest
import torch
from peft import get_peft_model
from tiny_models import VOCAB, tiny_model
from tiny_tokenizer import tiny_tokenizer
from transformers import TrainingArguments

import peft_cca
from peft_cca import CCAConfig, CCATrainer, CCATrainingArguments, Circuit, describe
from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.records import PivotCollator
from peft_cca.errors import UsageError
from peft_cca.sweep.callbacks import trainable_state

PAD = 2
N = 7


def id_rows(n: int = N, seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prefix_ids": [rng.randrange(4, VOCAB) for _ in range(rng.randrange(3, 10))],
            "desired_token_id": rng.randrange(4, VOCAB),
            "undesired_token_id": rng.randrange(4, VOCAB),
        }
        for _ in range(n)
    ]


def text_rows() -> list[dict]:
    return [
        {"prompt": "2 + 3 = ", "desired": "5", "undesired": "6"},
        {"prompt": "4 + 4 = ", "desired": "8", "undesired": "7"},
        {"prompt": "1 + 1 = ", "desired": "2", "undesired": "3"},
    ]


def circuit_of(model) -> Circuit:
    return Circuit(describe(model).shape, {0: {"q": [1], "k": [0]}, 1: {"v": [1], "mlp": [2, 7]}})


def config(tmp_path, **overrides) -> CCATrainingArguments:
    values = {"output_dir": str(tmp_path / "out"), "learning_rate": 1.0, "max_steps": 1, "report_to": "none"}
    values.update(overrides)
    return CCATrainingArguments(**values, disable_tqdm=True)


def plain_gradient(rows) -> dict[str, torch.Tensor]:
    """The plain computation: one batch of every row, the dataset mean of the loss, minus its gradient."""
    model = tiny_model("llama")
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit_of(model)))
    (-logit_difference(peft_model, PivotCollator(PAD)(rows)).mean()).backward()
    return {n: -p.grad for n, p in peft_model.named_parameters() if p.requires_grad}


def one_step(tmp_path, rows, **overrides) -> dict[str, torch.Tensor]:
    """SGD at lr 1 from zero deltas: after one step the deltas are minus the step's gradient."""
    model = tiny_model("llama")
    trainer = CCATrainer(
        model,
        args=config(tmp_path, **overrides),
        train_dataset=rows,
        peft_config=CCAConfig(circuit=circuit_of(model)),
        pad_token_id=PAD,
    )
    trainer.train()
    return trainable_state(trainer.model)


@pytest.mark.parametrize("micro_batch", [1, 2, 3, N, 64])
def test_full_batch_step_is_the_mean_gradient_over_every_row(tmp_path, micro_batch):
    expected = plain_gradient(id_rows())
    got = one_step(tmp_path, id_rows(), per_device_train_batch_size=micro_batch)
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=f"micro-batch {micro_batch}: {name}")


def test_mini_batch_step_with_accumulation_is_the_mean_over_its_rows(tmp_path):
    rows = id_rows(6)
    expected = plain_gradient(rows)  # 3 micro-batches of 2 accumulated, in order: the mean of all 6
    got = one_step(
        tmp_path,
        rows,
        full_batch=False,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
        train_sampling_strategy="sequential",
    )
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


def test_mini_batch_without_accumulation_steps_on_one_batch(tmp_path):
    rows = id_rows(6)
    expected = plain_gradient(rows[:2])
    got = one_step(
        tmp_path, rows, full_batch=False, per_device_train_batch_size=2, train_sampling_strategy="sequential"
    )
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


def test_a_big_micro_batch_never_pads_past_the_rows(tmp_path):
    model = tiny_model("llama")
    trainer = CCATrainer(
        model,
        args=config(tmp_path, per_device_train_batch_size=64),
        train_dataset=id_rows(3),
        peft_config=CCAConfig(circuit=circuit_of(model)),
        pad_token_id=PAD,
    )
    assert len(trainer.train_dataset) == 3
    assert trainer.args.per_device_train_batch_size == 3
    assert trainer.args.gradient_accumulation_steps == 1


def test_accumulation_is_computed_on_a_copy_of_the_arguments(tmp_path):
    args = config(tmp_path, per_device_train_batch_size=2)
    model = tiny_model("llama")
    trainer = CCATrainer(
        model, args=args, train_dataset=id_rows(), peft_config=CCAConfig(circuit=circuit_of(model)), pad_token_id=PAD
    )
    assert trainer.args.gradient_accumulation_steps == 4  # 7 rows in micro-batches of 2
    assert len(trainer.train_dataset) == 8  # one zero-weight copy
    assert args.gradient_accumulation_steps == 1  # the caller's object is untouched


def test_text_rows_are_tokenized_with_the_processing_class(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    trainer = CCATrainer(
        model,
        args=config(tmp_path),
        train_dataset=text_rows(),
        processing_class=tokenizer,
        peft_config=CCAConfig(circuit=circuit_of(model)),
    )
    first = trainer.train_dataset[0]
    assert first["prefix_ids"] == tokenizer("2 + 3 = ")["input_ids"]
    assert first["desired_token_id"] == tokenizer.convert_tokens_to_ids("5")
    assert first["undesired_token_id"] == tokenizer.convert_tokens_to_ids("6")
    trainer.train()


def test_a_continuation_of_two_tokens_is_refused_naming_the_row_and_its_tokens(tmp_path):
    rows = [*text_rows(), {"prompt": "6 + 6 = ", "desired": "12", "undesired": "13"}]
    model = tiny_model("llama")
    with pytest.raises(UsageError, match=r"train_dataset row 3: '12' after the prompt is tokens \['1', '2'\], not one"):
        CCATrainer(
            model,
            args=config(tmp_path),
            train_dataset=rows,
            processing_class=tiny_tokenizer(),
            peft_config=CCAConfig(circuit=circuit_of(model)),
        )


def test_trainer_habits_are_one_clear_line(tmp_path):
    model = tiny_model("llama")
    peft_config = CCAConfig(circuit=circuit_of(model))
    with pytest.raises(UsageError, match="CCATrainer needs train_dataset="):
        CCATrainer(model, args=config(tmp_path), peft_config=peft_config, pad_token_id=PAD)
    with pytest.raises(UsageError, match=r"^data_collator=: CCATrainer batches rows itself"):
        CCATrainer(model, args=config(tmp_path), train_dataset=id_rows(), data_collator=lambda f: f)
    with pytest.raises(UsageError, match="text rows: pass processing_class=tokenizer"):
        CCATrainer(model, args=config(tmp_path), train_dataset=text_rows(), peft_config=peft_config, pad_token_id=PAD)
    with pytest.raises(UsageError, match=r"row 0 has the columns \['question'\]"):
        CCATrainer(model, args=config(tmp_path), train_dataset=[{"question": "?"}], peft_config=peft_config)
    with pytest.raises(UsageError, match=r"^gradient_accumulation_steps=4: with full_batch=True"):
        CCATrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=4)
    with pytest.raises(UsageError, match=r"^label_smoothing_factor=0.1"):
        CCATrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1)
    with pytest.raises(UsageError, match=r"^remove_unused_columns=True would drop"):
        CCATrainingArguments(output_dir=str(tmp_path), remove_unused_columns=True)
    with pytest.raises(UsageError, match="model has no trainable parameter"):
        frozen = tiny_model("llama").requires_grad_(False)
        CCATrainer(frozen, args=config(tmp_path), train_dataset=id_rows(), pad_token_id=PAD)


def test_no_padding_id_anywhere_is_one_line(tmp_path):
    model = tiny_model("llama")
    model.config.pad_token_id = model.config.eos_token_id = None
    model.generation_config.pad_token_id = None
    with pytest.raises(UsageError, match="CCATrainer needs a padding token id"):
        CCATrainer(
            model,
            args=config(tmp_path),
            train_dataset=id_rows(),
            peft_config=CCAConfig(circuit=circuit_of(model)),
            pad_token_id=None,
        )


def test_arguments_carry_the_paper_defaults(tmp_path):
    args = CCATrainingArguments(output_dir=str(tmp_path))
    assert str(args.lr_scheduler_type.value) == "constant"
    assert str(args.optim.value) == "sgd"
    assert (args.warmup_steps, args.weight_decay, args.max_grad_norm) == (0, 0.0, 0.0)
    assert args.full_batch and args.gradient_accumulation_steps == 1
    assert args.validation_schedule(50) == [2, 4, 6, 8, 10, 20, 30, 40, 50]
    assert CCATrainingArguments(output_dir=str(tmp_path), validation_steps=[5, 1]).validation_schedule(3) == [1]


def test_plain_training_arguments_keep_their_values(tmp_path):
    plain = TrainingArguments(output_dir=str(tmp_path), learning_rate=0.25, max_steps=2, report_to="none")
    model = tiny_model("llama")
    trainer = CCATrainer(
        model, args=plain, train_dataset=id_rows(), peft_config=CCAConfig(circuit=circuit_of(model)), pad_token_id=PAD
    )
    assert isinstance(trainer.args, CCATrainingArguments)
    assert trainer.args.learning_rate == 0.25
    assert str(trainer.args.lr_scheduler_type.value) == "linear"  # what the user's TrainingArguments said


def test_evaluate_reports_the_logit_difference_and_the_share_won(tmp_path):
    model = tiny_model("llama")
    rows = id_rows(5, seed=9)
    trainer = CCATrainer(
        model,
        args=config(tmp_path, per_device_eval_batch_size=2),
        train_dataset=id_rows(),
        eval_dataset=rows,
        peft_config=CCAConfig(circuit=circuit_of(model)),
        pad_token_id=PAD,
    )
    metrics = trainer.evaluate()
    with torch.no_grad():
        diff = logit_difference(trainer.model, PivotCollator(PAD)(rows))
    assert metrics["eval_logit_difference"] == pytest.approx(diff.mean().item(), abs=1e-5)
    assert metrics["eval_loss"] == pytest.approx(-diff.mean().item(), abs=1e-5)
    assert metrics["eval_desired_wins"] == pytest.approx((diff > 0).float().mean().item())


def test_resume_from_a_checkpoint_reaches_the_uninterrupted_weights(tmp_path):
    def trainer_for(out, steps):
        model = tiny_model("llama")
        return CCATrainer(
            model,
            args=config(tmp_path, output_dir=str(out), max_steps=steps, learning_rate=0.3, save_steps=2),
            train_dataset=id_rows(),
            peft_config=CCAConfig(circuit=circuit_of(model)),
            pad_token_id=PAD,
        )

    straight = trainer_for(tmp_path / "straight", 4)
    straight.train()
    first = trainer_for(tmp_path / "cut", 2)
    first.train()
    assert (tmp_path / "cut" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed = trainer_for(tmp_path / "cut", 4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    for name, value in trainable_state(straight.model).items():
        torch.testing.assert_close(trainable_state(resumed.model)[name], value, rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    expected = plain_gradient(id_rows())
    got = one_step(tmp_path, id_rows(), gradient_checkpointing=True, per_device_train_batch_size=3)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


def test_bf16_trains_fp32_deltas(tmp_path):
    got = one_step(tmp_path, id_rows(), bf16=True, use_cpu=True)
    assert all(value.dtype == torch.float32 and value.abs().sum() > 0 for value in got.values())


def test_a_model_name_loads_through_peft_cca(monkeypatch, tmp_path):
    model = tiny_model("llama")
    calls = []

    def fake_load(name):
        calls.append(name)
        return model, tiny_tokenizer()

    monkeypatch.setattr("peft_cca.runtime.loading.load_model", fake_load)
    trainer = CCATrainer(
        "smollm2-135m-instruct",
        args=config(tmp_path),
        train_dataset=text_rows(),
        peft_config=CCAConfig(circuit=circuit_of(model)),
    )
    assert calls == ["smollm2-135m-instruct"]
    assert trainer.processing_class is not None


def test_public_names_load_lazily():
    assert peft_cca.CCATrainer is CCATrainer
    assert "CCATrainingArguments" in peft_cca.__all__
