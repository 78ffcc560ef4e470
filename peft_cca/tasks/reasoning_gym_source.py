"""Problems from reasoning-gym: offline, seeded generators scored by reasoning-gym's own scorers."""

from __future__ import annotations

from typing import Any

from peft_cca.tasks.answers import extract_number, extract_text, parse_number
from peft_cca.tasks.problem import Problem


def _group_of(name: str, dataset: Any, index: int) -> str:
    """The template of a problem: gsm_symbolic entries come from one of 100 generators, others from one task."""
    generators = getattr(dataset, "task_indices", None)
    if generators is not None:
        return f"{name}/{generators[index]}"
    return name


def _make_scorer(dataset: Any, entry: dict[str, Any]):
    """Extract the candidate answer our way (numbers or text), then ask reasoning-gym whether it is right."""
    numeric = parse_number(str(entry["answer"])) is not None

    def scorer(completion: str) -> bool:
        candidate = extract_number(completion) if numeric else extract_text(completion)
        if candidate is None:
            return False
        return float(dataset.score_answer(candidate, entry)) >= 1.0

    return scorer


def load_reasoning_gym(name: str, size: int, seed: int, **config: Any) -> list[Problem]:
    """``size`` problems of task ``name`` generated with ``seed`` and reasoning-gym config ``config``."""
    import reasoning_gym  # here, not at the top: the CLI imports the spec docs and must start fast

    from peft_cca.errors import UsageError

    try:
        dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(
            f"rg:{name}: reasoning-gym refused the task or its config ({error}); check the spec"
        ) from error
    problems = []
    for index in range(size):
        entry = dataset[index]
        problems.append(
            Problem(
                id=f"rg:{name}:{seed}:{index}",
                group_id=_group_of(name, dataset, index),
                question=entry["question"],
                answer=str(entry["answer"]),
                source=f"rg:{name}",
                scorer=_make_scorer(dataset, entry),
                metadata={"rg_metadata": entry.get("metadata", {})},
            )
        )
    return problems
