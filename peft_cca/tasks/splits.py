"""Seeded per-group splits and the base-accuracy filter of the paper."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping

from peft_cca.tasks.problem import Problem

SPLITS = ("train", "validation", "test")
# 26 / 4 / 20 of GSM-Symbolic's 50 instances per template.
DEFAULT_FRACTIONS = (0.52, 0.08, 0.40)
DEFAULT_ACCURACY_THRESHOLD = 0.8


def split_counts(n: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """How many of ``n`` problems go to train / validation / test (test takes the rounding rest)."""
    train = round(n * fractions[0])
    validation = min(round(n * fractions[1]), n - train)
    return train, validation, n - train - validation


def assign_splits(
    problems: Iterable[Problem], seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
    """``problem.id -> split``, shuffled within each group with a seed that depends only on (seed, group),
    so adding or removing other groups never moves a problem to another split."""
    groups: dict[str, list[str]] = defaultdict(list)
    for problem in problems:
        groups[problem.group_id].append(problem.id)
    assignment: dict[str, str] = {}
    for group, ids in groups.items():
        order = sorted(ids)
        random.Random(f"{seed}:{group}").shuffle(order)
        train, validation, _ = split_counts(len(order), fractions)
        for position, problem_id in enumerate(order):
            assignment[problem_id] = (
                "train" if position < train else ("validation" if position < train + validation else "test")
            )
    return assignment


def groups_below(accuracy: Mapping[str, float], threshold: float = DEFAULT_ACCURACY_THRESHOLD) -> set[str]:
    """Groups whose base accuracy is under ``threshold``: the only ones the paper trains on."""
    return {group for group, value in accuracy.items() if value < threshold}
