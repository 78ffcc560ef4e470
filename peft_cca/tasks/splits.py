"""Seeded per-group splits and the base-accuracy filter of the paper."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from fractions import Fraction

from peft_cca.tasks.problem import Problem

SPLITS = ("train", "validation", "test")
# 26 / 4 / 20 of GSM-Symbolic's 50 instances per template, the paper's split; exact fractions, so that no
# float error can move a problem at a rounding boundary.
DEFAULT_FRACTIONS = (Fraction(26, 50), Fraction(4, 50), Fraction(20, 50))
DEFAULT_ACCURACY_THRESHOLD = 0.8


def _round_half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def split_counts(n: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """How many of ``n`` problems go to train / validation / test (test takes the rounding rest).

    Exactly 26 / 4 / 20 for 50. Rounded to the nearest (the authors floor): on the small groups of an offline
    demo, flooring would leave validation empty (10 problems: 5 / 0 / 5 instead of 5 / 1 / 4).
    """
    train = _round_half_up(n * Fraction(fractions[0]))
    validation = min(_round_half_up(n * Fraction(fractions[1])), n - train)
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
