"""Pivot logic on a tiny random model, against a brute-force oracle and on hand-built traces."""

import pytest
import torch
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.localize.pivots import branching_pivot_fast, branching_pivot_naive, prefix_pivot
from peft_cca.localize.traces import DecodeSettings, Trace, counterfactual, greedy_traces
from peft_cca.runtime.generation import TokenCounter, generate
from peft_cca.tasks.problem import Problem

SETTINGS = DecodeSettings(max_new_tokens=14)


@pytest.fixture(scope="module", params=["llama", "gemma3_text"])
def lm(request):
    """Full attention, and sliding-window attention whose own cache drops what falls out of the window."""
    seed = {"llama": 3, "gemma3_text": 4}[request.param]  # weights whose samples do flip correctness
    return tiny_model(request.param, seed=seed), tiny_tokenizer()


def _problem(name: str) -> Problem:
    # correctness depends on the whole completion, so flips can happen anywhere in a trace
    return Problem(
        id=name, group_id="g", question="q", answer="0", scorer=lambda text: sum(c in "aeiou" for c in text) >= 2
    )


def test_prefix_pivot_on_constructed_traces():
    prompt = [5, 6]
    greedy = Trace((10, 11, 12, 13), "x", False)
    sample = Trace((10, 11, 20, 21), "y", True)
    pivot = prefix_pivot(prompt, greedy, sample)
    assert pivot.position == 2 and pivot.prefix_ids == (5, 6, 10, 11)
    assert (pivot.desired_token_id, pivot.undesired_token_id, pivot.correct_trace) == (20, 12, "sample")
    flipped = prefix_pivot(prompt, Trace(greedy.token_ids, "x", True), Trace(sample.token_ids, "y", False))
    assert (flipped.desired_token_id, flipped.undesired_token_id, flipped.correct_trace) == (12, 20, "greedy")
    assert prefix_pivot(prompt, greedy, Trace((10, 11), "z", True)) is None


def _oracle(model, tokenizer, problem, prompt, greedy, sample):
    """Brute force: complete every prefix without cache, take the first flip of correctness."""
    for j in range(1, len(sample.token_ids) + 1):
        head = list(sample.token_ids[:j])
        done = head[-1] == tokenizer.eos_token_id or j >= SETTINGS.max_new_tokens
        text = (
            tokenizer.decode(head, skip_special_tokens=True)
            if done
            else generate(
                model,
                tokenizer,
                [list(prompt) + head],
                max_new_tokens=SETTINGS.max_new_tokens - j,
                completion_starts=[len(prompt)],
            )[0][0].text
        )
        if problem.score(text) != greedy.correct:
            return j - 1
    return None


def test_naive_and_fast_branching_agree_with_the_oracle(lm):
    model, tokenizer = lm
    checked = 0
    for q in range(8):
        problem = _problem(f"p{q}")
        prompt = tokenizer(f"question {q}: ", add_special_tokens=False)["input_ids"]
        greedy = greedy_traces(model, tokenizer, [problem], [prompt], SETTINGS)[0]
        sample = counterfactual(model, tokenizer, problem, prompt, greedy, SETTINGS, n_samples=8, seed=q)
        if sample is None:
            continue
        naive_count, fast_count = TokenCounter(), TokenCounter()
        naive = branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, SETTINGS, naive_count)
        fast = branching_pivot_fast(
            model, tokenizer, problem, prompt, greedy, sample, SETTINGS, fast_count, branch_batch=3
        )
        assert naive == fast
        assert fast.position == _oracle(model, tokenizer, problem, prompt, greedy, sample)
        # the pivot token is where the sample left the greedy argmax, and it is oriented by correctness
        sampled = sample.token_ids[fast.position]
        assert fast.desired_token_id != fast.undesired_token_id
        assert sampled == (fast.desired_token_id if sample.correct else fast.undesired_token_id)
        checked += 1
    assert checked >= 3


