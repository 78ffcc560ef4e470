"""Stage 3's learning-rate sweep: :class:`~peft_cca.CCATrainer` at each lr, the best step of each run, the best run.

Each optimizer step sees the whole dataset (full-batch, as the authors do) through gradient accumulation, so the
micro-batch only trades memory for nothing else (``--micro-batch auto`` picks the largest that fits). Validation
exact match runs at steps 2, 4, 6, 8, 10 and every 10 after; the best step's weights (kept on the CPU) are restored
at the end and become the adapter. Of a learning-rate sweep only the best run's state is kept as the sweep goes.

The "w/o mask" ablations: ``sites`` trains every circuit site (every q/k/v head row and MLP neuron,
``Circuit.full``) through the CCA adapter; ``all`` (the authors') trains every parameter of the base model
directly, embeddings, norms, o/gate/down and lm_head included, and is saved as a full model.

The trainer, its arguments, rows, loss, micro-batching and callbacks each have their own module in this package;
this one is the sweep ``peft-cca amplify`` runs.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import Trainer

from peft_cca.amplify.arguments import CCATrainingArguments, eval_schedule
from peft_cca.amplify.callbacks import (
    BestStepCallback,
    EvaluateFn,
    ForgettingFn,
    SelectionFn,
    load_trainable_state,
    reset_deltas,
    trainable_state,
)
from peft_cca.amplify.cca_trainer import CCATrainer
from peft_cca.amplify.micro_batch import resolve_micro_batch
from peft_cca.amplify.objective import Objective
from peft_cca.defaults import DEFAULT_LRS, DEFAULT_STEPS, NO_MASK_LABELS, OPTIMIZERS
from peft_cca.errors import UsageError
from peft_cca.method.circuit import Circuit
from peft_cca.method.config import CCAConfig
from peft_cca.runtime.placement import process_state, trainer_use_cpu
from peft_cca.runtime.runfolder import atomic_write_json
from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, PromptOptions

logger = logging.getLogger(__name__)


def split_of(record: Mapping[str, Any] | Any) -> str:
    return record.get("split", "train") if isinstance(record, Mapping) else getattr(record, "split", "train")


def check_schedule(lrs: Sequence[float], steps: int, what: str = "amplify") -> None:
    """Refuse a sweep that would train nothing or diverge at once: transformers reads ``max_steps <= 0`` as
    "use epochs" (1 or 3 steps), and a NaN lr gives NaN weights."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UsageError(f"{what}: steps is {steps!r}; give a whole number of optimizer steps >= 1 (--steps)")
    if not lrs:
        raise UsageError(f"{what}: no learning rate to sweep; give at least one (--lr)")
    for lr in lrs:
        if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise UsageError(f"{what}: learning rate {lr!r} must be a finite number > 0 (--lr)")


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


@dataclass
class RunResult:
    """One learning rate of the sweep: the validation curve, the loss curve and the chosen step."""

    lr: float
    best_step: int
    best_score: float
    history: list[dict[str, float]]
    losses: list[dict[str, float]]
    base_score: float | None = None
    micro_batch: int | None = None
    paper_step: int | None = None  # the paper's rule within this run (best validation), when a bound chose
    paper_score: float | None = None
    bound_met: bool | None = None  # None: no --max-forgetting; False: no step stayed under it
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_training(
        cls, lr: float, trainer: Trainer, callback: BestStepCallback, evaluate_at_start: bool
    ) -> RunResult:
        """The run a finished ``Trainer`` and its :class:`BestStepCallback` describe (CCA or LoRA alike)."""
        losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
        return cls(
            lr=lr,
            best_step=int(callback.best_step),
            best_score=callback.best_score,
            history=callback.history,
            losses=losses,
            base_score=callback.history[0]["score"] if evaluate_at_start and callback.history else None,
            paper_step=callback.paper_step,
            paper_score=callback.paper_score,
            bound_met=callback.bound_met,
            state=callback.best_state,
        )

    def forgetting_at(self, step: int | None) -> float | None:
        """The forgetting measured at ``step`` (None when it was not measured)."""
        return next((e.get("forgetting") for e in self.history if e["step"] == step), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state")
        return data


@dataclass
class AmplifyResult:
    """The sweep; ``model`` holds the best run's best step; ``adapter_dir`` is where it was saved."""

    model: nn.Module
    best: RunResult
    runs: list[RunResult]
    adapter_dir: Path | None = None
    max_forgetting: float | None = None

    @property
    def selection(self) -> dict[str, Any] | None:
        """:func:`selection_summary` of the sweep (None when forgetting was not measured)."""
        return selection_summary(self.runs, self.max_forgetting)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "best": self.best.to_dict(),
            "runs": [run.to_dict() for run in self.runs],
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
        }
        if self.selection is not None:
            data["selection"] = self.selection
        return data


