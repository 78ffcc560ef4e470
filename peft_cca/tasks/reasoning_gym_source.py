"""Problems from reasoning-gym: offline, seeded generators scored by reasoning-gym's own scorers."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
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


# reasoning-gym's configs take any value (chain_sum?min_terms=10**7 would build a ten-million-term question), and
# some tasks legitimately take large ones (count_bits max_n=2**31), so no bound on the values fits every task: the
# time spent generating is bounded instead, generously (a hundred items of any task take well under a second).
SECONDS = 10.0
SECONDS_PER_ITEM = 0.5
# reasoning-gym validates configs with assert and fails inside items with whatever its code raises
_GENERATOR_ERRORS = (AssertionError, ArithmeticError, KeyError, IndexError, TypeError, ValueError, RecursionError)


class _OutOfTimeError(Exception):
    """The generation time budget ran out."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_OutOfTimeError` in the block after ``seconds`` (a real-time timer; no limit off the main thread,
    where signals cannot be delivered, or where the platform has no ``setitimer``)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _OutOfTimeError

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load_reasoning_gym(name: str, size: int, seed: int, **config: Any) -> list[Problem]:
    """``size`` problems of task ``name`` generated with ``seed`` and reasoning-gym config ``config``."""
    import reasoning_gym  # here, not at the top: the CLI imports the spec docs and must start fast

    from peft_cca.errors import UsageError

    budget = SECONDS + SECONDS_PER_ITEM * size
    try:
        with _time_limit(budget):
            dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **config)
            entries = [dataset[index] for index in range(size)]
    except _GENERATOR_ERRORS as error:
        raise UsageError(
            f"rg:{name}: reasoning-gym refused the task or its config ({type(error).__name__}: {error}); "
            "check the spec's options against the task's config"
        ) from None
    except _OutOfTimeError:
        raise UsageError(
            f"rg:{name}: generating {size} items took over {budget:g} s; lower the config values in the spec"
        ) from None
    problems = []
    for index, entry in enumerate(entries):
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
