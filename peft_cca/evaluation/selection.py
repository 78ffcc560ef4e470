"""The selection split: a held-out set large enough to rank the sweep's (lr, step) points by target gain.

The paper picks lr and step on its validation split (4 problems per template). On a small run that is about 10
problems, where one problem is 10 points: the pick chases noise. A selection set of at least 40 problems, none of
them a stage-1 problem (by id or by question text), scores every validated point with its binomial standard error,
and its gain over the base with the paired standard error of the per-problem differences (the same problems, so
most of the noise cancels). It sits beside the validation curve, never replacing the test split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from peft_cca.errors import UsageError
from peft_cca.tasks.problem import Problem

MIN_SELECTION = 40  # below this a single problem moves the score by more than 2.5 points


@dataclass(frozen=True)
class SelectionScore:
    """One point's reading: accuracy and its gain over the base on the same problems, each with its stderr."""

    accuracy: float
    stderr: float
    gain: float
    gain_stderr: float
    n: int

    def fields(self) -> dict[str, float]:
        """The history entry's keys (``selection_accuracy``, ``selection_stderr``, ``selection_gain``, ...)."""
        return {
            ("selection_accuracy" if key == "accuracy" else f"selection_{key}"): value
            for key, value in asdict(self).items()
        }


def binomial_stderr(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy over n independent problems."""
    return math.sqrt(p * (1 - p) / n) if n else math.nan


def paired_stderr(differences: Sequence[float]) -> float:
    """The standard error of the mean of per-problem differences (sample stdev / sqrt(n))."""
    n = len(differences)
    if n < 2:
        return math.nan
    mean = sum(differences) / n
    return math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1) / n)


def score_against(base: Sequence[bool], correct: Sequence[bool]) -> SelectionScore:
    """A point's :class:`SelectionScore` from its per-problem correctness and the base's, problem by problem."""
    if len(base) != len(correct):
        raise ValueError(f"selection: {len(correct)} answers against {len(base)} base answers")
    n = len(correct)
    accuracy = sum(correct) / n
    differences = [float(c) - float(b) for b, c in zip(base, correct, strict=True)]
    return SelectionScore(accuracy, binomial_stderr(accuracy, n), sum(differences) / n, paired_stderr(differences), n)


class SelectionMeter:
    """``model -> SelectionScore`` on fixed problems, against the base's answers measured once at the start."""

    def __init__(self, tokenizer, problems: Sequence[Problem], base: Sequence[bool], **scoring: Any) -> None:
        self.tokenizer = tokenizer
        self.problems = list(problems)
        self.base = list(base)
        self.scoring = scoring

    @classmethod
    def of_base(cls, model: nn.Module, tokenizer, problems: Sequence[Problem], **scoring: Any) -> SelectionMeter:
        """Measure the untouched ``model`` (``scoring``: :func:`evaluate_exact_match`'s prompt and batch options)."""
        if len(problems) < MIN_SELECTION:
            raise UsageError(
                f"the selection split has {len(problems)} problems; at least {MIN_SELECTION} are needed to rank "
                "points (--selection-problems, or a --selection-task with more problems)"
            )
        return cls(tokenizer, problems, answers(model, tokenizer, problems, **scoring), **scoring)

    def __call__(self, model: nn.Module) -> SelectionScore:
        return score_against(self.base, answers(model, self.tokenizer, self.problems, **self.scoring))

    @property
    def base_accuracy(self) -> float:
        return sum(self.base) / len(self.base)

    def base_reading(self) -> SelectionScore:
        """The untouched model's reading, from the answers measured at the start (no second generation)."""
        return score_against(self.base, self.base)


def answers(model: nn.Module, tokenizer, problems: Sequence[Problem], **scoring: Any) -> list[bool]:
    """Each problem's greedy exact match, in order."""
    from peft_cca.evaluation.exact_match import evaluate_exact_match

    result = evaluate_exact_match(model, tokenizer, problems, return_completions=True, **scoring)
    return [bool(c["correct"]) for c in result["completions"]]


def held_out_problems(candidates: Sequence[Problem], used: Sequence[Problem], n: int) -> list[Problem]:
    """The first ``n`` of ``candidates`` that share neither id nor question text with ``used`` or each other.

    Generators repeat questions (2-term 1-digit sums have 190 distinct ones), so ids alone would let a test question
    into selection; refused in one line when fewer than ``n`` remain.
    """
    ids = {p.id for p in used}
    questions = {p.question for p in used}
    chosen: list[Problem] = []
    for problem in candidates:
        if problem.id in ids or problem.question in questions:
            continue
        chosen.append(problem)
        questions.add(problem.question)
        if len(chosen) == n:
            return chosen
    raise UsageError(
        f"only {len(chosen)} problems of the selection task are new (not a stage-1 problem by id or question): "
        f"{n} asked; give a --selection-task with more problems (for reasoning-gym, a larger size=) or fewer "
        "--selection-problems"
    )
