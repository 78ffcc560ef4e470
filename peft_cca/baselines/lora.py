"""The paper's LoRA baseline: supervised fine-tuning on the training split's gold solutions with TRL.

Prompt tokens are masked out of the loss: the dataset is in TRL's prompt/completion form, for which
SFTTrainer sets ``completion_only_loss``. The prompt is stage 1's prompt text (chat template or few-shot),
so LoRA learns to answer exactly the prompts it is evaluated on. The target is the problem's worked solution
(GSM-Symbolic's reasoning, as the authors train it) closed by the prompt style's answer sentence; a generated
task without a solution gets the answer sentence alone, and the summary says which. Nothing is truncated
unless ``max_length`` asks for it (then with a warning). LoRA r=16, alpha=32, dropout 0.1 on the attention and
MLP projections, AdamW, cosine schedule warming up over the first 10% of steps, weight decay 0.01, max grad
norm 1.0, 2 epochs, effective batch 32; validation exact match every N steps picks the best checkpoint, as for
CCA.
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

from peft_cca.baselines.settings import LoraSettings
from peft_cca.errors import UsageError
from peft_cca.method.arch import describe
from peft_cca.runtime.micro_batch import auto_micro_batch
from peft_cca.runtime.placement import trainer_use_cpu
from peft_cca.sweep.callbacks import (
    PAPER_VALIDATION_STEPS,
    EvaluateFn,
    load_trainable_state,
)
from peft_cca.sweep.runs import (
    Readings,
    RunResult,
    SweepResult,
    best_run,
    check_schedule,
    forgetting_meter,
    meter_tokens,
    save_result,
    selection_info,
    selection_meter,
    sweep_lrs,
)
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import (
    DEFAULT_PROMPT_STYLE,
    PromptOptions,
    answer_target,
    build_prompt,
    resolve_prompt_style,
)

logger = logging.getLogger(__name__)


def gold_completion(problem: Problem, style: str = "fewshot") -> str:
    """The target text: the worked solution when the source has one, closed by the answer sentence of the
    resolved prompt ``style``; the same text a drawn k-shot exemplar shows as its answer."""
    return answer_target(problem, style)


def sft_dataset(
    problems: Sequence[Problem],
    tokenizer,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    options: PromptOptions | None = None,
) -> Dataset:
    """Prompt/completion rows: TRL masks the prompt out of the loss for this form. ``options`` are stage 1's
    template and exemplars, so LoRA learns the prompts it is validated and tested on."""
    style = resolve_prompt_style(tokenizer, prompt_style)
    return Dataset.from_list(
        [
            {"prompt": build_prompt(tokenizer, p, style, options=options), "completion": gold_completion(p, style)}
            for p in problems
        ]
    )


def target_kind(problems: Sequence[Problem]) -> str:
    """Which SFT target the run used, for its summary: worked solutions, answer sentences, or a mix."""
    with_solution = sum(1 for p in problems if (p.solution or "").strip())
    if not problems:
        return "none (no training problems)"
    if with_solution == len(problems):
        return "worked solution + answer sentence"
    if with_solution == 0:
        return "answer sentence only (the task has no worked solutions)"
    return f"worked solution + answer sentence for {with_solution} of {len(problems)}; answer sentence for the rest"


def example_lengths(dataset: Dataset, tokenizer) -> list[int]:
    """Tokens of each prompt + completion + EOS, counted as TRL tokenises them (prompt and completion apart)."""
    prompts = tokenizer(list(dataset["prompt"]))["input_ids"]
    completions = tokenizer(list(dataset["completion"]), add_special_tokens=False)["input_ids"]
    return [len(p) + len(c) + 1 for p, c in zip(prompts, completions, strict=True)]


def sequence_limit(lengths: Sequence[int], max_length: int | None) -> int | None:
    """TRL's ``max_length``: None (no cut) unless asked; a cut is announced with how many examples it shortens."""
    if max_length is None:
        return None
    cut = sum(1 for n in lengths if n > max_length)
    if cut:
        logger.warning(
            "LoRA: max_length %d cuts %d of %d training examples (the longest has %d tokens); raise --max-length "
            "or leave it unset to train on whole solutions",
            max_length,
            cut,
            len(lengths),
            max(lengths),
        )
    return max_length


