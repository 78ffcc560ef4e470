"""Generation speed-ups against the plain computations they replace: HF greedy ``generate`` per input, full
detokenization at every step, per-problem sampling, prompts prefilled once per sample."""

import pytest
import torch
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast

from peft_cca.localize.traces import DecodeSettings, Trace, counterfactuals
from peft_cca.runtime.generation import (
    IncrementalText,
    TokenCounter,
    _SeededSampling,
    cut_at_stop,
    generate,
    plan_batches,
    prefill_caches,
)
from peft_cca.tasks.problem import Problem

TEXT = "Héllo wörld, 12 + 30 = 42. The answer is 42.\nNaïve café: 日本語 🙂 über ñandú.\n\nNext: 7 × 6 → 42!"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=3), tiny_tokenizer()


def _prompts(tokenizer, n=5):
    return [tokenizer(f"question {q}: " + "x" * (3 * q % 7), add_special_tokens=False)["input_ids"] for q in range(n)]


@pytest.mark.parametrize("kind", ["bytelevel", "sentencepiece"])
def test_incremental_text_equals_full_decode(kind):
    trainer = ByteLevelBPETokenizer() if kind == "bytelevel" else SentencePieceBPETokenizer()
    trainer.train_from_iterator([TEXT] * 3, vocab_size=300, min_frequency=1, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    incremental = IncrementalText(tokenizer, ids[:3])
    for token in ids[3:]:
        text = incremental.append(token)
        full = tokenizer.decode(incremental.ids, skip_special_tokens=True)
        if not full.endswith("\ufffd"):  # text of a half-decoded character is held back
            assert text == full
    assert incremental.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_plan_batches_respects_both_caps():
    lengths, budgets = [5, 40, 12, 33, 7, 40, 2], [10] * 7
    plan = plan_batches(lengths, budgets, num_samples=2, batch_size=3, batch_tokens=200)
    assert sorted(i for batch in plan for i in batch) == list(range(7))
    for batch in plan:
        assert len(batch) <= 3
        assert len(batch) == 1 or 2 * len(batch) * (max(lengths[i] for i in batch) + 10) <= 200
    flat = [i for batch in plan for i in batch]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first


def test_greedy_equals_hf_generate_per_input(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    ours = generate(model, tokenizer, prompts, max_new_tokens=9, batch_size=3, batch_tokens=60)
    for prompt, (generation,) in zip(prompts, ours, strict=True):
        plain = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=9,
            do_sample=False,
            pad_token_id=2,
        )[0, len(prompt) :].tolist()
        if tokenizer.eos_token_id in plain:
            plain = plain[: plain.index(tokenizer.eos_token_id) + 1]
        assert generation.token_ids == plain


def test_stops_equal_cutting_the_full_completion(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer)
    full = generate(model, tokenizer, prompts, max_new_tokens=14, batch_size=5)
    stops = tuple({whole.text[4:6] for (whole,) in full if len(whole.text) > 6})  # strings the rows do write
    cut = generate(model, tokenizer, prompts, max_new_tokens=14, batch_size=2, stop_strings=stops)
    stopped = 0
    for (whole,), (short,) in zip(full, cut, strict=True):
        text, found = cut_at_stop(whole.text, stops)
        assert short.text == text and whole.token_ids[: len(short.token_ids)] == short.token_ids
        # a row ends at the token that completed its stop string, not later
        assert not found or cut_at_stop(tokenizer.decode(short.token_ids[:-1]), stops)[1] is False
        stopped += found
    assert stopped >= 1


def test_seeded_sampling_draws_from_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    sampler = _SeededSampling([1], torch.device("cpu"))
    counts = torch.bincount(torch.stack([sampler(None, logits).argmax() for _ in range(4000)]), minlength=4)
    torch.testing.assert_close(counts / 4000, logits.softmax(-1)[0], atol=0.03, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])  # full attention, and a sliding window
