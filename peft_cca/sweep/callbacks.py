"""Callbacks any ``transformers.Trainer`` can take: validation at the paper's steps, the best step kept, and the
forgetting bound; and the trainable-state helpers they (and the lr sweep of every arm) use.

``BestStepCallback`` is what ``peft-cca amplify`` and the LoRA baseline run. Used with a plain ``Trainer`` or
:class:`~peft_cca.CCATrainer`, it reads its schedule from ``args.validation_steps`` and its bound from
``args.max_forgetting`` when :class:`~peft_cca.CCATrainingArguments` carries them and the callback was not told.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PAPER_VALIDATION_STEPS = (2, 4, 6, 8, 10)

EvaluateFn = Callable[[nn.Module], float]
ForgettingFn = Callable[[nn.Module], Any]  # -> evaluation.forgetting.Forgetting (delta, stderr)
SelectionFn = Callable[[nn.Module], Any]  # -> evaluation.selection.SelectionScore (accuracy, gain, stderrs, n)
SCORE_KEYS = {"validation": "score", "selection": "selection_accuracy"}


def eval_schedule(max_steps: int) -> list[int]:
    """The authors' validation steps: 2, 4, 6, 8, 10, then every 10 (up to ``max_steps``)."""
    return [s for s in PAPER_VALIDATION_STEPS if s <= max_steps] + list(range(20, max_steps + 1, 10))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (the CCA deltas, or every weight for ``--no-mask all``): the
    accelerator's memory stays for training."""
    return {name: _whole(p).to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _whole(param: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter: under FSDP2 a parameter is a DTensor holding one shard per process, and a
    saved adapter must hold every row, so shards are gathered (a collective: every process calls this)."""
    from torch.distributed.tensor import DTensor

    return param.detach().full_tensor() if isinstance(param, DTensor) else param.detach()


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Write full values (from :func:`trainable_state`) back; a sharded parameter takes its own shard of them."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    for name, value in state.items():
        param = params[name]
        if isinstance(param, DTensor):
            value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        param.copy_(value)


class BestStepCallback(TrainerCallback):
    """Validation at the scheduled steps; keeps the best step's trainable weights and restores them at the end.

    Evaluates at the steps of ``schedule``, and with ``every`` also at each multiple of it and at the last
    step (the LoRA baseline's "every N steps"). Ties keep the earlier step. Step 0 (the untouched model) is
    evaluated for the curve when ``evaluate_at_start``, but the chosen step is always a trained one. With no
    scheduled step reached, the final weights are evaluated and kept (never a score of -inf).

    ``forgetting_fn`` (a :class:`~peft_cca.evaluation.forgetting.ForgettingMeter`) adds each step's forgetting
    to the history. ``max_forgetting`` then keeps the best-validated step whose forgetting is at most that many
    nats per token; the paper's rule (best validation, forgetting unseen) is still recorded as ``paper_step``.
    When no trained step stays under the bound, the one that forgot least is kept and ``bound_met`` is False.

    ``selection_fn`` (a :class:`~peft_cca.evaluation.selection.SelectionMeter`) scores every evaluated step on the
    selection split too (``selection_accuracy``, ``selection_gain`` and their stderrs): the sweep's frontier.
    ``select_on="selection"`` then picks the step by that score instead of validation (the bound still applies).
    """

    def __init__(
        self,
        evaluate_fn: EvaluateFn,
        schedule: Iterable[int] | None = None,
        evaluate_at_start: bool = True,
        save_dir: str | Path | None = None,
        every: int | None = None,
        forgetting_fn: ForgettingFn | None = None,
        max_forgetting: float | None = None,
        selection_fn: SelectionFn | None = None,
        select_on: str = "validation",
    ) -> None:
        if max_forgetting is not None and forgetting_fn is None:
            raise ValueError("max_forgetting needs a forgetting_fn to measure each step with")
        if select_on not in SCORE_KEYS:
            raise ValueError(f"select_on is {select_on!r}; choose from {sorted(SCORE_KEYS)}")
        if select_on == "selection" and selection_fn is None:
            raise ValueError("select_on='selection' needs a selection_fn to score each step with")
        self.selection_fn = selection_fn
        self.score_key = SCORE_KEYS[select_on]
        self.evaluate_fn = evaluate_fn
        self.schedule = None if schedule is None else set(schedule)
        self.every = every
        self.evaluate_at_start = evaluate_at_start
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.forgetting_fn = forgetting_fn
        self.max_forgetting = max_forgetting
        self.history: list[dict[str, float]] = []
        self.best_step: int | None = None
        self.best_score = -math.inf
        self.paper_step: int | None = None
        self.paper_score = -math.inf
        self.bound_met: bool | None = None if max_forgetting is None else True
        self._best_state: dict[str, torch.Tensor] | None = None
        self._least_forgetting: tuple[float, int, float, dict[str, torch.Tensor]] | None = None
        # wall seconds of each kind of reading, summed over the run: where a sweep's time goes besides training
        self.seconds = {"validation": 0.0, "forgetting": 0.0, "selection": 0.0}

    def _timed(self, kind: str, reading: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = reading()
        self.seconds[kind] += time.perf_counter() - start
        return value

    def _settle(self, args, state, model: nn.Module, tokenizer) -> None:
        """What the constructor left open, from the training arguments: the schedule (``validation_steps``, else
        the paper's) and the forgetting bound (``max_forgetting``, measured against the model as it starts)."""
        if self.schedule is None:
            steps = getattr(args, "validation_steps", None)
            self.schedule = set(eval_schedule(state.max_steps) if steps is None else steps)
        bound = getattr(args, "max_forgetting", None)
        if self.max_forgetting is None and bound is not None:
            if self.forgetting_fn is None:
                if tokenizer is None:
                    raise ValueError("args.max_forgetting needs the trainer's processing_class to measure forgetting")
                from peft_cca.evaluation.forgetting import ForgettingMeter

                self.forgetting_fn = ForgettingMeter.of_base(model, tokenizer)
            self.max_forgetting, self.bound_met = bound, True

    def _evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        entry = {"step": step, "score": float(self._timed("validation", lambda: self.evaluate_fn(model)))}
        if self.forgetting_fn is not None:
            reading = self._timed("forgetting", lambda: self.forgetting_fn(model))
            entry["forgetting"], entry["forgetting_stderr"] = reading.delta, reading.stderr
        if self.selection_fn is not None:  # step 0 is the base the meter measured when it was made
            at_base = step == 0 and hasattr(self.selection_fn, "base_reading")
            score = (
                self.selection_fn.base_reading()
                if at_base
                else self._timed("selection", lambda: self.selection_fn(model))
            )
            entry.update(score.fields())
        model.train(was_training)
        self.history.append(entry)
        notes = _selection_note(entry) + _forgetting_note(entry)
        logger.info("step %d: validation %.4f%s", step, entry["score"], notes)
        return entry

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._settle(args, state, model, processing_class)
        if self.evaluate_at_start:
            self._evaluate(model, 0)

    def _due(self, step: int, max_steps: int) -> bool:
        periodic = self.every is not None and (step % self.every == 0 or step == max_steps)
        return step in self.schedule or periodic

    def _within_bound(self, entry: Mapping[str, float]) -> bool:
        return self.max_forgetting is None or entry["forgetting"] <= self.max_forgetting

    def _consider(self, model: nn.Module, entry: Mapping[str, float]) -> None:
        step, score = int(entry["step"]), entry[self.score_key]
        if entry["score"] > self.paper_score:  # the paper's rule reads validation whatever picks the step
            self.paper_score, self.paper_step = entry["score"], step
        if self._within_bound(entry):
            if score > self.best_score:
                self.best_score, self.best_step = score, step
                self._best_state = trainable_state(model)
        elif self._best_state is None and (
            self._least_forgetting is None or entry["forgetting"] < self._least_forgetting[0]
        ):  # the fallback, kept only while no step has met the bound
            self._least_forgetting = (entry["forgetting"], step, score, trainable_state(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state.global_step, state.max_steps):
            self._consider(model, self._evaluate(model, state.global_step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._best_state is None and self._least_forgetting is None:  # no scheduled step reached (or NaN)
            entry = self._evaluate(model, state.global_step)
            self._consider(model, entry)
            if self._best_state is None and self._least_forgetting is None:  # a NaN score compares to nothing
                self.best_step, self.best_score = state.global_step, entry[self.score_key]
                self._best_state = trainable_state(model)
        if self._best_state is None:  # every trained step forgot more than the bound
            forgot, self.best_step, self.best_score, self._best_state = self._least_forgetting
            self._least_forgetting, self.bound_met = None, False
            logger.warning(
                "no step stayed within --max-forgetting %g nats/token: keeping step %d, which forgot least (%.4f)",
                self.max_forgetting,
                self.best_step,
                forgot,
            )
        load_trainable_state(model, self._best_state)
        if self.save_dir is not None and state.is_world_process_zero:
            model.save_pretrained(self.save_dir)

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        return self._best_state


def _selection_note(entry: Mapping[str, float]) -> str:
    if "selection_accuracy" not in entry:
        return ""
    return (
        f", selection {entry['selection_accuracy']:.3f} (gain {entry['selection_gain']:+.3f} ± "
        f"{entry['selection_gain_stderr']:.3f}, n={entry['selection_n']})"
    )


def _forgetting_note(entry: Mapping[str, float]) -> str:
    if "forgetting" not in entry:
        return ""
    return f", forgetting {entry['forgetting']:+.4f} ± {entry['forgetting_stderr']:.4f} nats/token"


def exact_match_callback(
    tokenizer,
    problems: Iterable[Any],
    *,
    prompt_style: str = "auto",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    save_dir: str | Path | None = None,
    forgetting_fn: ForgettingFn | None = None,
    max_forgetting: float | None = None,
) -> BestStepCallback:
    """A :class:`BestStepCallback` scored by macro exact match on ``problems`` (``peft_cca.tasks.Problem``, or
    ``load_problems``' output): the paper's validation. Add it to any ``Trainer``'s ``callbacks``."""
    from peft_cca.evaluation.exact_match import validation_scorer

    score = validation_scorer(
        tokenizer, list(problems), prompt_style=prompt_style, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return BestStepCallback(score, save_dir=save_dir, forgetting_fn=forgetting_fn, max_forgetting=max_forgetting)
