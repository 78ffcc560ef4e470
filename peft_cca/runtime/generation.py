"""Batched generation with transformers ``generate``: greedy traces and sampled counterfactuals.

On top of ``generate`` this adds what the CCA pipeline needs and the library does not give per row:
a token budget per row, stop strings searched in the *completion* text only (never across the prompt
boundary, so every caller cuts texts the same way), an optional early stop once the final answer can no
longer change, exact per-row lengths, a count of the tokens the model actually processed, and sampling
seeded per row (so a problem draws the same samples whichever batch it lands in).

Throughput: inputs are sorted by length and packed into batches under a token budget; a prompt sampled
``num_samples`` times is prefilled once and its cache shared by its samples; the stop checks detokenize
only the new token of each row (incremental detokenization), not the whole completion at every step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

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
    # told the tokens of every call as it finishes: a progress bar that moves inside a long batch of work
    listener: Callable[[int], None] | None = field(default=None, repr=False, compare=False)

    @property
    def total(self) -> int:
        return self.prefill + self.decode

    def add(self, prefill: int, decode: int, kind: str = "generate") -> None:
        self.prefill += prefill
        self.decode += decode
        self.calls += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + prefill + decode
        if self.listener is not None:
            self.listener(prefill + decode)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class IncrementalText:
    """The decoded text of a growing token list, at O(new tokens) per appended token.

    Written by hand because tokenizers only decode whole lists: this is the offset scheme of vLLM's and
    TGI's streaming detokenizers. Each step decodes a few tokens of context plus the new one and appends
    the difference, holding text back while it ends in an incomplete UTF-8 sequence; the context keeps
    tokenizers that strip a leading space at the start of a decode (SentencePiece) exact. Special tokens
    (skipped by the decode) and ids outside the vocabulary write no text and never join that context, so a run
    of them cannot grow it into an O(length) decode per step.
    """

    def __init__(self, tokenizer, ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = self._read = 0
        self._silent, self._vocab = set(tokenizer.all_special_ids), len(tokenizer)
        for token in ids:
            self.append(token)

    def append(self, token: int) -> str:
        if token in self._silent or token >= self._vocab:
            return self.text  # removed by the decode before anything else, so no text and no context
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
        return self.text


class _RowStops(StoppingCriteria):
    """Per-row stop: token budget, EOS, stop strings in the completion text, optionally a final answer.

    Records the number of new tokens at which each row stopped, so rows can be trimmed exactly. Stop
    strings are searched only where the newest text could complete one; a stop is confirmed against a
    full decode of the row, so incremental detokenization can never end a row the full text would not.
    """

    def __init__(
        self,
        tokenizer,
        input_len: int,
        completions: list[list[int]],
        budgets: list[int],
        stop_strings: Sequence[str],
        stop_when: Callable[[str], bool] | None,
    ):
        self.tokenizer = tokenizer
        self.input_len = input_len
        self.budgets = budgets
        self.stop_strings = tuple(stop_strings)
        self.overlap = max((len(s) for s in self.stop_strings), default=1) - 1
        self.stop_when = stop_when
        self.check_text = bool(self.stop_strings) or stop_when is not None
        self.texts = [IncrementalText(tokenizer, ids) if self.check_text else None for ids in completions]
        self.searched = [0] * len(budgets)
        self.stopped_at: list[int | None] = [None] * len(budgets)

    def _text_stops(self, text: str, searched: int) -> bool:
        start = max(searched - self.overlap, 0)
        if any(text.find(s, start) >= 0 for s in self.stop_strings):
            return True
        return self.stop_when is not None and self.stop_when(text)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids.shape[1] - self.input_len
        last = input_ids[:, -1].tolist()
        done = [False] * len(last)
        for row, token in enumerate(last):
            if self.stopped_at[row] is not None:
                done[row] = True
                continue
            stop = new >= self.budgets[row] or token == self.tokenizer.eos_token_id
            if not stop and self.check_text:
                incremental = self.texts[row]
                text = incremental.append(token)
                stop = self._text_stops(text, self.searched[row])
                self.searched[row] = len(text)
                if stop:  # confirm on the full decode (once per row)
                    full = self.tokenizer.decode(incremental.ids, skip_special_tokens=True)
                    if full != text:
                        logger.warning("incremental detokenization differs from a full decode; using the full text")
                        stop = self._text_stops(full, 0)
            if stop:
                self.stopped_at[row] = min(new, self.budgets[row])
                done[row] = True
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _SeededSampling(LogitsProcessor):
    """Sampling with one random generator per row: argmax of the warped scores plus Gumbel noise.

    The Gumbel-max trick draws exactly from softmax(scores); written by hand because ``generate`` samples
    every row from one global generator, which would tie a row's draws to its batch. Given the same
    seed and logits, a row draws the same tokens in any batch.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        noise = torch.stack(
            [
                torch.empty(scores.shape[1], device=scores.device, dtype=torch.float32).exponential_(generator=g)
                for g in self.generators
            ]
        )
        return scores - noise.clamp_min(torch.finfo(torch.float32).tiny).log()


