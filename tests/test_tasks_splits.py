from collections import Counter

from peft_cca.tasks.problem import Problem
from peft_cca.tasks.splits import assign_splits, groups_below, split_counts


def _problems(groups: int, per_group: int) -> list[Problem]:
    return [
        Problem(id=f"{g}:{i}", group_id=str(g), question="q", answer="1")
        for g in range(groups)
        for i in range(per_group)
    ]


def test_gsm_symbolic_counts():
    assert split_counts(50) == (26, 4, 20)
    assignment = assign_splits(_problems(3, 50), seed=0)
    for g in range(3):
        counts = Counter(assignment[f"{g}:{i}"] for i in range(50))
        assert counts == {"train": 26, "validation": 4, "test": 20}


def test_splits_are_seeded_and_per_group():
    problems = _problems(2, 50)
    a, b = assign_splits(problems, seed=0), assign_splits(problems, seed=0)
    assert a == b
    assert a != assign_splits(problems, seed=1)
    # removing a group never moves the problems of another group
    only_first = assign_splits(problems[:50], seed=0)
    assert all(only_first[k] == a[k] for k in only_first)


def test_accuracy_filter():
    assert groups_below({"a": 0.5, "b": 0.8, "c": 0.95}) == {"a"}
    assert groups_below({"a": 0.5, "b": 0.8}, threshold=0.9) == {"a", "b"}


def test_split_counts_are_exact_and_complete():
    assert split_counts(50) == (26, 4, 20)
    assert split_counts(100) == (52, 8, 40)
    assert split_counts(10) == (5, 1, 4)
    for n in range(0, 120):
        train, validation, test = split_counts(n)
        assert min(train, validation, test) >= 0 and train + validation + test == n
    assert split_counts(50, (0.5, 0.1, 0.4)) == (25, 5, 20)  # float fractions still work
