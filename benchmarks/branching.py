"""Naive (the paper's scan) against fast (exact, cached, divergent positions only) branching, same pairs.

Real traces of SmolLM2-135M-Instruct on an offline reasoning-gym task it gets partly right, with the CLI's
default chat prompt. For each (greedy, counterfactual) pair both implementations locate the pivot; we
count the tokens the model processed (prefill + decode) and the wall time of each. As in ``localize``, fast
branching locates the pivots of all pairs in one call (their completions batched together) and starts from
the prompt cache that sampling prefilled (the prompt is processed once per problem
whatever the method); ``with_prompt`` charges that prefill to fast branching anyway.

    python benchmarks/branching.py [--pairs 8] [--task SPEC] [--max-new-tokens 64]

Last line: branching_token_ratio=<naive/fast tokens> with_prompt=<naive/(fast + prompt) tokens>
wall_ratio=<naive/fast seconds> identical_pivots=<k>/<n>
"""

from __future__ import annotations

import argparse
import time

import torch

from peft_cca.generation import TokenCounter, prefill_caches
from peft_cca.localize.pivots import branching_pivot_naive, branching_pivots_fast
from peft_cca.localize.traces import DecodeSettings, counterfactuals, greedy_traces
from peft_cca.models import load_model
from peft_cca.tasks import build_prompt, encode_prompt, load_problems, stop_strings

# Sums of two one-digit numbers: the model gets 22-28% right (README) and writes traces of ~60 tokens, so
# pivots sit deep enough in the trace for the scan's cost to show.
DEFAULT_TASK = "rg:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=1&operators=+&size=200&seed=5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8, help="(greedy, counterfactual) pairs to compare (>= 8)")
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--n-samples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    settings = DecodeSettings(args.max_new_tokens, stop_strings("chat"), batch_size=8)
    problems = load_problems(args.task)
    pairs: list = []  # (problem, prompt, greedy, sample, prompt cache)
    seen = right = 0
    for begin in range(0, len(problems), settings.batch_size):
        chunk = problems[begin : begin + settings.batch_size]
        prompts = [encode_prompt(tokenizer, build_prompt(tokenizer, p, "chat")) for p in chunk]
        traces = greedy_traces(model, tokenizer, chunk, prompts, settings)
        caches = prefill_caches(model, prompts, batch_size=settings.batch_size)
        for problem, prompt, greedy, cache in zip(chunk, prompts, traces, caches, strict=True):
            if len(pairs) >= args.pairs:
                break
            seen += 1
            right += greedy.correct
            sample = counterfactuals(
                model, tokenizer, [problem], [prompt], [greedy], settings, args.n_samples, args.seed, None, [cache]
            )[0]
            if sample is not None:
                pairs.append((problem, prompt, greedy, sample, cache))
        if len(pairs) >= args.pairs:
            break
    # Naive: the paper's scan, one pair after another. Fast: all pairs in one call, as ``localize`` runs it.
    naive_counts = [TokenCounter() for _ in pairs]
    start = time.perf_counter()
    naive = [
        branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, settings, count)
        for (problem, prompt, greedy, sample, _), count in zip(pairs, naive_counts, strict=True)
    ]
    middle = time.perf_counter()
    fast_counts = [TokenCounter() for _ in pairs]
    fast = branching_pivots_fast(
        model,
        tokenizer,
        [pair[:4] for pair in pairs],
        settings,
        fast_counts,
        prompt_caches=[pair[4] for pair in pairs],
    )
    end = time.perf_counter()
    for k, ((problem, _, greedy, sample, _), n, f) in enumerate(zip(pairs, naive, fast, strict=True)):
        print(
            f"pair {k + 1}: {problem.id} greedy_correct={greedy.correct} sample_len={len(sample.token_ids)} "
            f"pivot naive={n and n.position} fast={f and f.position} "
            f"tokens {naive_counts[k].total}/{fast_counts[k].total}"
        )
    naive_tokens = sum(c.total for c in naive_counts)
    fast_tokens = sum(c.total for c in fast_counts)
    prompt_tokens = sum(len(pair[1]) - 1 for pair in pairs)
    naive_wall, fast_wall = middle - start, end - middle
    identical = sum(n == f for n, f in zip(naive, fast, strict=True))
    print(f"greedy accuracy on the {seen} problems seen: {right / max(seen, 1):.2f}")
    print(
        f"branching_token_ratio={naive_tokens / max(fast_tokens, 1):.1f} "
        f"with_prompt={naive_tokens / max(fast_tokens + prompt_tokens, 1):.1f} "
        f"wall_ratio={naive_wall / max(fast_wall, 1e-9):.1f} identical_pivots={identical}/{len(pairs)}"
    )


if __name__ == "__main__":
    main()
