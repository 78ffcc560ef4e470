"""Stage 3's learning-rate sweep: :class:`~peft_cca.CCATrainer` at each lr, through the sweep every arm shares
(:mod:`peft_cca.sweep`: the best step of each run, the best run, the forgetting bound, the summary).

Each optimizer step sees the whole dataset (full-batch, as the authors do) through gradient accumulation, so the
micro-batch only trades memory for nothing else (``--micro-batch auto`` picks the largest that fits). Validation
exact match runs at steps 2, 4, 6, 8, 10 and every 10 after; the best step's weights (kept on the CPU) are restored
at the end and become the adapter. Of a learning-rate sweep only the best run's state is kept as the sweep goes.

The "w/o mask" ablations: ``sites`` trains every circuit site (every q/k/v head row and MLP neuron,
``Circuit.full``) through the CCA adapter; ``all`` (the authors') trains every parameter of the base model
directly, embeddings, norms, o/gate/down and lm_head included, and is saved as a full model.

The trainer, its arguments, rows, loss and micro-batching each have their own module in this package; this one is
what ``peft-cca amplify`` runs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from peft_cca.amplify.arguments import CCATrainingArguments
from peft_cca.amplify.cca_trainer import CCATrainer
from peft_cca.amplify.micro_batch import resolve_micro_batch
from peft_cca.amplify.objective import Objective
from peft_cca.amplify.settings import AmplifySettings
from peft_cca.defaults import DEFAULT_STEPS, NO_MASK_LABELS, OPTIMIZERS
from peft_cca.errors import UsageError
from peft_cca.method.circuit import Circuit
from peft_cca.method.config import CCAConfig
from peft_cca.runtime.placement import trainer_use_cpu
from peft_cca.sweep.callbacks import (
    EvaluateFn,
    eval_schedule,
    load_trainable_state,
    trainable_state,
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

logger = logging.getLogger(__name__)


def split_of(record: Mapping[str, Any] | Any) -> str:
    return record.get("split", "train") if isinstance(record, Mapping) else getattr(record, "split", "train")


def cca_training_arguments(
    output_dir: str | Path,
    lr: float,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    optimizer: str = "sgd",
    seed: int = 0,
    **overrides: Any,
) -> CCATrainingArguments:
    """The sweep's arguments: the paper's (constant lr, SGD, no warmup, decay or clipping), quiet, never saving."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": lr,
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "optim": OPTIMIZERS[optimizer],
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,
        "dataloader_drop_last": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # without a GPU, say so: accelerate then runs several processes on the CPU with gloo instead of one
        "use_cpu": not torch.cuda.is_available(),
    }
    settings.update(overrides)
    return CCATrainingArguments(**settings)


def train_one(
    model: nn.Module,
    records: Sequence[Mapping[str, Any]],
    lr: float,
    pad_token_id: int,
    readings: Readings,
    settings: AmplifySettings | None = None,
    *,
    evaluate_at_start: bool = True,
    output_dir: str | Path | None = None,
    schedule: Iterable[int] | None = None,
) -> RunResult:
    """Train ``model``'s trainable weights from their current values at one ``lr``; leaves the best step loaded.

    ``settings`` gives the steps, optimizer, micro-batch (a number or ``"auto"``), objective, seed and the step
    choice; ``readings`` what each validated step reads (see :class:`~peft_cca.sweep.runs.Readings`).
    """
    settings = settings or AmplifySettings()
    check_schedule([lr], settings.steps)
    batch_size = resolve_micro_batch(settings.micro_batch, model, records, pad_token_id)
    callback = readings.callback(
        eval_schedule(settings.steps) if schedule is None else schedule,
        settings.step_choice,
        evaluate_at_start=evaluate_at_start,
    )
    with tempfile.TemporaryDirectory() as scratch:
        # the Trainer runs where the runtime placed the model (a CPU placement on a GPU machine, MPS on a Mac)
        args = cca_training_arguments(
            output_dir or scratch,
            lr,
            settings.steps,
            batch_size,
            settings.optimizer,
            settings.seed,
            use_cpu=trainer_use_cpu(model),
            objective=settings.objective,
        )
        trainer = CCATrainer(model, args, train_dataset=records, pad_token_id=pad_token_id, callbacks=[callback])
        trainer.train()
    run = RunResult.from_training(lr, trainer, callback, evaluate_at_start)
    run.micro_batch = batch_size
    return run


@torch.no_grad()
def reset_deltas(model: nn.Module) -> None:
    """Zero every CCA delta: the model is the base model again, ready for another learning rate."""
    for name, param in model.named_parameters():
        if "cca_delta" in name:
            param.zero_()


