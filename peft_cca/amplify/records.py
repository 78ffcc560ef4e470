"""What ``CCATrainer`` trains on: Error-Localization rows as text or as token ids, the padded dataset, the collator.

A row is either text, ``{"prompt", "desired", "undesired"}`` (as ``DPOTrainer`` takes ``{"prompt", "chosen",
"rejected"}``), tokenized with the trainer's ``processing_class``, or token ids, ``{"prefix_ids",
"desired_token_id", "undesired_token_id"}`` (what ``peft-cca localize`` writes; ``load_error_localization`` gives
both). The loss reads one logit per continuation, so a continuation must be exactly one token after the prompt:
anything else is refused, naming the row and its tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from peft_cca.errors import UsageError
from peft_cca.runtime.generation import left_pad

RECORD_FIELDS = ("prefix_ids", "desired_token_id", "undesired_token_id")
TEXT_FIELDS = ("prompt", "desired", "undesired")
ROW_HELP = (
    "give rows of text {prompt, desired, undesired} (with processing_class=tokenizer) or of token ids "
    "{prefix_ids, desired_token_id, undesired_token_id}; peft_cca.load_error_localization(folder) gives both"
)


def as_row(record: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The token fields of a token-id record: a JSON dict of records.jsonl or a ``peft_cca.localize.records.Record``."""
    if isinstance(record, Mapping):
        return {name: record[name] for name in RECORD_FIELDS}
    return {
        "prefix_ids": list(record.prefix_ids),
        "desired_token_id": record.desired,
        "undesired_token_id": record.undesired,
    }


def _one_token(
    tokenizer, prompt_ids: list[int], prompt: str, continuation: str, what: str, index: int, special: bool
) -> int:
    """The single token ``continuation`` adds after ``prompt``, or a one-line refusal showing its tokens."""
    if not isinstance(continuation, str) or not continuation:
        raise UsageError(f"{what} row {index}: the continuation {continuation!r} must be a non-empty string")
    whole = tokenizer(prompt + continuation, add_special_tokens=special)["input_ids"]
    added = whole[len(prompt_ids) :]
    if whole[: len(prompt_ids)] != prompt_ids or len(added) != 1:
        pieces = tokenizer.convert_ids_to_tokens(added) if whole[: len(prompt_ids)] == prompt_ids else None
        shown = f"tokens {pieces}" if pieces is not None else "tokens that merge with the prompt's last token"
        raise UsageError(
            f"{what} row {index}: {continuation!r} after the prompt is {shown}, not one token: CCA's loss reads one "
            "logit per continuation; give the single next token (with its leading space, e.g. ' 7')"
        )
    return added[0]


def _text_row(row: Mapping[str, Any], tokenizer, what: str, index: int) -> dict[str, Any]:
    if tokenizer is None:
        raise UsageError(f"{what} holds text rows: pass processing_class=tokenizer so CCATrainer can tokenize them")
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise UsageError(f"{what} row {index}: prompt must be a non-empty string, got {prompt!r}")
    # a prompt that already starts with the BOS token (a rendered chat template) must not get a second one
    special = not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))
    prompt_ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    desired = _one_token(tokenizer, prompt_ids, prompt, row["desired"], what, index, special)
    undesired = _one_token(tokenizer, prompt_ids, prompt, row["undesired"], what, index, special)
    if desired == undesired:
        raise UsageError(f"{what} row {index}: desired and undesired are the same token ({row['desired']!r})")
    return {"prefix_ids": prompt_ids, "desired_token_id": desired, "undesired_token_id": undesired}


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _token_row(row: Mapping[str, Any], what: str, index: int, vocab_size: int | None) -> dict[str, Any]:
    out = as_row(row)
    ids = list(out["prefix_ids"])
    if not ids or not all(_is_token_id(i) for i in ids):
        raise UsageError(f"{what} row {index}: prefix_ids must be a non-empty list of token ids")
    for name in ("desired_token_id", "undesired_token_id"):
        if not _is_token_id(out[name]):
            raise UsageError(f"{what} row {index}: {name} must be one token id, got {out[name]!r}")
    if vocab_size is not None:
        bad = [i for i in (*ids, out["desired_token_id"], out["undesired_token_id"]) if i >= vocab_size]
        if bad:
            raise UsageError(
                f"{what} row {index}: token ids {bad[:5]} are outside the model's vocabulary of {vocab_size}: the "
                "rows were made for another tokenizer"
            )
    return {**out, "prefix_ids": ids}


def training_rows(
    rows: Iterable[Mapping[str, Any] | Any],
    tokenizer=None,
    vocab_size: int | None = None,
    what: str = "train_dataset",
) -> list[dict[str, Any]]:
    """Token-id rows of a list, a ``datasets.Dataset`` or ``Record`` objects; text rows are tokenized."""
    if rows is None:
        raise UsageError(f"CCATrainer needs {what}=...: {ROW_HELP}")
    if isinstance(rows, Mapping) and not any(name in rows for name in (*RECORD_FIELDS, *TEXT_FIELDS)):
        names = ", ".join(map(str, rows))
        raise UsageError(f"{what} is a mapping of splits ({names}): pass one split, e.g. data['train']")
    out = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            if all(hasattr(row, name) for name in ("prefix_ids", "desired", "undesired")):  # a dcm Record
                out.append(_token_row(as_row(row), what, index, vocab_size))
                continue
            raise UsageError(f"{what} row {index} is a {type(row).__name__}, not a mapping: {ROW_HELP}")
        if all(name in row for name in RECORD_FIELDS) and row.get("prefix_ids") is not None:
            out.append(_token_row(row, what, index, vocab_size))
        elif all(name in row for name in TEXT_FIELDS):
            out.append(_text_row(row, tokenizer, what, index))
        else:
            raise UsageError(f"{what} row {index} has the columns {sorted(row)}: {ROW_HELP}")
    if not out:
        raise UsageError(f"{what} is empty: there are no Error-Localization rows to train on")
    return out


class PivotDataset(Dataset):
    """Error-Localization rows, padded with zero-weight copies to a multiple of ``multiple`` (full-batch steps)."""

    def __init__(self, records: Iterable[Mapping[str, Any]], multiple: int = 1) -> None:
        rows = [as_row(record) for record in records]
        if not rows:
            raise ValueError("no Error-Localization records to train on")
        self.num_records = len(rows)
        padded = math.ceil(len(rows) / multiple) * multiple
        self.rows = [{**row, "weight": 1.0} for row in rows]
        self.rows += [{**rows[i % len(rows)], "weight": 0.0} for i in range(padded - len(rows))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


@dataclass
class PivotCollator:
    """Left-pads prefixes so the pivot is the last position of every row; positions ignore the padding."""

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = left_pad([f["prefix_ids"] for f in features], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            # the same positions generate() gives a left-padded row: the pivot logits match the unpadded prefix
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "desired": torch.tensor([f["desired_token_id"] for f in features], dtype=torch.long),
            "undesired": torch.tensor([f["undesired_token_id"] for f in features], dtype=torch.long),
            "weight": torch.tensor([float(f.get("weight", 1.0)) for f in features], dtype=torch.float32),
        }