def train_one(
    model: nn.Module,
    records: Sequence[Mapping[str, Any]],
    evaluate_fn: EvaluateFn,
    lr: float,
    pad_token_id: int,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int | str = 8,
    optimizer: str = "sgd",
    seed: int = 0,
    output_dir: str | Path | None = None,
    schedule: Iterable[int] | None = None,
    evaluate_at_start: bool = True,
    forgetting_fn: ForgettingFn | None = None,
    max_forgetting: float | None = None,
    objective: str = "paper",
    selection_fn: SelectionFn | None = None,
    select_on: str = "validation",
) -> RunResult:
    """Train ``model``'s trainable weights from their current values at one ``lr``; leaves the best step loaded.

    ``batch_size`` is the micro-batch: a number or ``"auto"`` (:func:`auto_micro_batch`). ``forgetting_fn``,
    ``max_forgetting``, ``selection_fn`` and ``select_on``: as :class:`BestStepCallback`'s.
    """
    check_schedule([lr], steps)
    batch_size = resolve_micro_batch(batch_size, model, records, pad_token_id)
    callback = BestStepCallback(
        evaluate_fn,
        eval_schedule(steps) if schedule is None else schedule,
        evaluate_at_start=evaluate_at_start,
        forgetting_fn=forgetting_fn,
        max_forgetting=max_forgetting,
        selection_fn=selection_fn,
        select_on=select_on,
    )
    with tempfile.TemporaryDirectory() as scratch:
        # the Trainer runs where the runtime placed the model (a CPU placement on a GPU machine, MPS on a Mac)
        use_cpu = trainer_use_cpu(model)
        args = cca_training_arguments(
            output_dir or scratch, lr, steps, batch_size, optimizer, seed, use_cpu=use_cpu, objective=objective
        )
        trainer = CCATrainer(model, args, train_dataset=records, pad_token_id=pad_token_id, callbacks=[callback])
        trainer.train()
    run = RunResult.from_training(lr, trainer, callback, evaluate_at_start)
    run.micro_batch = batch_size
    return run


def add_run(runs: list[RunResult], run: RunResult, base_score: float | None) -> float:
    """Append one lr's run; the untouched model scores the same for every lr, so it is evaluated once.

    Only the best run so far keeps its state (ties keep the earlier, larger-listed lr): at paper scale, or with
    ``--no-mask all``, a state per lr would not fit in host memory.
    """
    base_score = run.base_score if base_score is None else base_score
    run.base_score = base_score
    if run.history and run.history[0]["step"] != 0:
        run.history.insert(0, {"step": 0, "score": base_score})
    best = best_run(runs) if runs else None
    if best is not None and _rank(run) > _rank(best):
        best.state = None
    elif best is not None:
        run.state = None
    runs.append(run)
    return base_score


def best_run(runs: Sequence[RunResult]) -> RunResult:
    """The run with the best validation score; ``max`` keeps the first of equals, the larger lr listed first.

    Under ``--max-forgetting`` a run with a step within the bound beats every run without one.
    """
    return max(runs, key=_rank)


def _rank(run: RunResult) -> tuple[bool, float]:
    """How runs of a sweep compare: within the forgetting bound first, then validation (best_run, add_run)."""
    return (run.bound_met is not False, run.best_score)


