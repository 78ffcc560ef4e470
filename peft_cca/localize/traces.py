"""Greedy traces and sampled counterfactual traces of a model on problems."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from peft_cca.runtime.generation import TokenCounter, generate
from peft_cca.tasks.problem import Problem

# The authors sample at T=0.8 to find a right trace when greedy is wrong, at T=1.2 to find a wrong one;
# their shipped path samples with transformers' defaults top-k=50, top-p=1.0.
TEMPERATURE_WHEN_GREEDY_WRONG = 0.8
TEMPERATURE_WHEN_GREEDY_RIGHT = 1.2
TOP_K = 50
TOP_P = 1.0


@dataclass(frozen=True)
class Trace:
    """A completion as token ids (through EOS when produced), its scored text and its correctness."""

    token_ids: tuple[int, ...]
    text: str
    correct: bool


@dataclass(frozen=True)
class DecodeSettings:
    """What every completion of one run shares, so naive and fast branching complete prefixes alike.

    ``batch_size`` caps the inputs of one generation batch and ``batch_tokens`` (None: no cap) its padded
    tokens; the sampling settings apply to counterfactual samples.
    """

    max_new_tokens: int = 96
    stop_strings: tuple[str, ...] = ()
    batch_size: int = 8
    batch_tokens: int | None = None
    temperature_when_greedy_wrong: float = TEMPERATURE_WHEN_GREEDY_WRONG
    temperature_when_greedy_right: float = TEMPERATURE_WHEN_GREEDY_RIGHT
    top_k: int | None = TOP_K
    top_p: float = TOP_P


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
    """The greedy trace of each problem, batched by length under the token budget."""
    generations = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=settings.max_new_tokens,
        stop_strings=settings.stop_strings,
        batch_size=settings.batch_size,
        batch_tokens=settings.batch_tokens,
        counter=counter,
        counter_kind="greedy",
    )
    return [
        Trace(tuple(g[0].token_ids), g[0].text, problem.score(g[0].text))
        for problem, g in zip(problems, generations, strict=True)
    ]


def counterfactuals(
    model,
    tokenizer,
    problems: Sequence[Problem],
    prompts: Sequence[Sequence[int]],
    greedy: Sequence[Trace],
    settings: DecodeSettings,
    n_samples: int = 10,
    seed: int = 0,
    counters: Sequence[TokenCounter] | None = None,
    prompt_caches: Sequence | None = None,
) -> list[Trace | None]:
    """For each problem, the first of ``n_samples`` sampled traces whose correctness differs from its greedy
    trace, or None. Problems are sampled together (one batch per temperature), each prompt prefilled once
    (or taken from ``prompt_caches``, see :func:`~peft_cca.runtime.generation.prefill_caches`); a problem's draws
    depend only on its id and ``seed``, never on its batch."""
    found: list[Trace | None] = [None] * len(problems)
    for right in (False, True):
        index = [i for i, trace in enumerate(greedy) if trace.correct == right]
        if not index or n_samples <= 0:
            continue
        samples = generate(
            model,
            tokenizer,
            [prompts[i] for i in index],
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature_when_greedy_right if right else settings.temperature_when_greedy_wrong,
            top_k=settings.top_k,
            top_p=settings.top_p,
            num_samples=n_samples,
            stop_strings=settings.stop_strings,
            seed=[problem_seed(problems[i].id, seed) for i in index],
            batch_size=settings.batch_size,
            batch_tokens=settings.batch_tokens,
            prompt_caches=None if prompt_caches is None else [prompt_caches[i] for i in index],
            counter=None if counters is None else [counters[i] for i in index],
            counter_kind="sample",
        )
        for i, drawn in zip(index, samples, strict=True):
            for sample in drawn:
                correct = problems[i].score(sample.text)
                if correct != right:
                    found[i] = Trace(tuple(sample.token_ids), sample.text, correct)
                    break
    return found


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
    """:func:`counterfactuals` of one problem."""
    counters = None if counter is None else [counter]
    return counterfactuals(model, tokenizer, [problem], [prompt], [greedy], settings, n_samples, seed, counters)[0]
