"""Naive (the paper's scan) against fast (exact, cached, divergent positions only) branching, same pairs.

Real traces of SmolLM2-135M-Instruct on an offline reasoning-gym task it gets partly right, under two prompts:

- ``paper``: the authors' 8-shot prompt (about 820 tokens), the prompt of the paper's protocol;
- ``chat``: the tokenizer's chat template around the bare question (about 40 tokens), the CPU demo's prompt.

For each (greedy, counterfactual) pair both implementations locate the pivot; we count the tokens the model
processed (prefill + decode) and the wall time of each. As in ``localize``, fast branching locates the pivots of
all pairs in one call (their completions batched together) and starts from the prompt cache that sampling
prefilled (the prompt is processed once per problem whatever the method); ``with_prompt`` charges that prefill
to fast branching anyway. The paper's scan reprocesses the prompt for every prefix it completes, so the longer
the prompt, the more fast branching saves; with a short prompt the saving comes from the positions where the
sample follows the greedy argmax (skipped) and from the completions stopped at their final answer.

GSM-Symbolic itself is out of a 135M model's reach (with the authors' prompt and 256-token traces it got none
of the first 8 problems right, in 5.5 minutes on two cores), so both workloads use single-digit sums.

    python benchmarks/branching.py [--workload paper chat] [--pairs 8] [--json FILE]

Last line: branching_token_ratio=<naive/fast tokens> with_prompt=<naive/(fast + prompt) tokens>
wall_ratio=<naive/fast seconds> identical_pivots=<k>/<n> for the paper workload (the first one run), then
chat_token_ratio=... and the rest for the chat workload when it ran.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from peft_cca.localize.pivots import branching_pivot_naive, branching_pivots_fast
from peft_cca.localize.traces import DecodeSettings, counterfactuals, greedy_traces
from peft_cca.runtime.generation import TokenCounter, prefill_caches
from peft_cca.runtime.loading import load_model
from peft_cca.runtime.runfolder import atomic_write_json
from peft_cca.tasks import build_prompt, encode_prompt, load_problems, stop_strings
from peft_cca.tasks.protocol import PAPER

# Sums of two one-digit numbers: the model gets some right under either prompt and its traces are long enough
# (up to the token budget) for pivots to sit deep in them.
DEFAULT_TASK = "rg:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=1&operators=+&size=200&seed=5"


@dataclass(frozen=True)
class Workload:
    """A prompt style and the token budget of its traces."""

    prompt_style: str
    max_new_tokens: int


WORKLOADS = {
    "paper": Workload(PAPER.prompt_style, 96),  # the sampler below is the paper's in both workloads
    "chat": Workload("chat", 64),
}


def collect_pairs(model, tokenizer, problems, settings: DecodeSettings, style: str, args) -> tuple[list, int, int]:
    """The first ``args.pairs`` (problem, prompt, greedy, sample, prompt cache) pairs, found as ``localize``
    finds them (greedy traces, then samples from the shared prompt caches); also the problems seen and the
    number the greedy trace got right."""
    pairs: list = []
    seen = right = 0
    for begin in range(0, len(problems), settings.batch_size):
        chunk = problems[begin : begin + settings.batch_size]
        prompts = [encode_prompt(tokenizer, build_prompt(tokenizer, p, style)) for p in chunk]
        traces = greedy_traces(model, tokenizer, chunk, prompts, settings)
        caches = prefill_caches(model, prompts, batch_size=settings.batch_size)
        samples = counterfactuals(
            model, tokenizer, chunk, prompts, traces, settings, args.n_samples, args.seed, None, caches
        )
        for problem, prompt, greedy, cache, sample in zip(chunk, prompts, traces, caches, samples, strict=True):
            seen += 1
            right += greedy.correct
            if sample is not None and len(pairs) < args.pairs:
                pairs.append((problem, prompt, greedy, sample, cache))
        print(f"  {seen} problems, {right} greedy right, {len(pairs)} pairs", flush=True)
        if len(pairs) >= args.pairs:
            break
    return pairs, seen, right


def compare(model, tokenizer, pairs: list, settings: DecodeSettings) -> dict:
    """Naive (the paper's scan, one pair after another) against fast (all pairs in one call, as ``localize``
    runs it) on the same pairs: tokens, seconds, and whether the pivots agree."""
    naive_counts = [TokenCounter() for _ in pairs]
    start = time.perf_counter()
    naive = [
        branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, settings, count)
        for (problem, prompt, greedy, sample, _), count in zip(pairs, naive_counts, strict=True)
    ]
    middle = time.perf_counter()
    fast_counts = [TokenCounter() for _ in pairs]
    fast = branching_pivots_fast(
        model, tokenizer, [pair[:4] for pair in pairs], settings, fast_counts, prompt_caches=[p[4] for p in pairs]
    )
    end = time.perf_counter()
    rows = []
    for (problem, prompt, greedy, sample, _), n, f, nc, fc in zip(
        pairs, naive, fast, naive_counts, fast_counts, strict=True
    ):
        rows.append(
            {
                "problem": problem.id,
                "greedy_correct": greedy.correct,
                "prompt_tokens": len(prompt),
                "sample_tokens": len(sample.token_ids),
                "pivot_naive": n and n.position,
                "pivot_fast": f and f.position,
                "naive_tokens": nc.total,
                "fast_tokens": fc.total,
            }
        )
    naive_tokens = sum(c.total for c in naive_counts)
    fast_tokens = sum(c.total for c in fast_counts)
    prompt_tokens = sum(len(pair[1]) - 1 for pair in pairs)  # sampling prefilled all but the last token
    return {
        "token_ratio": naive_tokens / max(fast_tokens, 1),
        "with_prompt": naive_tokens / max(fast_tokens + prompt_tokens, 1),
        "wall_ratio": (middle - start) / max(end - middle, 1e-9),
        "identical_pivots": sum(n == f for n, f in zip(naive, fast, strict=True)),
        "pairs": len(pairs),
        "naive_tokens": naive_tokens,
        "fast_tokens": fast_tokens,
        "naive_seconds": middle - start,
        "fast_seconds": end - middle,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--pairs", type=int, default=8, help="(greedy, counterfactual) pairs per workload")
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-samples", type=int, default=6, help="samples drawn per problem for a counterfactual")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, help="also write the figures here (e.g. benchmarks/results/branching-cpu.json)"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    problems = load_problems(args.task)
    figures: dict[str, dict] = {}
    for name in args.workload:
        workload = WORKLOADS[name]
        settings = DecodeSettings(workload.max_new_tokens, stop_strings(workload.prompt_style), batch_size=8)
        print(f"{name}: prompt {workload.prompt_style!r}, traces of up to {workload.max_new_tokens} tokens", flush=True)
        pairs, seen, right = collect_pairs(model, tokenizer, problems, settings, workload.prompt_style, args)
        stats = compare(model, tokenizer, pairs, settings)
        stats["greedy_accuracy"] = right / max(seen, 1)
        figures[name] = stats
        for k, row in enumerate(stats["rows"]):
            print(
                f"  pair {k + 1}: {row['problem']} greedy_correct={row['greedy_correct']} "
                f"prompt_len={row['prompt_tokens']} sample_len={row['sample_tokens']} "
                f"pivot naive={row['pivot_naive']} fast={row['pivot_fast']} "
                f"tokens {row['naive_tokens']}/{row['fast_tokens']}"
            )
        print(
            f"  greedy accuracy on the {seen} problems seen: {stats['greedy_accuracy']:.2f}; "
            f"naive {stats['naive_tokens']} tokens in {stats['naive_seconds']:.1f} s, "
            f"fast {stats['fast_tokens']} tokens in {stats['fast_seconds']:.1f} s",
            flush=True,
        )
    parts = []
    for index, (name, stats) in enumerate(figures.items()):
        prefix = "branching_" if index == 0 else f"{name}_"
        parts.append(
            f"{prefix}token_ratio={stats['token_ratio']:.1f} "
            f"{'' if index == 0 else prefix}with_prompt={stats['with_prompt']:.1f} "
            f"{'' if index == 0 else prefix}wall_ratio={stats['wall_ratio']:.1f} "
            f"{'' if index == 0 else prefix}identical_pivots={stats['identical_pivots']}/{stats['pairs']}"
        )
    print(" ".join(parts))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        atomic_write_json(args.json, {"workloads": figures, "settings": settings})


if __name__ == "__main__":
    main()