def selection_summary(runs: Sequence[RunResult], max_forgetting: float | None) -> dict[str, Any] | None:
    """What the forgetting-bounded rule and the paper's rule each pick over the sweep, and the cost in validation.

    None when forgetting was not measured. ``cost`` is the paper pick's validation score minus the chosen one's
    (what the bound gave up on the target); ``saved`` the forgetting it avoided (nats per token).
    """
    if not runs or not any("forgetting" in e for r in runs for e in r.history):
        return None
    chosen = best_run(runs)
    paper = max(runs, key=lambda r: r.paper_score if r.paper_score is not None else r.best_score)
    paper_step = paper.paper_step if paper.paper_step is not None else paper.best_step
    paper_score = paper.paper_score if paper.paper_score is not None else paper.best_score
    picks = {
        "chosen": {"lr": chosen.lr, "step": chosen.best_step, "score": chosen.best_score},
        "paper": {"lr": paper.lr, "step": paper_step, "score": paper_score},
    }
    picks["chosen"]["forgetting"] = chosen.forgetting_at(chosen.best_step)
    picks["paper"]["forgetting"] = paper.forgetting_at(paper_step)
    saved = None
    if picks["paper"]["forgetting"] is not None and picks["chosen"]["forgetting"] is not None:
        saved = picks["paper"]["forgetting"] - picks["chosen"]["forgetting"]
    return {
        "rule": "max-forgetting" if max_forgetting is not None else "paper",
        "max_forgetting": max_forgetting,
        "bound_met": chosen.bound_met,
        **picks,
        "cost": paper_score - chosen.best_score,
        "saved": saved,
    }