def row_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of an input seeded ``seed`` (independent streams per sample)."""
    digest = hashlib.sha256(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def stack_caches(prefixes: Sequence[tuple[DynamicCache, int]]) -> DynamicCache:
    """A left-padded batch cache whose row r holds the first ``n`` positions of cache ``c``, (c, n) = prefixes[r].

    Padded slots are zeros and masked out; real slots keep the rotary positions 0..n-1 they were computed
    with, which is what generate's attention-mask-derived positions give them too. The sources are not
    modified (a cache grows by concatenation into new tensors).
    """
    width = max(n for _, n in prefixes)
    data = []
    for layer in range(len(prefixes[0][0].layers)):
        rows_k, rows_v = [], []
        for cache, n in prefixes:
            pad = (0, 0, width - n, 0)
            rows_k.append(torch.nn.functional.pad(cache.layers[layer].keys[:, :, :n], pad))
            rows_v.append(torch.nn.functional.pad(cache.layers[layer].values[:, :, :n], pad))
        data.append((torch.cat(rows_k), torch.cat(rows_v)))
    return DynamicCache(data)


@torch.no_grad()
def prefill_caches(
    model,
    inputs: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    batch_tokens: int | None = None,
    counters: Sequence[TokenCounter] | None = None,
    counter_kind: str = "prefill",
) -> list[DynamicCache]:
    """For each input, a cache of all its tokens but the last, prefilled in length-sorted batches.

    Plain full-length layers (even for sliding-window models, whose own cache drops what leaves the window):
    such a cache can be cut to any prefix and shared, by :func:`generate` (``prompt_caches``) and by fast
    branching, so a prompt is processed once for all its samples and branches.
    """
    caches: list[DynamicCache | None] = [None] * len(inputs)
    lengths = [len(ids) - 1 for ids in inputs]
    device = next(model.parameters()).device
    for batch in plan_batches(lengths, [0] * len(inputs), batch_size=batch_size, batch_tokens=batch_tokens):
        input_ids, mask = left_pad([list(inputs[i][:-1]) for i in batch], 0)
        input_ids, mask = input_ids.to(device), mask.to(device)
        kwargs = {"logits_to_keep": 1} if _supports(model, "logits_to_keep") else {}
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
            use_cache=True,
            **{cache_argument(model): DynamicCache()},
            **kwargs,
        )
        width = input_ids.shape[1]
        for row, i in enumerate(batch):
            pad = width - lengths[i]
            layers = [
                (layer.keys[row : row + 1, :, pad:], layer.values[row : row + 1, :, pad:])
                for layer in _output_cache(out).layers
            ]
            caches[i] = DynamicCache(layers)
            if counters is not None:
                counters[i].add(lengths[i], 0, counter_kind)
    return caches


# Why not transformers' continuous batching (``model.generate_batch``, paged attention; tried with 5.23 on CPU):
# on a tiny llama it gives the same greedy tokens as ``generate`` below (8 prompts x 20 tokens), but it takes
# only a GenerationConfig, so it has no per-row StoppingCriteria (stop strings searched in the completion only,
# the final-answer stop, per-row budgets) and no LogitsProcessor list (per-row seeded sampling), and it cannot
# start from the prefilled prompt and prefix caches that sampling and fast branching share (its paged cache
# is its own). On CPU it also sizes that cache from host RAM unless ``num_blocks`` is set. So at most the
# greedy traces without stop strings could use it; we batch by length under a token budget instead.
def plan_batches(
    lengths: Sequence[int],
    budgets: Sequence[int],
    *,
    num_samples: int = 1,
    batch_size: int = 8,
    batch_tokens: int | None = None,
) -> list[list[int]]:
    """Input indices grouped into batches: longest first, at most ``batch_size`` inputs, and (with
    ``batch_tokens``) at most that many padded tokens, rows x (longest input + largest budget).

    Sorting by length keeps padding small; longest first makes an out-of-memory batch fail at once. The
    plan depends only on the lengths and budgets, so a resumed run batches (and pads) alike.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        grown = [*current, i]
        size = len(grown) * num_samples * (max(lengths[j] for j in grown) + max(budgets[j] for j in grown))
        if current and (len(grown) > batch_size or (batch_tokens is not None and size > batch_tokens)):
            batches.append(current)
            grown = [i]
        current = grown
    if current:
        batches.append(current)
    return batches