def test_samples_do_not_depend_on_batching_or_prefill(arch):
    model, tokenizer = tiny_model(arch, seed=3), tiny_tokenizer()
    prompts = _prompts(tokenizer, 4)
    kwargs = dict(max_new_tokens=8, temperature=1.2, top_k=50, seed=[11, 12, 13, 14])
    shared = generate(model, tokenizer, prompts, num_samples=3, batch_size=4, **kwargs)
    alone = [
        generate(model, tokenizer, [p], num_samples=3, **{**kwargs, "seed": [s]})[0]
        for p, s in zip(prompts, kwargs["seed"], strict=True)
    ]
    single = generate(model, tokenizer, prompts, num_samples=1, batch_size=1, **kwargs)
    counter = TokenCounter()
    cached = generate(
        model,
        tokenizer,
        prompts,
        num_samples=3,
        batch_size=2,
        prompt_caches=prefill_caches(model, prompts),
        counter=counter,
        **kwargs,
    )
    ids = [[g.token_ids for g in row] for row in shared]
    assert ids == [[g.token_ids for g in row] for row in alone] == [[g.token_ids for g in row] for row in cached]
    assert [row[0] for row in ids] == [row[0].token_ids for row in single]  # sample 0 with or without others
    assert len({tuple(t) for row in ids for t in row}) > 4  # the samples differ
    # a cached prompt is not processed again: one last prompt token per sample, then the decoded tokens
    assert counter.prefill == 3 * len(prompts)


def test_counterfactuals_across_problems_equal_one_by_one(lm):
    model, tokenizer = lm
    prompts = _prompts(tokenizer, 6)
    problems = [
        Problem(id=f"p{q}", group_id="g", question="q", answer="0", scorer=lambda t: sum(c in "aeiou" for c in t) >= 1)
        for q in range(6)
    ]
    settings = DecodeSettings(max_new_tokens=10, batch_size=4)
    greedy = [Trace((), "", q % 2 == 0) for q in range(6)]
    together = counterfactuals(model, tokenizer, problems, prompts, greedy, settings, n_samples=4, seed=5)
    alone = [
        counterfactuals(model, tokenizer, [p], [q], [g], settings, n_samples=4, seed=5)[0]
        for p, q, g in zip(problems, prompts, greedy, strict=True)
    ]
    assert together == alone and sum(t is not None for t in together) >= 2


class _CountingTokenizer:
    """A tokenizer whose ``decode`` counts the token ids it is handed."""

    def __init__(self, tokenizer):
        self.inner, self.decoded, self.calls = tokenizer, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def decode(self, ids, **kwargs):
        self.decoded, self.calls = self.decoded + len(ids), self.calls + 1
        return self.inner.decode(ids, **kwargs)


def test_stop_checks_cost_linear_in_new_tokens(lm):
    """Full detokenization at every step decodes rows x n^2 / 2 ids; the incremental stop check a few per step."""
    model, tokenizer = lm
    counting = _CountingTokenizer(tokenizer)
    prompts, new = _prompts(tokenizer, 3), 60
    out = generate(model, counting, prompts, max_new_tokens=new, batch_size=3, stop_strings=("never written",))
    plain = generate(model, tokenizer, prompts, max_new_tokens=new, batch_size=3)
    assert [g[0].token_ids for g in out] == [g[0].token_ids for g in plain]
    produced = sum(len(g[0].token_ids) for g in out)
    assert produced >= 2 * new  # long rows, where the quadratic scan would show
    # per token: two small incremental decodes; per row: the final decode of the completion
    assert counting.decoded <= 8 * produced + produced
    assert counting.decoded < sum(len(g[0].token_ids) ** 2 for g in out) / 2 / 2


def test_generate_computes_one_logit_row_per_step(lm):
    """The vocabulary projection runs on the last position only, in the prefill too."""
    model, tokenizer = lm
    rows: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda module, args, output: rows.append(output.shape[1]))
    try:
        prompts = _prompts(tokenizer, 4)
        generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4)
        generate(model, tokenizer, prompts, max_new_tokens=5, num_samples=2, temperature=1.0, batch_size=4)
        prefill_caches(model, prompts)
    finally:
        handle.remove()
    assert rows and set(rows) == {1}