def lora_micro_batch(
    model: nn.Module, tokenizer, dataset: Dataset, lengths: Sequence[int], settings: LoraSettings
) -> int:
    """The micro-batch: ``settings.per_device_batch``, or for "auto" the largest that fits and divides a process's
    share of the effective batch, so that the effective batch (and so the gradient) is the one asked for."""
    if settings.per_device_batch != "auto":
        return int(settings.per_device_batch)
    from peft_cca.runtime.placement import process_state

    share = max(1, settings.effective_batch // process_state().num_processes)
    longest = dataset[max(range(len(lengths)), key=lengths.__getitem__)]
    ids = tokenizer(longest["prompt"] + longest["completion"])["input_ids"]

    def probe(size: int) -> None:
        batch = torch.tensor([ids] * size, device=next(model.parameters()).device)
        try:
            model(input_ids=batch, labels=batch).loss.backward()
        finally:
            model.zero_grad(set_to_none=True)

    fits = auto_micro_batch(model, lengths, probe, cap=share)
    return max(d for d in range(1, fits + 1) if share % d == 0)


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


def _sft_config(
    output_dir: str,
    lr: float,
    settings: LoraSettings,
    use_cpu: bool | None = None,
    micro_batch: int | None = None,
    max_length: int | None = None,
):
    """TRL's config for one run; ``micro_batch`` replaces an "auto" ``settings.per_device_batch``."""
    from trl import SFTConfig

    micro_batch = micro_batch or int(settings.per_device_batch)

    use_cpu = not torch.cuda.is_available() if use_cpu is None else use_cpu

    config = SFTConfig(
        output_dir=output_dir,
        learning_rate=lr,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=micro_batch,
        optim="adamw_torch",
        lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_fraction,  # transformers reads a value < 1 as a fraction
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        max_length=max_length,
        completion_only_loss=True,
        gradient_checkpointing=False,
        bf16=not use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=settings.seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=use_cpu,  # where the runtime placed the model: MPS stays on MPS
    )
    # world_size is known once the config has set up the (CPU or GPU) process group
    per_round = micro_batch * config.world_size
    config.gradient_accumulation_steps = max(1, settings.effective_batch // per_round)
    return config


def train_lora_once(
    peft_model: PeftModel,
    tokenizer,
    dataset: Dataset,
    lr: float,
    settings: LoraSettings,
    readings: Readings,
    *,
    evaluate_at_start: bool = True,
    micro_batch: int | None = None,
    max_length: int | None = None,
) -> RunResult:
    """One SFT run at ``lr``; the best validation step's LoRA weights are left loaded (within the forgetting bound
    when ``settings.step_choice`` gives one: the same rule as CCA's, for a fair comparison). With a selection
    reading (the frontier) the paper's early steps 2, 4, 6, 8, 10 are scored too, so LoRA's curve reaches down to
    the small gains CCA makes."""
    from trl import SFTTrainer

    early = PAPER_VALIDATION_STEPS if readings.selection is not None else ()
    callback = readings.callback(
        early, settings.step_choice, evaluate_at_start=evaluate_at_start, every=settings.eval_every
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = _sft_config(scratch, lr, settings, trainer_use_cpu(peft_model), micro_batch, max_length)
        trainer = SFTTrainer(
            model=peft_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    run = RunResult.from_training(lr, trainer, callback, evaluate_at_start)
    run.micro_batch = args.per_device_train_batch_size
    return run


def lora_sft(
    model: nn.Module,
    tokenizer,
    train_problems: Sequence[Problem],
    val_problems: Sequence[Problem] | None = None,
    settings: LoraSettings | None = None,
    *,
    evaluate_fn: EvaluateFn | None = None,
    output_dir: str | Path | None = None,
    selection_problems: Sequence[Problem] | None = None,
) -> SweepResult:
    """Learning-rate sweep of the LoRA baseline; the best run (validation macro exact match) is loaded and saved.

    ``model`` is a bare transformers model; it is wrapped per run and unwrapped between runs. ``settings``
    (:class:`~peft_cca.baselines.settings.LoraSettings`, what ``peft-cca lora`` parses): the lrs and the paper's
    hyper-parameters; its ``scoring`` (stage 1's prompt) prompts the training rows and validation alike, and its
    ``step_choice`` and ``selection_problems`` are as :func:`peft_cca.amplify.trainer.amplify`'s.
    """
    settings = settings or LoraSettings()
    scoring, choice = settings.scoring, settings.step_choice
    if settings.max_steps == 0 or settings.epochs <= 0:
        raise UsageError("LoRA: nothing to train: give --epochs > 0 and --max-steps > 0 (or -1 for the epochs)")
    check_schedule(settings.lrs, 1, what="lora")
    if not train_problems:
        raise UsageError("LoRA: no training problems: check the run's task and split (or --train-limit)")
    if evaluate_fn is None:
        from peft_cca.evaluation.exact_match import validation_scorer

        evaluate_fn = validation_scorer(tokenizer, val_problems or [], **scoring.exact_match_options(), what="lora_sft")

    dataset = sft_dataset(train_problems, tokenizer, scoring.prompt_style, scoring.prompt_options)
    lengths = example_lengths(dataset, tokenizer)
    max_length = sequence_limit(lengths, settings.max_length)
    micro_batch = lora_micro_batch(model, tokenizer, dataset, lengths, settings)
    meter = forgetting_meter(model, tokenizer, choice)  # the bare base model
    selection = selection_meter(model, tokenizer, selection_problems, scoring)
    readings = Readings(evaluate_fn, meter, selection)

    def train_at(lr: float, evaluate_at_start: bool) -> RunResult:
        nonlocal model
        torch.manual_seed(settings.seed)  # the same LoRA initialisation for every lr
        peft_model = get_peft_model(model, lora_config(model, settings))
        run = train_lora_once(
            peft_model,
            tokenizer,
            dataset,
            lr,
            settings,
            readings,
            evaluate_at_start=evaluate_at_start,
            micro_batch=micro_batch,
            max_length=max_length,
        )
        model = peft_model.unload()  # the base model without LoRA layers, weights untouched
        return run

    runs = sweep_lrs(settings.lrs, train_at, "LoRA")
    best = best_run(runs)
    peft_model = get_peft_model(model, lora_config(model, settings))
    load_trainable_state(peft_model, best.state)
    result = SweepResult("lora", model=peft_model, best=best, runs=runs, max_forgetting=choice.max_forgetting)
    # train_problems: what LoRA trained on, for Table 1 (CCA trains on pivots, LoRA on problems)
    save_result(
        result,
        output_dir,
        method="lora",
        settings=settings.hyperparameters(),
        train_problems=len(train_problems),
        target=target_kind(train_problems),
        micro_batch=micro_batch,
        longest_example_tokens=max(lengths),
        max_length=max_length,
        forgetting_tokens=meter_tokens(meter),
        select_on=choice.select_on,
        **selection_info(selection),
    )
    return result
