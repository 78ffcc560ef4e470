"""Pivot tokens: where a right and a wrong trace of the same prompt part ways.

Notation: prompt P, sampled trace s = s[0..m-1] (its correctness differs from the greedy trace's),
c(j) = correctness of the greedy completion of P + s[:j], c(0) = the greedy trace's. All completions share
one token budget: the generated part (prefix tokens plus completion) never exceeds ``max_new_tokens``.

- prefix: the first position where the greedy trace and s differ.
- branching: the first j with c(j) != c(0); the pivot is s[j-1] against the greedy argmax after P + s[:j-1].

Fast branching is exact. If s[i] equals the argmax a[i] after P + s[:i], the greedy completion of
P + s[:i+1] is the greedy completion of P + s[:i], so c(i+1) = c(i): only divergent positions (s[i] != a[i])
can flip. Moreover the greedy completion of P + s[:i+1] follows s up to the next divergent position i' and
then takes a[i']; so it is "P + s[:i'] + a[i'], then greedy". A forward pass over P + s gives every a[i]
and a KV cache whose slices are the caches of all those branch points; it is run lazily, only as far as
the scan reaches, so fast branching never processes more tokens than the naive scan.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from peft_cca.localize.traces import DecodeSettings, Trace
from peft_cca.runtime.generation import TokenCounter, cache_argument, cut_at_stop, generate, stack_caches
from peft_cca.tasks.answers import answer_is_final
from peft_cca.tasks.problem import Problem

BRANCHING_IMPLEMENTATIONS = ("fast", "naive")


@dataclass(frozen=True)
class Pivot:
    """A localized error token: after ``prefix_ids`` the model should say ``desired`` rather than ``undesired``.

    ``position`` is the index of the pivot in the sampled trace (so ``prefix_ids`` = prompt + sample[:position]).
    """

    position: int
    prefix_ids: tuple[int, ...]
    desired_token_id: int
    undesired_token_id: int
    correct_trace: str  # "greedy" or "sample"


def _pivot(prompt: Sequence[int], greedy: Trace, sample: Trace, position: int, sampled: int, argmax: int) -> Pivot:
    """Orient the pair of tokens at ``position``: the token of the right trace is the desired one."""
    desired, undesired = (sampled, argmax) if sample.correct else (argmax, sampled)
    return Pivot(
        position=position,
        prefix_ids=tuple(prompt) + tuple(sample.token_ids[:position]),
        desired_token_id=desired,
        undesired_token_id=undesired,
        correct_trace="sample" if sample.correct else "greedy",
    )


def prefix_pivot(prompt: Sequence[int], greedy: Trace, sample: Trace) -> Pivot | None:
    """First token where the two traces differ (token ids of the same tokenizer); None if one is a prefix
    of the other, which happens only when a trace was cut by the token budget."""
    for position, (g, s) in enumerate(zip(greedy.token_ids, sample.token_ids, strict=False)):
        if g != s:
            return _pivot(prompt, greedy, sample, position, s, g)
    return None


def _ended(tokenizer, generated: Sequence[int], settings: DecodeSettings) -> bool:
    """Whether a partial completion can no longer grow: EOS, a stop string, or an exhausted budget."""
    if len(generated) >= settings.max_new_tokens or (generated and generated[-1] == tokenizer.eos_token_id):
        return True
    text = tokenizer.decode(list(generated), skip_special_tokens=True)
    return cut_at_stop(text, settings.stop_strings)[1]


def _completion_text(tokenizer, generated: Sequence[int], settings: DecodeSettings) -> str:
    return cut_at_stop(tokenizer.decode(list(generated), skip_special_tokens=True), settings.stop_strings)[0]


def branching_pivot_naive(
    model,
    tokenizer,
    problem: Problem,
    prompt: Sequence[int],
    greedy: Trace,
    sample: Trace,
    settings: DecodeSettings,
    counter: TokenCounter | None = None,
) -> Pivot | None:
    """The paper's scan: one full greedy completion, without cache, for every prefix length j = 1, 2, ...
    until the correctness flips. Kept as the baseline of the benchmark and the oracle of the tests."""
    argmax_before = greedy.token_ids[0] if greedy.token_ids else None  # greedy token after P + s[:j-1]
    for j in range(1, len(sample.token_ids) + 1):
        head = list(sample.token_ids[:j])
        if _ended(tokenizer, head, settings):
            text, first = _completion_text(tokenizer, head, settings), None
        else:
            out = generate(
                model,
                tokenizer,
                [list(prompt) + head],
                max_new_tokens=settings.max_new_tokens - j,
                stop_strings=settings.stop_strings,
                completion_starts=[len(prompt)],
                batch_size=1,
                counter=counter,
                counter_kind="naive",
            )[0][0]
            text, first = out.text, (out.token_ids[0] if out.token_ids else None)
        if problem.score(text) != greedy.correct:
            return _pivot(prompt, greedy, sample, j - 1, sample.token_ids[j - 1], argmax_before)
        argmax_before = first
    return None


class _LazyPrefix:
    """The KV cache of P + s, extended only as far as the scan has reached, and the greedy token after every
    prefix it has seen (a[i]: the argmax after P + s[:i]). Lazy so a pivot near the start of s never pays
    for the whole trace: the cache grows in ``chunk``-token steps, and only the logits that give a[i] leave
    the lm_head (``logits_to_keep``).

    The cache is a plain ``DynamicCache`` whose layers keep every position, even for sliding-window models
    (Gemma 2/3): their own cache drops what leaves the window and so cannot be cut back to a shorter prefix.
    The window is still applied, by the attention mask, so the values are the same.
    """

    def __init__(self, model, prompt: Sequence[int], tokens: Sequence[int], counter, chunk: int, prompt_cache=None):
        self.model, self.sequence, self.prompt_len = model, [*prompt, *tokens], len(prompt)
        self.counter, self.chunk = counter, chunk
        # A prompt cache (all of P but its last token, as prefilled for sampling) is extended, never modified.
        layers = [] if prompt_cache is None else [(layer.keys, layer.values) for layer in prompt_cache.layers]
        self.cache = DynamicCache(layers) if layers else DynamicCache()
        self.fed = 0 if prompt_cache is None else len(prompt) - 1
        self.argmax: list[int] = []
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def known(self, i: int) -> bool:
        """Make a[i] known (feeding the model as needed); False past the end of s."""
        while len(self.argmax) <= i:
            if self.fed >= len(self.sequence) - 1:
                return False
            end = min(max(self.fed + self.chunk, self.prompt_len), len(self.sequence) - 1)
            self._feed(end)
        return True

    def _feed(self, end: int) -> None:
        device = next(self.model.parameters()).device
        ids = torch.tensor([self.sequence[self.fed : end]], dtype=torch.long, device=device)
        keep = end - max(self.fed, self.prompt_len - 1)  # positions from len(P)-1 on predict s
        kwargs = {"logits_to_keep": keep} if self.keep_logits else {}
        with torch.no_grad():
            out = self.model(input_ids=ids, use_cache=True, **{cache_argument(self.model): self.cache}, **kwargs)
        self.argmax += out.logits[0, -keep:].argmax(-1).tolist()
        if self.counter is not None:
            self.counter.add(end - self.fed, 0, "fast-prefill")
        self.fed = end


@dataclass(frozen=True)
class _Branch:
    """A greedy completion fast branching asks for: ``generated`` (prefix tokens of s plus a[next]) after the
    prompt, the cache that holds the prompt and all but the last generated token, and who asked."""

    prompt: tuple[int, ...]
    generated: tuple[int, ...]
    cache: DynamicCache
    problem: Problem
    counter: TokenCounter | None


def _fast_scan(
    model,
    tokenizer,
    problem: Problem,
    prompt: Sequence[int],
    greedy: Trace,
    sample: Trace,
    settings: DecodeSettings,
    counter: TokenCounter | None,
    branch_batch: int,
    chunk: int,
    prompt_cache,
    share: Callable[[], int],
) -> Generator[list[_Branch], list[bool], Pivot | None]:
    """Fast branching of one pair as a coroutine: yields the completions it needs, receives their
    correctness, returns the pivot. Lets a driver batch the completions of several problems; ``share()`` is
    how many completions this pair may ask for in the next round (its part of a batch)."""
    tokens = list(sample.token_ids)
    prefix = _LazyPrefix(model, prompt, tokens, counter, chunk, prompt_cache)

    def next_divergent(start: int) -> int | None:
        i = start
        while prefix.known(i):
            if tokens[i] != prefix.argmax[i]:
                return i
            i += 1
        return None

    current = next_divergent(0)
    # Rounds of 1, 2, 4, ... branch_batch positions, never more than the pair's share of a batch: positions
    # past the pivot are wasted work, so a pair speculates only on rows the other pairs leave free.
    size = 1
    while current is not None:
        # The branch of divergent position D[r] leaves s at D[r+1]; past the last one it *is* the sample.
        batch: list[tuple[int, int | None]] = []
        limit = min(size, share())
        while current is not None and len(batch) < limit:
            following = next_divergent(current + 1)
            batch.append((current, following))
            current = following
        size = min(2 * size, branch_batch)
        outcomes: dict[int, bool] = {}
        pending: list[tuple[int, _Branch]] = []
        for i, nxt in batch:
            if nxt is None:
                outcomes[i] = sample.correct
                continue
            generated = (*tokens[:nxt], prefix.argmax[nxt])
            if _ended(tokenizer, generated, settings) or answer_is_final(
                tokenizer.decode(list(generated), skip_special_tokens=True)
            ):
                outcomes[i] = problem.score(_completion_text(tokenizer, generated, settings))
            else:
                pending.append((i, _Branch(tuple(prompt), generated, prefix.cache, problem, counter)))
        if pending:
            answers = yield [branch for _, branch in pending]
            outcomes.update((i, ok) for (i, _), ok in zip(pending, answers, strict=True))
        for i, _ in batch:
            if outcomes[i] != greedy.correct:
                return _pivot(prompt, greedy, sample, i, tokens[i], prefix.argmax[i])
    return None


def _complete(model, tokenizer, branches: Sequence[_Branch], settings: DecodeSettings) -> list[bool]:
    """Greedy completions of branches (of any problems), batched from their cached prefixes, each stopped
    once its answer is final; returns the correctness of each."""
    results: list[bool] = []
    for begin in range(0, len(branches), settings.batch_size):
        batch = branches[begin : begin + settings.batch_size]
        inputs = [[*b.prompt, *b.generated] for b in batch]
        outs = generate(
            model,
            tokenizer,
            inputs,
            max_new_tokens=[settings.max_new_tokens - len(b.generated) for b in batch],
            stop_strings=settings.stop_strings,
            stop_when=answer_is_final,
            completion_starts=[len(b.prompt) for b in batch],
            batch_size=len(batch),
            past_key_values=stack_caches([(b.cache, len(ids) - 1) for b, ids in zip(batch, inputs, strict=True)]),
            counter=[b.counter or TokenCounter() for b in batch],
            counter_kind="fast-branch",
        )
        results += [b.problem.score(out[0].text) for b, out in zip(batch, outs, strict=True)]
    return results


def branching_pivots_fast(
    model,
    tokenizer,
    pairs: Sequence[tuple[Problem, Sequence[int], Trace, Trace]],
    settings: DecodeSettings,
    counters: Sequence[TokenCounter | None] | None = None,
    branch_batch: int = 4,
    chunk: int = 8,
    prompt_caches: Sequence[DynamicCache] | None = None,
) -> list[Pivot | None]:
    """Exact fast branching of several (problem, prompt, greedy, sample) pairs at once: complete only at
    divergent positions, from cached prefixes grown lazily ``chunk`` tokens at a time, 1, 2, 4 ... up to
    ``branch_batch`` positions per pair per round (at most an equal share of ``settings.batch_size`` rows
    among the pairs still scanning), the completions of all pairs batched together (``settings.batch_size``
    rows at most), each stopped once its answer is final. Same pivots as the naive scan. ``prompt_caches``
    (from :func:`~peft_cca.runtime.generation.prefill_caches`, as sampling used them) spare prefilling each prompt."""
    counters = list(counters) if counters is not None else [None] * len(pairs)
    caches = list(prompt_caches) if prompt_caches is not None else [None] * len(pairs)
    running = [len(pairs)]

    def share() -> int:
        return max(settings.batch_size // max(running[0], 1), 1)

    scans = [
        _fast_scan(
            model, tokenizer, problem, prompt, greedy, sample, settings, counter, branch_batch, chunk, cache, share
        )
        for (problem, prompt, greedy, sample), counter, cache in zip(pairs, counters, caches, strict=True)
    ]
    pivots: list[Pivot | None] = [None] * len(pairs)
    requests: dict[int, list[_Branch]] = {}

    def advance(k: int, answers: list[bool] | None) -> None:
        try:
            requests[k] = scans[k].send(answers)
        except StopIteration as stop:
            pivots[k] = stop.value
            running[0] -= 1

    for k in range(len(scans)):
        advance(k, None)
    while requests:
        asked = sorted(requests.items())
        requests.clear()
        answers = _complete(model, tokenizer, [b for _, branches in asked for b in branches], settings)
        for k, branches in asked:
            advance(k, answers[: len(branches)])
            answers = answers[len(branches) :]
    return pivots


def branching_pivot_fast(
    model,
    tokenizer,
    problem: Problem,
    prompt: Sequence[int],
    greedy: Trace,
    sample: Trace,
    settings: DecodeSettings,
    counter: TokenCounter | None = None,
    branch_batch: int = 4,
    chunk: int = 8,
    prompt_cache: DynamicCache | None = None,
) -> Pivot | None:
    """:func:`branching_pivots_fast` of one pair."""
    pair = [(problem, prompt, greedy, sample)]
    caches = None if prompt_cache is None else [prompt_cache]
    return branching_pivots_fast(model, tokenizer, pair, settings, [counter], branch_batch, chunk, caches)[0]
