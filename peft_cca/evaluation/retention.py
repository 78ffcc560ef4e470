"""Retention: the same exact match on reasoning-gym tasks that are not the target skill (offline)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import nn

from peft_cca.evaluation.exact_match import evaluate_exact_match
from peft_cca.tasks import DEFAULT_RETENTION_TASKS
from peft_cca.tasks.problem import Problem

RETENTION_TASKS: tuple[str, ...] = DEFAULT_RETENTION_TASKS


def retention_problems(tasks: Sequence[str] = RETENTION_TASKS, size: int = 50, seed: int = 1234) -> list[Problem]:
    """``size`` reasoning-gym problems per non-target task (each task is one group).

    A task may carry its own reasoning-gym config (``"leg_counting?max_animals=1"``); such a task is its own
    group and id prefix, so two configs of one generator (``products?max_digits=1`` and ``=2``, as a calibrated
    suite may hold) are reported apart and their problems keep distinct ids.
    """
    from peft_cca.tasks.sources import load_problems

    def spec(task: str) -> str:
        return f"rg:{task}{'&' if '?' in task else '?'}size={size}&seed={seed}"

    def problems(task: str) -> list[Problem]:
        loaded = load_problems(spec(task))
        if "?" not in task:
            return loaded
        return [replace(p, id=f"rg:{task}:{seed}:{i}", group_id=task) for i, p in enumerate(loaded)]

    return [p for task in tasks for p in problems(task)]


def retention(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] = RETENTION_TASKS,
    *,
    size: int = 50,
    seed: int = 1234,
    problems: Sequence[Problem] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Exact match per non-target task (``groups``) and their macro average; kwargs go to exact match."""
    problems = retention_problems(tasks, size, seed) if problems is None else problems
    return evaluate_exact_match(model, tokenizer, problems, **kwargs)
