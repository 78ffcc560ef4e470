"""Forgetting: the rise in cross-entropy on held-out Wikipedia text, with a paired standard error."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.errors import UsageError
from peft_cca.evaluation.forgetting import CrossEntropy, cross_entropy, forgetting, general_corpus

MAX_TOKENS = 3_000


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def base(tokenizer):
    model = tiny_model("llama")
    return model, cross_entropy(model, tokenizer, max_tokens=MAX_TOKENS, max_length=96, batch_size=8)


def test_the_corpus_is_real_wikipedia_prose_of_enough_tokens():
    corpus = general_corpus()
    assert len(corpus) > 9_000
    assert sum(len(document.split()) for document in corpus) > 500_000  # well over 50,000 tokens
    assert corpus == general_corpus()  # a fixed order, so max_tokens always takes the same documents


def test_cross_entropy_pools_tokens_over_documents(base, tokenizer):
    model, ce = base
    assert ce.n_tokens >= MAX_TOKENS and ce.n_docs == len(ce.doc_nll) == len(ce.doc_tokens)
    assert ce.n_tokens == sum(ce.doc_tokens) and ce.mean == pytest.approx(sum(ce.doc_nll) / ce.n_tokens)
    assert 0 < ce.stderr < 0.1 * ce.mean
    # a random model is near-uniform over the 97 ids
    assert ce.mean == pytest.approx(math.log(97), rel=0.05)
    # one document by hand, unbatched and unpadded
    ids = torch.tensor([tokenizer(general_corpus()[0])["input_ids"][:96]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    by_hand = F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    assert ce.doc_nll[0] == pytest.approx(by_hand, rel=1e-4)


def test_an_unchanged_model_has_no_forgetting(base, tokenizer):
    model, ce = base
    again = cross_entropy(model, tokenizer, max_tokens=MAX_TOKENS, max_length=96, batch_size=3)
    rise = forgetting(ce, again)
    assert rise.delta == pytest.approx(0.0, abs=1e-6) and rise.stderr == pytest.approx(0.0, abs=1e-6)
    assert (rise.n_tokens, rise.n_docs) == (ce.n_tokens, ce.n_docs)
    # a base cross-entropy kept as JSON (in a run folder) pairs with a fresh one
    kept = CrossEntropy(**json.loads(json.dumps(asdict(ce))))
    assert forgetting(kept, again).delta == pytest.approx(0.0, abs=1e-6)


def test_a_damaged_model_forgets(base, tokenizer):
    _, ce = base
    damaged = tiny_model("llama")
    with torch.no_grad():
        damaged.lm_head.weight.add_(
            torch.randn_like(damaged.lm_head.weight, generator=torch.Generator().manual_seed(1))
        )
    rise = forgetting(ce, cross_entropy(damaged, tokenizer, max_tokens=MAX_TOKENS, max_length=96))
    assert rise.delta > 0 and rise.delta > 5 * rise.stderr
    assert rise.delta == pytest.approx(rise.tuned - rise.base)


def test_forgetting_needs_the_same_documents(base, tokenizer):
    model, ce = base
    shorter = cross_entropy(model, tokenizer, max_tokens=MAX_TOKENS // 2, max_length=96)
    with pytest.raises(UsageError, match="same documents"):
        forgetting(ce, shorter)