def test_branching_never_searches_past_the_first_flip(lm):
    model, tokenizer = lm
    problem = Problem(id="first", group_id="g", question="q", answer="0", scorer=lambda text: True)
    prompt = tokenizer("hello: ", add_special_tokens=False)["input_ids"]
    greedy = Trace(tuple(greedy_traces(model, tokenizer, [problem], [prompt], SETTINGS)[0].token_ids), "g", False)
    # every completion is "right" while greedy is "wrong": the first divergent position must be the pivot
    logits = model(torch.tensor([prompt + list(greedy.token_ids)])).logits[0].argmax(-1).tolist()
    alt = (logits[len(prompt) - 1] + 1) % 90 + 4
    sample = Trace((alt, *greedy.token_ids[1:]), "s", True)
    counter = TokenCounter()
    pivot = branching_pivot_fast(model, tokenizer, problem, prompt, greedy, sample, SETTINGS, counter, branch_batch=1)
    assert pivot.position == 0 and pivot.desired_token_id == alt
    assert counter.by_kind.get("fast-branch", 0) <= len(prompt) + SETTINGS.max_new_tokens


def test_cached_generation_equals_plain_generation(lm):
    model, tokenizer = lm
    from peft_cca.localize.pivots import _LazyPrefix
    from peft_cca.runtime.generation import stack_caches

    prompt = tokenizer("abc: ", add_special_tokens=False)["input_ids"]
    trace = greedy_traces(model, tokenizer, [_problem("c")], [prompt], SETTINGS)[0].token_ids
    prefix = _LazyPrefix(model, prompt, trace, None, chunk=3)
    assert prefix.known(6)
    inputs = [list(prompt) + list(trace[:3]), list(prompt) + list(trace[:7])]
    cached = generate(
        model,
        tokenizer,
        inputs,
        max_new_tokens=6,
        past_key_values=stack_caches([(prefix.cache, len(i) - 1) for i in inputs]),
        batch_size=2,
    )
    plain = [generate(model, tokenizer, [i], max_new_tokens=6)[0] for i in inputs]
    assert [c[0].token_ids for c in cached] == [p[0].token_ids for p in plain]


def test_pairs_batched_together_equal_one_by_one_and_speculate_less(lm):
    """Several pairs in one call give each pair's naive pivot, and with the batch shared among them no pair
    completes more positions (or processes more tokens) than it does alone."""
    from peft_cca.localize.pivots import branching_pivots_fast

    model, tokenizer = lm
    pairs = []
    for q in range(8):
        problem = _problem(f"p{q}")
        prompt = tokenizer(f"question {q}: ", add_special_tokens=False)["input_ids"]
        greedy = greedy_traces(model, tokenizer, [problem], [prompt], SETTINGS)[0]
        sample = counterfactual(model, tokenizer, problem, prompt, greedy, SETTINGS, n_samples=8, seed=q)
        if sample is not None:
            pairs.append((problem, prompt, greedy, sample))
    assert len(pairs) >= 3
    together = [TokenCounter() for _ in pairs]
    pivots = branching_pivots_fast(model, tokenizer, pairs, SETTINGS, together, branch_batch=4)
    for (problem, prompt, greedy, sample), pivot, counter in zip(pairs, pivots, together, strict=True):
        alone = TokenCounter()
        assert pivot == branching_pivot_fast(model, tokenizer, problem, prompt, greedy, sample, SETTINGS, alone)
        assert pivot == branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, SETTINGS)
        assert counter.total <= alone.total


def test_argmax_pass_keeps_only_the_logits_it_needs(lm):
    """The lazy prefix projects one logit row per sample position (none for the prompt), and its argmax
    equals that of a plain full forward over prompt + sample."""
    from peft_cca.localize.pivots import _LazyPrefix

    model, tokenizer = lm
    prompt = tokenizer("question 3: ", add_special_tokens=False)["input_ids"]
    sample = greedy_traces(model, tokenizer, [_problem("k")], [prompt], SETTINGS)[0].token_ids
    rows: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda module, args, output: rows.append(output.shape[1]))
    try:
        prefix = _LazyPrefix(model, prompt, sample, None, chunk=4)
        assert prefix.known(len(sample) - 1) and not prefix.known(len(sample))
    finally:
        handle.remove()
    assert sum(rows) == len(sample) and len(rows) > 1
    with torch.no_grad():
        plain = model(torch.tensor([list(prompt) + list(sample)])).logits[0, len(prompt) - 1 : -1].argmax(-1)
    assert prefix.argmax == plain.tolist()