def _supports(model, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(model.forward).parameters


def cache_argument(model) -> str:
    """The name this transformers gives the KV-cache argument: ``cache`` from 5.2x (``past_key_values`` warns
    there), ``past_key_values`` before. A PeftModel forwards it to the model it wraps."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if _supports(base, "cache") else "past_key_values"


def _output_cache(output):
    """The KV cache of a forward pass's output, under either name."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def _shared_prefill(model, input_ids: torch.LongTensor, mask: torch.LongTensor):
    """The cache of every input but its last token, computed once (to be repeated for each sample).

    Positions follow the attention mask, as ``generate`` numbers a left-padded row.
    """
    ids, attention = input_ids[:, :-1], mask[:, :-1]
    kwargs = {"logits_to_keep": 1} if _supports(model, "logits_to_keep") else {}
    out = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=(attention.cumsum(-1) - 1).clamp_min(0),
        use_cache=True,
        **kwargs,
    )
    return _output_cache(out)


def _sampling_processors(
    temperature: float, top_k: int | None, top_p: float | None, seeds: list[int], device
) -> LogitsProcessorList:
    """Temperature, top-k, top-p (``generate``'s own warpers, in its order), then seeded sampling."""
    processors: list[LogitsProcessor] = [TemperatureLogitsWarper(temperature)]
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(_SeededSampling(seeds, device))
    return LogitsProcessorList(processors)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    inputs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int] = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    stop_strings: Sequence[str] = (),
    stop_when: Callable[[str], bool] | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int = 8,
    batch_tokens: int | None = None,
    completion_starts: Sequence[int] | None = None,
    past_key_values=None,
    prompt_caches: Sequence[DynamicCache] | None = None,
    counter: TokenCounter | Sequence[TokenCounter] | None = None,
    counter_kind: str = "generate",
) -> list[list[Generation]]:
    """Complete each token-id input; returns ``num_samples`` generations per input, in input order.

    ``temperature == 0`` is greedy decoding; otherwise sampling at that temperature after top-k / top-p
    filtering (None: off), seeded per input: ``seed`` is one seed per input, or an int ``s`` giving input i
    the seed ``s + i``; sample r of an input draws from ``row_seed(seed, r)`` in any batch. Inputs are
    batched longest first, ``batch_size`` inputs and (optionally) ``batch_tokens`` padded tokens at most.
    ``max_new_tokens`` may be given per input. ``completion_starts[i]`` marks where the completion begins
    inside ``inputs[i]`` (default: at its end); stop strings and ``stop_when`` (a test of the completion text,
    e.g. "its answer is final": the task's own rule, so this layer knows no task) look at the text from there.
    ``past_key_values`` is a cache already holding all but the last token of every (left-padded)
    input; it requires the whole batch in one call, in the given order. ``prompt_caches`` (from
    :func:`prefill_caches`) hold all but the last token of each input, shared by its samples. ``counter``
    counts the tokens processed, in one counter or in one counter per input.
    """
    budgets = [max_new_tokens] * len(inputs) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    starts = [len(ids) for ids in inputs] if completion_starts is None else list(completion_starts)
    seeds = [seed + i for i in range(len(inputs))] if isinstance(seed, int) else list(seed)
    if past_key_values is not None:
        if len(inputs) > batch_size:
            raise ValueError("a prepared cache needs the whole batch in one call")
        batches = [list(range(len(inputs)))]
    else:
        lengths = [len(ids) for ids in inputs]
        batches = plan_batches(
            lengths, budgets, num_samples=num_samples, batch_size=batch_size, batch_tokens=batch_tokens
        )
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    results: list[list[Generation]] = [[] for _ in inputs]
    for batch in batches:
        input_ids, mask = left_pad([inputs[i] for i in batch], pad_id)
        width = input_ids.shape[1]
        # Each input is repeated num_samples times; the per-row lists follow that order.
        rows = [i for i in batch for _ in range(num_samples)]
        row_budgets = [budgets[i] for i in rows]
        stops = _RowStops(
            tokenizer,
            width,
            [list(inputs[i][starts[i] :]) for i in rows],
            row_budgets,
            stop_strings,
            stop_when,
        )
        config = GenerationConfig(
            max_new_tokens=max(max(row_budgets), 1),
            do_sample=False,
            num_return_sequences=1,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        processors = LogitsProcessorList()
        if temperature > 0:
            row_seeds = [row_seed(seeds[i], r) for i in batch for r in range(num_samples)]
            processors = _sampling_processors(temperature, top_k, top_p, row_seeds, device)
        cache, shared = past_key_values, 0
        input_ids, mask = input_ids.to(device), mask.to(device)
        if prompt_caches is not None:
            cache = stack_caches([(prompt_caches[i], len(inputs[i]) - 1) for i in batch])
            cache.batch_repeat_interleave(num_samples)
        elif max(row_budgets) > 0 and num_samples > 1 and cache is None and width > 1:
            cache, shared = _shared_prefill(model, input_ids, mask), width - 1
            cache.batch_repeat_interleave(num_samples)
        input_ids, mask = input_ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
        if max(row_budgets) <= 0:
            output = input_ids.cpu()
        else:
            output = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stops]),
                **{cache_argument(model): cache},
            ).cpu()
        cached = width - 1 if past_key_values is not None or prompt_caches is not None else 0
        per_row: list[Generation] = []
        for out_row, i in enumerate(rows):
            new = output[out_row, width:].tolist()
            length = stops.stopped_at[out_row] if stops.stopped_at[out_row] is not None else len(new)
            new = new[:length]
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            completion = list(inputs[i][starts[i] :]) + new
            text = cut_at_stop(tokenizer.decode(completion, skip_special_tokens=True), stop_strings)[0]
            per_row.append(Generation(token_ids=new, text=text))
            if len(per_row) == num_samples:
                results[i] = per_row
                per_row = []
        batch_prefill = batch_decode = 0
        for i in batch:
            uncached = len(inputs[i]) - (cached - (width - len(inputs[i])) if cached else 0)
            # a shared prefix is processed once, the last input token once per sample
            prefill = uncached - 1 + num_samples if shared else uncached * num_samples
            decode = sum(max(len(g.token_ids) - 1, 0) for g in results[i])
            if isinstance(counter, TokenCounter):
                batch_prefill, batch_decode = batch_prefill + prefill, batch_decode + decode
            elif counter is not None:
                counter[i].add(prefill, decode, counter_kind)
        if isinstance(counter, TokenCounter):
            counter.add(batch_prefill, batch_decode, counter_kind)
    return results
