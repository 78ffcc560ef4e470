"""Greedy traces and sampled counterfactual traces of a model on problems."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from peft_cca.generation import TokenCounter, generate
from peft_cca.tasks.problem import Problem

# The authors sample at T=0.8 to find a right trace when greedy is wrong, at T=1.2 to find a wrong one.
TEMPERATURE_WHEN_GREEDY_WRONG = 0.8
TEMPERATURE_WHEN_GREEDY_RIGHT = 1.2


@dataclass(frozen=True)
class Trace:
    """A completion as token ids (through EOS when produced), its scored text and its correctness."""

    token_ids: tuple[int, ...]
    text: str
    correct: bool


@dataclass(frozen=True)
class DecodeSettings:
    """What every completion of one run shares, so naive and fast branching complete prefixes alike."""

    max_new_tokens: int = 96
    stop_strings: tuple[str, ...] = ()
    batch_size: int = 8


def problem_seed(problem_id: str, seed: int) -> int:
    """A per-problem seed, so a problem's samples do not depend on which other problems ran before it."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def greedy_traces(
    model,
    tokenizer,
    problems: Sequence[Problem],
    prompts: Sequence[Sequence[int]],
    settings: DecodeSettings,
    counter: TokenCounter | None = None,
) -> list[Trace]:
    """The greedy trace of each problem, batched."""
    generations = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        stop_strings=settings.stop_strings,
        batch_size=settings.batch_size,
        counter=counter,
        counter_kind="greedy",
    )
    return [
        Trace(tuple(g[0].token_ids), g[0].text, problem.score(g[0].text))
        for problem, g in zip(problems, generations, strict=True)
    ]


def counterfactual(
    model,
    tokenizer,
    problem: Problem,
    prompt: Sequence[int],
    greedy: Trace,
    settings: DecodeSettings,
    n_samples: int = 10,
    seed: int = 0,
    counter: TokenCounter | None = None,
) -> Trace | None:
    """The first of ``n_samples`` sampled traces whose correctness differs from the greedy one, or None."""
    temperature = TEMPERATURE_WHEN_GREEDY_RIGHT if greedy.correct else TEMPERATURE_WHEN_GREEDY_WRONG
    samples = generate(
        model,
        tokenizer,
        [prompt],
        max_new_tokens=settings.max_new_tokens,
        temperature=temperature,
        num_samples=n_samples,
        stop_strings=settings.stop_strings,
        seed=problem_seed(problem.id, seed),
        batch_size=1,
        counter=counter,
        counter_kind="sample",
    )[0]
    for sample in samples:
        correct = problem.score(sample.text)
        if correct != greedy.correct:
            return Trace(tuple(sample.token_ids), sample.text, correct)
    return None
