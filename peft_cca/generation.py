"""Batched generation with transformers ``generate``: greedy traces and sampled counterfactuals.

On top of ``generate`` this adds what the CCA pipeline needs and the library does not give per row:
a token budget per row, stop strings searched in the *completion* text only (never across the prompt
boundary, so every caller cuts texts the same way), an optional early stop once the final answer can no
longer change, exact per-row lengths, and a count of the tokens the model actually processed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from peft_cca.tasks.answers import answer_is_final

logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """One completion: the new token ids (through EOS when one was produced) and the scored text.

    ``text`` is the decoded completion (including any completion tokens that were part of the input, see
    ``completion_starts`` in :func:`generate`), cut at the first stop string.
    """

    token_ids: list[int]
    text: str


@dataclass
class TokenCounter:
    """Tokens the model processed: prefill (uncached input tokens) plus decoded tokens, summed over rows."""

    prefill: int = 0
    decode: int = 0
    calls: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.prefill + self.decode

    def add(self, prefill: int, decode: int, kind: str = "generate") -> None:
        self.prefill += prefill
        self.decode += decode
        self.calls += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + prefill + decode


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class _RowStops(StoppingCriteria):
    """Per-row stop: token budget, stop strings in the completion text, optionally a final answer.

    Records the number of new tokens at which each row stopped, so rows can be trimmed exactly.
    """

    def __init__(
        self,
        tokenizer,
        input_len: int,
        completion_starts: list[int],
        budgets: list[int],
        stop_strings: Sequence[str],
        stop_when: Callable[[str], bool] | None,
    ):
        self.tokenizer = tokenizer
        self.input_len = input_len
        self.completion_starts = completion_starts
        self.budgets = budgets
        self.stop_strings = tuple(stop_strings)
        self.stop_when = stop_when
        self.stopped_at: list[int | None] = [None] * len(budgets)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids.shape[1] - self.input_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if self.stopped_at[row] is not None:
                done[row] = True
                continue
            stop = new >= self.budgets[row]
            if not stop and (self.stop_strings or self.stop_when is not None):
                text = self.tokenizer.decode(input_ids[row, self.completion_starts[row] :], skip_special_tokens=True)
                stop = cut_at_stop(text, self.stop_strings)[1] or (self.stop_when is not None and self.stop_when(text))
            if stop:
                self.stopped_at[row] = min(new, self.budgets[row])
                done[row] = True
        return done


def left_pad(inputs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a batch of token id lists."""
    width = max(len(ids) for ids in inputs)
    input_ids = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, ids in enumerate(inputs):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids) :] = 1
    return input_ids, mask


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def generate(
    model,
    tokenizer,
    inputs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int] = 128,
    temperature: float = 0.0,
    num_samples: int = 1,
    stop_strings: Sequence[str] = (),
    stop_when_final: bool = False,
    seed: int | None = 0,
    batch_size: int = 8,
    completion_starts: Sequence[int] | None = None,
    past_key_values=None,
    counter: TokenCounter | None = None,
    counter_kind: str = "generate",
) -> list[list[Generation]]:
    """Complete each token-id input; returns ``num_samples`` generations per input.

    ``temperature == 0`` is greedy decoding; otherwise ancestral sampling at that temperature, with
    ``torch.manual_seed(seed + batch_index)`` so a call is reproducible. ``max_new_tokens`` may be given per
    input. ``completion_starts[i]`` marks where the completion begins inside ``inputs[i]`` (default: at its
    end); stop strings and the final-answer check look at the text from there. ``past_key_values`` is a
    cache already holding all but the last token of every (left-padded) input; it requires the whole batch
    in one call.
    """
    budgets = [max_new_tokens] * len(inputs) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    starts = [len(ids) for ids in inputs] if completion_starts is None else list(completion_starts)
    if past_key_values is not None and len(inputs) > batch_size:
        raise ValueError("a prepared cache needs the whole batch in one call")
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    results: list[list[Generation]] = []
    for batch_index, begin in enumerate(range(0, len(inputs), batch_size)):
        batch = inputs[begin : begin + batch_size]
        input_ids, mask = left_pad(batch, pad_id)
        width = input_ids.shape[1]
        # Every row is expanded num_samples times by generate; the per-row lists follow that order.
        rows = [i for i in range(begin, begin + len(batch)) for _ in range(num_samples)]
        row_budgets = [budgets[i] for i in rows]
        row_starts = [width - len(inputs[i]) + starts[i] for i in rows]
        stops = _RowStops(
            tokenizer, width, row_starts, row_budgets, stop_strings, answer_is_final if stop_when_final else None
        )
        config = GenerationConfig(
            max_new_tokens=max(max(row_budgets), 1),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            top_p=None,
            num_return_sequences=num_samples,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if temperature > 0 and seed is not None:
            torch.manual_seed(seed + batch_index)
        if max(row_budgets) <= 0:
            output = input_ids.repeat_interleave(num_samples, dim=0)
        else:
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stops]),
                past_key_values=past_key_values,
            ).cpu()
        cached = width - 1 if past_key_values is not None else 0
        prefill = decode = 0
        per_input: list[Generation] = []
        for out_row, i in enumerate(rows):
            new = output[out_row, width:].tolist()
            length = stops.stopped_at[out_row] if stops.stopped_at[out_row] is not None else len(new)
            new = new[:length]
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            completion = list(inputs[i][starts[i] :]) + new
            text = cut_at_stop(tokenizer.decode(completion, skip_special_tokens=True), stop_strings)[0]
            per_input.append(Generation(token_ids=new, text=text))
            prefill += len(inputs[i]) - (cached - (width - len(inputs[i])) if cached else 0)
            decode += max(len(new) - 1, 0)
            if len(per_input) == num_samples:
                results.append(per_input)
                per_input = []
        if counter is not None:
            counter.add(prefill, decode, counter_kind)
    return results
