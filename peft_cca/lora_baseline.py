"""The paper's LoRA baseline: supervised fine-tuning on the training split's gold solutions with TRL.

Prompt tokens are masked out of the loss: the dataset is in TRL's prompt/completion form, for which
SFTTrainer sets ``completion_only_loss``. The prompt is stage 1's prompt text (chat template or few-shot),
so LoRA learns to answer exactly the prompts it is evaluated on. LoRA r=16, alpha=32, dropout 0.1 on the
attention and MLP projections, AdamW, cosine schedule warming up over the first 10% of steps, weight decay
0.01, max grad norm 1.0, 2 epochs, effective batch 32; validation exact match every N steps picks the best
checkpoint, as for CCA.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PrinterCallback

from peft_cca.arch import describe
from peft_cca.defaults import DEFAULT_LORA_LRS, LoraSettings
from peft_cca.runtime import trainer_use_cpu
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, build_prompt
from peft_cca.trainer import (
    AmplifyResult,
    BestStepCallback,
    EvaluateFn,
    RunResult,
    add_run,
    load_trainable_state,
    save_result,
)

logger = logging.getLogger(__name__)


def gold_completion(problem: Problem) -> str:
    """The target text: the gold solution when the source has one, closed by the sentence the scorer reads."""
    solution = str(problem.metadata.get("solution", "")).strip()
    closing = f"The answer is {problem.answer}."
    return f"{solution}\n{closing}" if solution else closing


def sft_dataset(problems: Sequence[Problem], tokenizer, prompt_style: str = DEFAULT_PROMPT_STYLE) -> Dataset:
    """Prompt/completion rows: TRL masks the prompt out of the loss for this form."""
    return Dataset.from_list(
        [{"prompt": build_prompt(tokenizer, p, prompt_style), "completion": gold_completion(p)} for p in problems]
    )


def lora_target_modules(model: nn.Module) -> list[str]:
    """Leaf names of the q/k/v/o and gate/up/down projections for this architecture (fused ones once)."""
    layout = describe(model).layout
    paths = [layout.q, layout.k, layout.v, layout.o, layout.gate, layout.up, layout.down]
    return sorted({path.split(".")[-1] for path in paths if path})


def lora_config(model: nn.Module, settings: LoraSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_target_modules(model),
        task_type="CAUSAL_LM",
    )


def _sft_config(output_dir: str, lr: float, settings: LoraSettings, seed: int, use_cpu: bool | None = None):
    from trl import SFTConfig

    use_cpu = not torch.cuda.is_available() if use_cpu is None else use_cpu

    config = SFTConfig(
        output_dir=output_dir,
        learning_rate=lr,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_batch,
        optim="adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_fraction,  # transformers reads a value < 1 as a fraction
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        max_length=settings.max_length,
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=use_cpu,  # where the runtime placed the model: MPS stays on MPS
    )
    # world_size is known once the config has set up the (CPU or GPU) process group
    per_round = settings.per_device_batch * config.world_size
    config.gradient_accumulation_steps = max(1, settings.effective_batch // per_round)
    return config


def train_lora_once(
    peft_model: PeftModel,
    tokenizer,
    dataset: Dataset,
    evaluate_fn: EvaluateFn,
    lr: float,
    settings: LoraSettings,
    seed: int = 0,
    evaluate_at_start: bool = True,
) -> RunResult:
    """One SFT run at ``lr``; the best validation step's LoRA weights are left loaded."""
    from trl import SFTTrainer

    callback = BestStepCallback(evaluate_fn, (), evaluate_at_start=evaluate_at_start, every=settings.eval_every)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = SFTTrainer(
            model=peft_model,
            args=_sft_config(scratch, lr, settings, seed, trainer_use_cpu(peft_model)),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return RunResult.from_training(lr, trainer, callback, evaluate_at_start)


def lora_sft(
    model: nn.Module,
    tokenizer,
    train_problems: Sequence[Problem],
    val_problems: Sequence[Problem] | None = None,
    *,
    lrs: Sequence[float] = DEFAULT_LORA_LRS,
    settings: LoraSettings | None = None,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    max_new_tokens: int = 256,
    eval_batch_size: int = 16,
    evaluate_fn: EvaluateFn | None = None,
    output_dir: str | Path | None = None,
    seed: int = 0,
) -> AmplifyResult:
    """Learning-rate sweep of the LoRA baseline; the best run (validation macro exact match) is loaded and saved.

    ``model`` is a bare transformers model; it is wrapped per run and unwrapped between runs.
    """
    settings = settings or LoraSettings()
    if evaluate_fn is None:
        from peft_cca.evaluate import validation_scorer

        evaluate_fn = validation_scorer(
            tokenizer,
            val_problems or [],
            prompt_style=prompt_style,
            batch_size=eval_batch_size,
            max_new_tokens=max_new_tokens,
            what="lora_sft",
        )

    dataset = sft_dataset(train_problems, tokenizer, prompt_style)
    runs: list[RunResult] = []
    base_score: float | None = None
    for lr in lrs:
        torch.manual_seed(seed)  # the same LoRA initialisation for every lr
        peft_model = get_peft_model(model, lora_config(model, settings))
        run = train_lora_once(
            peft_model, tokenizer, dataset, evaluate_fn, lr, settings, seed, evaluate_at_start=base_score is None
        )
        base_score = add_run(runs, run, base_score)
        logger.info("LoRA lr %g: best validation %.4f at step %d", lr, run.best_score, run.best_step)
        model = peft_model.unload()  # the base model without LoRA layers, weights untouched
    best = max(runs, key=lambda r: r.best_score)
    peft_model = get_peft_model(model, lora_config(model, settings))
    load_trainable_state(peft_model, best.state)
    result = AmplifyResult(model=peft_model, best=best, runs=runs)
    # train_problems: what LoRA trained on, for Table 1 (CCA trains on pivots, LoRA on problems)
    save_result(
        result, output_dir, "lora.json", method="lora", settings=settings.__dict__, train_problems=len(train_problems)
    )
    return result
