"""On the real offline SmolLM2: naive and fast branching find identical pivots on real traces."""

import pytest

from peft_cca.localize.pivots import branching_pivot_fast, branching_pivot_naive
from peft_cca.localize.traces import DecodeSettings, counterfactual, greedy_traces
from peft_cca.tasks import DEFAULT_TASK, build_prompt, encode_prompt, load_problems, stop_strings


@pytest.mark.integration
def test_naive_and_fast_branching_agree_on_smollm2():
    from peft_cca.runtime.loading import load_model

    model, tokenizer = load_model("smollm2-135m-instruct")
    settings = DecodeSettings(max_new_tokens=24, stop_strings=stop_strings("chat"), batch_size=8)
    problems = load_problems(DEFAULT_TASK, limit=6)
    prompts = [encode_prompt(tokenizer, build_prompt(tokenizer, p, "chat")) for p in problems]
    compared = 0
    traces = greedy_traces(model, tokenizer, problems, prompts, settings)
    for problem, prompt, greedy in zip(problems, prompts, traces, strict=True):
        sample = counterfactual(model, tokenizer, problem, prompt, greedy, settings, n_samples=3, seed=0)
        if sample is None:
            continue
        naive = branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, settings)
        fast = branching_pivot_fast(model, tokenizer, problem, prompt, greedy, sample, settings)
        assert naive is not None and naive == fast
        compared += 1
        if compared == 2:
            break
    assert compared >= 2