def save_result(
    result: AmplifyResult,
    output_dir: str | Path | None,
    summary_name: str,
    *,
    folder: str = "adapter",
    tokenizer=None,
    **extra: Any,
) -> None:
    """``<output_dir>/<folder>/`` (the adapter, or a full model with its tokenizer) and the sweep summary as
    strict JSON, written by the main process only."""
    if output_dir is None or not process_state().is_main_process:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.adapter_dir = out / folder
    result.model.save_pretrained(result.adapter_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(result.adapter_dir)
    atomic_write_json(out / summary_name, {**result.to_dict(), **extra})


def forgetting_meter(
    model: nn.Module, tokenizer, forgetting_tokens: int | None, max_forgetting: float | None
) -> ForgettingFn | None:
    """A :class:`~peft_cca.evaluation.forgetting.ForgettingMeter` on ``model`` as it is now (the base), or None.

    Measured when ``forgetting_tokens`` is given, or on the default 5,000 tokens when only ``max_forgetting`` is.
    """
    if not forgetting_tokens and max_forgetting is None:
        return None
    from peft_cca.evaluation.forgetting import DEFAULT_MAX_TOKENS, ForgettingMeter

    tokens = forgetting_tokens or DEFAULT_MAX_TOKENS
    logger.info("forgetting: measuring the base on %d tokens of held-out Wikipedia", tokens)
    return ForgettingMeter.of_base(model, tokenizer, max_tokens=tokens)


def selection_meter(model: nn.Module, tokenizer, problems: Sequence | None, **scoring: Any) -> SelectionFn | None:
    """A :class:`~peft_cca.evaluation.selection.SelectionMeter` on ``model`` as it is now (the base), or None."""
    if not problems:
        return None
    from peft_cca.evaluation.selection import SelectionMeter

    logger.info("selection: measuring the base on %d held-out problems", len(problems))
    return SelectionMeter.of_base(model, tokenizer, problems, **scoring)


def selection_info(meter: SelectionFn | None) -> dict[str, Any]:
    """The selection split a summary records: its size, ids and the base's accuracy (empty without one)."""
    if meter is None:
        return {}
    return {
        "selection_split": {
            "n": len(meter.problems),
            "base_accuracy": meter.base_accuracy,
            "ids": [p.id for p in meter.problems],
        }
    }


def meter_tokens(meter: ForgettingFn | None) -> int | None:
    """How many tokens each forgetting reading scores (None without a meter), for the run's summary."""
    return None if meter is None else meter.base.n_tokens


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
    *,
    lrs: Sequence[float] = DEFAULT_LRS,
    steps: int = DEFAULT_STEPS,
    optimizer: str = "sgd",
    batch_size: int | str = 8,
    mlp_targets: Sequence[str] = ("up",),
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    max_new_tokens: int = 256,
    eval_batch_size: int = 16,
    evaluate_fn: EvaluateFn | None = None,
    output_dir: str | Path | None = None,
    seed: int = 0,
    no_mask: str | None = None,
    prompt_options: PromptOptions | None = None,
    forgetting_tokens: int | None = None,
    max_forgetting: float | None = None,
    objective: str = "paper",
    selection_problems: Sequence | None = None,
    select_on: str = "validation",
) -> AmplifyResult:
    """Learning-rate sweep of CCA; the best run (by validation macro exact match) is loaded and saved.

    ``evaluate_fn(model) -> float`` replaces the validation exact match on ``val_problems`` when given.
    ``no_mask``: None (train ``circuit``), ``"sites"`` (every circuit site) or ``"all"`` (every parameter of
    the base model, saved as a full model in ``<output_dir>/model``). Writes ``<output_dir>/adapter/`` and
    ``<output_dir>/amplify.json`` when ``output_dir`` is set. ``batch_size`` is the micro-batch or ``"auto"``.
    ``prompt_options``: stage 1's template and exemplars, so validation prompts as the pivots were found.
    ``forgetting_tokens``: measure forgetting (cross-entropy rise on that many tokens of held-out Wikipedia) at
    every validation step; ``max_forgetting`` (nats per token; measured on 5,000 tokens unless given) keeps the
    best-validated step within it instead of the paper's best-validated step. ``objective``: ``"paper"`` or
    ``"margin:M"`` (:class:`~peft_cca.amplify.objective.Objective`). ``selection_problems`` (at least 40, none a
    stage-1 problem): every validated step is also scored on them, with its gain over the base (the frontier);
    ``select_on="selection"`` picks the step by that score.
    """
    check_schedule(lrs, steps)
    objective = Objective.parse(objective).name
    if no_mask not in (None, *NO_MASK_LABELS):
        raise UsageError(f"no_mask is {no_mask!r}; choose one of {', '.join(NO_MASK_LABELS)} (--no-mask)")
    records = [r for r in records if split_of(r) == "train"]
    if not records:
        raise UsageError("amplify: no training records (split 'train') in the run; run localize first")
    if no_mask == "all":
        trained = train_every_parameter(model)
        initial = trainable_state(trained)  # every lr starts from the base model again
    else:
        trained = wrap(model, Circuit.full(model) if no_mask == "sites" else circuit, mlp_targets)
    if evaluate_fn is None:
        from peft_cca.evaluation.exact_match import validation_scorer

        # validation covers every template, as in the paper (run_problems filters only training)
        evaluate_fn = validation_scorer(
            tokenizer,
            val_problems or [],
            prompt_style=prompt_style,
            batch_size=eval_batch_size,
            max_new_tokens=max_new_tokens,
            what="amplify",
            prompt_options=prompt_options,
        )

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro_batch = resolve_micro_batch(batch_size, trained, records, pad_id)
    if no_mask != "all":
        reset_deltas(trained)  # the reference is the base model, also when a trained PeftModel was passed
    meter = forgetting_meter(trained, tokenizer, forgetting_tokens, max_forgetting)
    scoring = {"prompt_style": prompt_style, "batch_size": eval_batch_size, "max_new_tokens": max_new_tokens}
    selection = selection_meter(trained, tokenizer, selection_problems, prompt_options=prompt_options, **scoring)
    runs: list[RunResult] = []
    base_score: float | None = None
    for lr in lrs:
        if no_mask == "all":
            load_trainable_state(trained, initial)
        else:
            reset_deltas(trained)
        run = train_one(
            trained,
            records,
            evaluate_fn,
            lr,
            pad_id,
            steps=steps,
            batch_size=micro_batch,
            optimizer=optimizer,
            seed=seed,
            evaluate_at_start=base_score is None,
            forgetting_fn=meter,
            max_forgetting=max_forgetting,
            objective=objective,
            selection_fn=selection,
            select_on=select_on,
        )
        base_score = add_run(runs, run, base_score)
        logger.info("lr %g: best validation %.4f at step %d", lr, run.best_score, run.best_step)
    best = best_run(runs)
    load_trainable_state(trained, best.state)
    result = AmplifyResult(model=trained, best=best, runs=runs, max_forgetting=max_forgetting)
    extra: dict[str, Any] = {"micro_batch": micro_batch, "no_mask": no_mask, "forgetting_tokens": meter_tokens(meter)}
    extra.update(objective=objective, select_on=select_on, **selection_info(selection))
    if no_mask is not None:
        extra["label"] = NO_MASK_LABELS[no_mask]
    if no_mask == "all":
        save_result(result, output_dir, "amplify.json", folder="model", tokenizer=tokenizer, **extra)
    else:
        save_result(result, output_dir, "amplify.json", **extra)
    return result
