"""The learning-rate sweep every arm runs (CCA and the LoRA baseline alike), in one place so both are chosen by the
same rule: one run per lr, each validated at the same steps and kept at its best step (``BestStepCallback``),
the base scored once, only the best run's state kept, the forgetting bound and the selection split (the frontier)
applied alike, and the result written as ``<arm>.json`` beside the adapter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from peft_cca.errors import UsageError
from peft_cca.evaluation.settings import Scoring
from peft_cca.runtime.placement import process_state
from peft_cca.runtime.runfolder import atomic_write_json
from peft_cca.sweep.callbacks import BestStepCallback, EvaluateFn, ForgettingFn, SelectionFn
from peft_cca.sweep.settings import StepChoice

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Readings:
    """What a run reads at each validated step: validation (required), forgetting and the selection split."""

    validation: EvaluateFn
    forgetting: ForgettingFn | None = None
    selection: SelectionFn | None = None

    def callback(
        self, schedule: Iterable[int], choice: StepChoice, *, evaluate_at_start: bool, every: int | None = None
    ) -> BestStepCallback:
        """The :class:`BestStepCallback` that takes these readings at ``schedule`` and keeps ``choice``'s step."""
        return BestStepCallback(
            self.validation,
            schedule,
            evaluate_at_start=evaluate_at_start,
            every=every,
            forgetting_fn=self.forgetting,
            max_forgetting=choice.max_forgetting,
            selection_fn=self.selection,
            select_on=choice.select_on,
        )


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
    seconds: dict[str, float] = field(default_factory=dict)  # the whole run and its readings (BestStepCallback)
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_training(
        cls, lr: float, trainer: Trainer, callback: BestStepCallback, evaluate_at_start: bool
    ) -> RunResult:
        """The run a finished ``Trainer`` and its :class:`BestStepCallback` describe (CCA or LoRA alike)."""
        losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
        total = next((e["train_runtime"] for e in reversed(trainer.state.log_history) if "train_runtime" in e), None)
        seconds = {"run": round(total, 1)} if total is not None else {}
        seconds.update((kind, round(value, 1)) for kind, value in callback.seconds.items() if value)
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
            seconds=seconds,
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
class SweepResult:
    """One arm's sweep; ``model`` holds the best run's best step; ``adapter_dir`` is where it was saved."""

    arm: str  # "cca" (any ablation or objective: the summary says which) or "lora"
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
            "arm": self.arm,
            "best": self.best.to_dict(),
            "runs": [run.to_dict() for run in self.runs],
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
        }
        if self.selection is not None:
            data["selection"] = self.selection
        return data


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


# the sweep summary of each arm, beside its adapter: this module writes and reads them (format 1: before 0.2's
# run-folder owners, with no "format_version" and no "arm"; the file's name says the arm)
SUMMARY_FILES = {"cca": "amplify.json", "lora": "lora.json"}
SUMMARY_FORMAT = 2


def save_result(
    result: SweepResult,
    output_dir: str | Path | None,
    *,
    folder: str = "adapter",
    tokenizer=None,
    **extra: Any,
) -> None:
    """``<output_dir>/<folder>/`` (the adapter, or a full model with its tokenizer) and the sweep summary
    (``amplify.json`` or ``lora.json`` by the arm) as strict JSON, written by the main process only."""
    if output_dir is None or not process_state().is_main_process:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.adapter_dir = out / folder
    result.model.save_pretrained(result.adapter_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(result.adapter_dir)
    summary = {"format_version": SUMMARY_FORMAT, **result.to_dict(), **extra}
    atomic_write_json(out / SUMMARY_FILES[result.arm], summary)


def read_sweep_summary(folder: str | Path) -> dict[str, Any] | None:
    """The sweep summary in ``folder`` (an amplify or lora output folder), with its ``arm`` (read from the file's
    name for format 1); None when the folder holds none. A damaged file is one line naming it."""
    from peft_cca.jsonfiles import read_object

    for arm, name in SUMMARY_FILES.items():
        path = Path(folder) / name
        if path.is_file():
            data = read_object(path, f"rerun the stage that wrote {name} ({'amplify' if arm == 'cca' else arm})")
            return {"arm": arm, "format_version": 1, **data}
    return None


def forgetting_meter(model: nn.Module, tokenizer, choice: StepChoice) -> ForgettingFn | None:
    """A :class:`~peft_cca.evaluation.forgetting.ForgettingMeter` on ``model`` as it is now (the base), or None.

    Measured when ``choice.forgetting_tokens`` is given, or on the default 5,000 tokens when only a bound is.
    """
    if not choice.forgetting_tokens and choice.max_forgetting is None:
        return None
    from peft_cca.evaluation.forgetting import DEFAULT_MAX_TOKENS, ForgettingMeter

    tokens = choice.forgetting_tokens or DEFAULT_MAX_TOKENS
    logger.info("forgetting: measuring the base on %d tokens of held-out Wikipedia", tokens)
    return ForgettingMeter.of_base(model, tokenizer, max_tokens=tokens)


def selection_meter(model: nn.Module, tokenizer, problems: Sequence | None, scoring: Scoring) -> SelectionFn | None:
    """A :class:`~peft_cca.evaluation.selection.SelectionMeter` on ``model`` as it is now (the base), or None."""
    if not problems:
        return None
    from peft_cca.evaluation.selection import SelectionMeter

    logger.info("selection: measuring the base on %d held-out problems", len(problems))
    return SelectionMeter.of_base(model, tokenizer, problems, **scoring.exact_match_options())


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


def sweep_lrs(lrs: Sequence[float], train_at: Callable[[float, bool], RunResult], what: str) -> list[RunResult]:
    """``train_at(lr, evaluate_at_start)`` for every lr, each run added by :func:`add_run` (the base is scored by
    the first run only); ``what`` names the arm in the log."""
    runs: list[RunResult] = []
    base_score: float | None = None
    for lr in lrs:
        run = train_at(lr, base_score is None)
        base_score = add_run(runs, run, base_score)
        logger.info("%s lr %g: best validation %.4f at step %d", what, lr, run.best_score, run.best_step)
    return runs