def wrap(model: nn.Module, circuit: Circuit | None, mlp_targets: Sequence[str] = ("up",)) -> PeftModel:
    """``model`` as a CCA PeftModel (unchanged when it already is a PeftModel)."""
    if isinstance(model, PeftModel):
        return model
    if circuit is None:
        raise ValueError("amplify needs a circuit to wrap a base model (or pass a PeftModel)")
    return get_peft_model(model, CCAConfig(circuit=circuit, mlp_targets=list(mlp_targets)))


def train_every_parameter(model: nn.Module) -> nn.Module:
    """The authors' "w/o mask": every parameter of the base model is trainable (the model is trained in place)."""
    if isinstance(model, PeftModel):
        raise ValueError("--no-mask all trains the base model itself: pass the model, not a PeftModel")
    for param in model.parameters():
        param.requires_grad_(True)
    dtype = next(model.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        # unlike CCA's fp32 deltas, these weights take each step in their own dtype: a step below half their
        # rounding interval (about 0.4% of a weight in bf16) changes nothing
        logger.warning(
            "--no-mask all trains every parameter in %s: steps smaller than the weights' rounding are lost; "
            "--dtype float32 keeps them (twice the memory for weights and gradients)",
            str(dtype).removeprefix("torch."),
        )
    return model


def amplify(
    model: nn.Module,
    tokenizer,
    records: Iterable[Mapping[str, Any]],
    circuit: Circuit | None,
    val_problems: Sequence | None = None,
    settings: AmplifySettings | None = None,
    *,
    evaluate_fn: EvaluateFn | None = None,
    output_dir: str | Path | None = None,
    selection_problems: Sequence | None = None,
) -> SweepResult:
    """Learning-rate sweep of CCA; the best run (by validation macro exact match) is loaded and saved.

    ``settings`` (:class:`~peft_cca.amplify.settings.AmplifySettings`, what ``peft-cca amplify`` parses): the lrs
    and steps, what trains (``no_mask``: None trains ``circuit``, ``"sites"`` every circuit site, ``"all"`` every
    parameter of the base model, saved as a full model in ``<output_dir>/model``), the objective, how validation
    scores (``scoring``: stage 1's prompt) and the step choice (``step_choice``: forgetting at every validated
    step, the ``max_forgetting`` bound, ``select_on``). ``evaluate_fn(model) -> float`` replaces the validation
    exact match on ``val_problems`` when given. ``selection_problems`` (at least 40, none a stage-1 problem): every
    validated step is also scored on them, with its gain over the base (the frontier). Writes
    ``<output_dir>/adapter/`` and ``<output_dir>/amplify.json`` when ``output_dir`` is set.
    """
    settings = settings or AmplifySettings()
    check_schedule(settings.lrs, settings.steps)
    objective = Objective.parse(settings.objective).name
    no_mask, scoring, choice = settings.no_mask, settings.scoring, settings.step_choice
    records = [r for r in records if split_of(r) == "train"]
    if not records:
        raise UsageError("amplify: no training records (split 'train') in the run; run localize first")
    if no_mask == "all":
        trained = train_every_parameter(model)
        initial = trainable_state(trained)  # every lr starts from the base model again
    else:
        trained = wrap(model, Circuit.full(model) if no_mask == "sites" else circuit, settings.mlp_targets)
    if evaluate_fn is None:
        from peft_cca.evaluation.exact_match import validation_scorer

        # validation covers every template, as in the paper (localize.problems filters only training)
        evaluate_fn = validation_scorer(tokenizer, val_problems or [], **scoring.exact_match_options(), what="amplify")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro_batch = resolve_micro_batch(settings.micro_batch, trained, records, pad_id)
    if no_mask != "all":
        reset_deltas(trained)  # the reference is the base model, also when a trained PeftModel was passed
    meter = forgetting_meter(trained, tokenizer, choice)
    selection = selection_meter(trained, tokenizer, selection_problems, scoring)
    readings = Readings(evaluate_fn, meter, selection)
    fixed = replace(settings, micro_batch=micro_batch, objective=objective)

    def train_at(lr: float, evaluate_at_start: bool) -> RunResult:
        if no_mask == "all":
            load_trainable_state(trained, initial)
        else:
            reset_deltas(trained)
        return train_one(trained, records, lr, pad_id, readings, fixed, evaluate_at_start=evaluate_at_start)

    runs = sweep_lrs(settings.lrs, train_at, "CCA")
    best = best_run(runs)
    load_trainable_state(trained, best.state)
    result = SweepResult("cca", model=trained, best=best, runs=runs, max_forgetting=choice.max_forgetting)
    extra: dict[str, Any] = {"micro_batch": micro_batch, "no_mask": no_mask, "forgetting_tokens": meter_tokens(meter)}
    extra.update(objective=objective, select_on=choice.select_on, **selection_info(selection))
    if no_mask is not None:
        extra["label"] = NO_MASK_LABELS[no_mask]
    if no_mask == "all":
        save_result(result, output_dir, folder="model", tokenizer=tokenizer, **extra)
    else:
        save_result(result, output_dir, **extra)
    return result
