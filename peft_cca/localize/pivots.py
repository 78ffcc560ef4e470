"""Pivot tokens: where a right and a wrong trace of the same prompt part ways.

Notation: prompt P, sampled trace s = s[0..m-1] (its correctness differs from the greedy trace's),
c(j) = correctness of the greedy completion of P + s[:j], c(0) = the greedy trace's. All completions share
one token budget: the generated part (prefix tokens plus completion) never exceeds ``max_new_tokens``.

- prefix: the first position where the greedy trace and s differ.
- branching: the first j with c(j) != c(0); the pivot is s[j-1] against the greedy argmax after P + s[:j-1].

Fast branching is exact. If s[i] equals the argmax a[i] after P + s[:i], the greedy completion of
P + s[:i+1] is the greedy completion of P + s[:i], so c(i+1) = c(i): only divergent positions (s[i] != a[i])
can flip. Moreover the greedy completion of P + s[:i+1] follows s up to the next divergent position i' and
then takes a[i']; so it is "P + s[:i'] + a[i'], then greedy". One forward pass over P + s gives every a[i]
and a KV cache whose slices are the caches of all those branch points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from peft_cca.generation import TokenCounter, cut_at_stop, generate
from peft_cca.localize.traces import DecodeSettings, Trace
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


def _argmax_and_cache(model, sequence: Sequence[int], counter: TokenCounter | None):
    """One forward pass: the greedy token after every prefix of ``sequence``, and its KV cache.

    The cache is a plain ``DynamicCache`` whose layers keep every position, even for sliding-window models
    (Gemma 2/3): their own cache drops what leaves the window and so cannot be cut back to a shorter prefix.
    The window is still applied, by the attention mask, so the values are the same.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(sequence)], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    if counter is not None:
        counter.add(len(sequence), 0, "fast-prefill")
    return out.logits[0].argmax(-1).tolist(), out.past_key_values


def _sliceable(cache) -> bool:
    """Only full layers can be cut at any length; any other cache (a model's own kind) falls back to prefill."""
    layers = getattr(cache, "layers", None)
    return layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _branch_cache(cache, lengths: Sequence[int]) -> DynamicCache:
    """A left-padded batch cache whose row r holds the first ``lengths[r]`` positions of ``cache``.

    Padded slots are zeros and masked out; real slots keep the rotary positions 0..n-1 they were computed
    with, which is what generate's attention-mask-derived positions give them too.
    """
    width = max(lengths)
    data = []
    for layer in cache.layers:
        rows_k, rows_v = [], []
        for n in lengths:
            pad = (0, 0, width - n, 0)
            rows_k.append(torch.nn.functional.pad(layer.keys[:, :, :n], pad))
            rows_v.append(torch.nn.functional.pad(layer.values[:, :, :n], pad))
        data.append((torch.cat(rows_k), torch.cat(rows_v)))
    return DynamicCache(data)


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
) -> Pivot | None:
    """Exact fast branching: complete only at divergent positions, from cached prefixes, in batches of
    ``branch_batch``, stopping each completion once its answer is final. Same pivot as the naive scan."""
    tokens = list(sample.token_ids)
    argmax, cache = _argmax_and_cache(model, list(prompt) + tokens, counter)
    # a[i]: greedy token after P + s[:i]; logits at position len(P)+i-1 predict s[i].
    a = argmax[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
    divergent = [i for i, (s, g) in enumerate(zip(tokens, a, strict=True)) if s != g]
    # The branch of divergent position D[r] leaves s at D[r+1]; past the last one it *is* the sample.
    for begin in range(0, len(divergent), branch_batch):
        batch = divergent[begin : begin + branch_batch]
        outcomes: dict[int, bool] = {}
        pending: list[tuple[int, list[int]]] = []
        for r, i in enumerate(batch, start=begin):
            if r + 1 == len(divergent):
                outcomes[i] = sample.correct
                continue
            nxt = divergent[r + 1]
            generated = [*tokens[:nxt], a[nxt]]
            if _ended(tokenizer, generated, settings) or answer_is_final(
                tokenizer.decode(generated, skip_special_tokens=True)
            ):
                outcomes[i] = problem.score(_completion_text(tokenizer, generated, settings))
            else:
                pending.append((i, generated))
        if pending:
            inputs = [list(prompt) + generated for _, generated in pending]
            # Each branch's cache is the shared forward pass's cache cut before its last input token.
            branch_cache = _branch_cache(cache, [len(ids) - 1 for ids in inputs]) if _sliceable(cache) else None
            outs = generate(
                model,
                tokenizer,
                inputs,
                max_new_tokens=[settings.max_new_tokens - len(g) for _, g in pending],
                stop_strings=settings.stop_strings,
                stop_when_final=True,
                completion_starts=[len(prompt)] * len(inputs),
                batch_size=len(inputs),
                past_key_values=branch_cache,
                counter=counter,
                counter_kind="fast-branch",
            )
            for (i, _), out in zip(pending, outs, strict=True):
                outcomes[i] = problem.score(out[0].text)
        for i in batch:
            if outcomes[i] != greedy.correct:
                return _pivot(prompt, greedy, sample, i, tokens[i], a[i])
    return None
