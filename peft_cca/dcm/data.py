"""Load and validate the Error-Localization records that DCM learns from.

A dataset made with another tokenizer is the silent failure to fear here: token ids would still be
valid integers and DCM would happily learn a circuit for nonsense prefixes. So the loader compares the
tokenizer recorded in ``meta.json`` with the one in use, and without such a record it checks that the
ids decode back to the stored ``prefix_text``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object, read_object

logger = logging.getLogger(__name__)

REQUIRED = ("prefix_ids", "desired_token_id", "undesired_token_id")
SPLITS = ("train", "validation", "test")
DECODE_CHECKS = 8


class DatasetError(UsageError):
    """The Error-Localization dataset cannot be used with this model/tokenizer; the message says why."""


@dataclass(frozen=True)
class Record:
    """What DCM needs of one Error-Localization record."""

    prefix_ids: tuple[int, ...]
    desired: int
    undesired: int
    split: str = "train"
    problem_id: str = ""

    @property
    def length(self) -> int:
        return len(self.prefix_ids)


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """Identity of a tokenizer that survives renames: its size and a hash of its vocabulary.

    Stage 1 writes this as ``meta.json["tokenizer"]``; :func:`load_records` compares it.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {"name": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer), "sha256": digest}


_FIX = "repair or delete that line, or rebuild the dataset with `peft-cca localize` into a fresh --out"


def _token_id(value: Any) -> bool:
    """A token id is a non-negative JSON integer: ``504.7`` or ``true`` would be silently truncated by ``int()``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(line: bytes, number: int, path: Path) -> tuple[Record, str | None]:
    where = f"{path}: line {number}"
    raw = parse_object(line, path, _FIX, line=number, error=DatasetError, kind="a record object")
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise DatasetError(f"{where}: record lacks {missing}; is this an Error-Localization dataset? {_FIX}")
    ids = raw["prefix_ids"]
    if not isinstance(ids, list) or not ids or not all(_token_id(i) for i in ids):
        bad = next((i for i in ids if not _token_id(i)), None) if isinstance(ids, list) and ids else ids
        raise DatasetError(
            f"{where}: prefix_ids must be a non-empty list of whole non-negative token ids, found {bad!r}; {_FIX}"
        )
    for key in ("desired_token_id", "undesired_token_id"):
        if not _token_id(raw[key]):
            raise DatasetError(f"{where}: {key} must be a whole non-negative token id, found {raw[key]!r}; {_FIX}")
    split = raw.get("split", "train")
    if split not in SPLITS:
        raise DatasetError(f"{where}: split {split!r} is not one of {SPLITS}; {_FIX}")
    text = raw.get("prefix_text")
    return Record(
        prefix_ids=tuple(ids),
        desired=raw["desired_token_id"],
        undesired=raw["undesired_token_id"],
        split=split,
        problem_id=str(raw.get("problem_id", number)),
    ), (text if isinstance(text, str) else None)


def _read_meta(path: Path) -> dict[str, Any]:
    return read_object(path, "rebuild the dataset with `peft-cca localize`", error=DatasetError)


def _meta_tokenizer(meta: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer block of meta.json, accepting a bare name or a :func:`tokenizer_fingerprint` dict."""
    tok = meta.get("tokenizer")
    if isinstance(tok, dict):
        return tok
    found = {"name": tok} if isinstance(tok, str) else {}
    for key in ("tokenizer_vocab_size", "vocab_size"):
        if key in meta:
            found["vocab_size"] = meta[key]
    return found


def _check_tokenizer(path: Path, meta: dict[str, Any], records: list[Record], texts: list[str | None], tokenizer):
    recorded = _meta_tokenizer(meta)
    mine = tokenizer_fingerprint(tokenizer)
    where = f"{path / 'meta.json'} records tokenizer {recorded.get('name', '?')!r}"
    if "vocab_size" in recorded and int(recorded["vocab_size"]) != mine["vocab_size"]:
        raise DatasetError(
            f"dataset made with another tokenizer: {where} with {recorded['vocab_size']} tokens, "
            f"but {mine['name']!r} has {mine['vocab_size']}. Rebuild the dataset with this model (peft-cca localize)."
        )
    if "sha256" in recorded:
        if recorded["sha256"] != mine["sha256"]:
            raise DatasetError(
                f"dataset made with another tokenizer: {where} whose vocabulary differs from {mine['name']!r}'s. "
                "Rebuild the dataset with this model (peft-cca localize)."
            )
        return
    # No fingerprint: the ids must decode to the stored text for at least one of the first records.
    pairs = [(r, t) for r, t in zip(records, texts, strict=True) if t][:DECODE_CHECKS]
    if pairs and not any(
        tokenizer.decode(list(r.prefix_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False) == t
        for r, t in pairs
    ):
        raise DatasetError(
            f"dataset made with another tokenizer: none of the first {len(pairs)} prefix_ids decode to their "
            f"prefix_text with {mine['name']!r}. Rebuild the dataset with this model (peft-cca localize)."
        )


def _drop_without_signal(records: list[Record], file: Path) -> list[Record]:
    """Records whose desired token is their undesired one: logit_d - logit_u is 0 under any mask, no signal."""
    kept = [r for r in records if r.desired != r.undesired]
    if not kept:
        raise DatasetError(
            f"{file}: all {len(records)} records have desired_token_id == undesired_token_id, so DCM has nothing "
            "to learn (an empty circuit); rebuild the dataset with `peft-cca localize`"
        )
    if len(kept) < len(records):
        logger.warning(
            "%s: skipped %d of %d records whose desired token equals their undesired token (no signal)",
            file,
            len(records) - len(kept),
            len(records),
        )
    return kept


def load_records(
    data: str | Path,
    vocab_size: int | None = None,
    tokenizer=None,
    splits: tuple[str, ...] | None = None,
) -> list[Record]:
    """Records of ``<data>/records.jsonl`` (or a .jsonl file), checked against the model's vocabulary.

    Raises :class:`DatasetError` for a missing or empty dataset, malformed records, token ids outside
    ``vocab_size`` (the model's embedding rows) and a dataset made with another tokenizer.
    """
    path = Path(data)
    file = path if path.suffix == ".jsonl" else path / "records.jsonl"
    if not file.exists():
        raise DatasetError(f"no Error-Localization dataset at {file}; run `peft-cca localize` first")
    # Parsed by hand rather than with `datasets` so every error names the file and line number.
    records: list[Record] = []
    texts: list[str | None] = []
    lines: list[int] = []
    for number, line in enumerate(file.read_bytes().splitlines(), start=1):
        if line.strip():
            record, text = _parse(line, number, file)
            records.append(record)
            texts.append(text)
            lines.append(number)
    if not records:
        raise DatasetError(f"{file} holds no records: the Error-Localization dataset is empty")
    if vocab_size is not None:
        for number, record in zip(lines, records, strict=True):
            bad = [i for i in (*record.prefix_ids, record.desired, record.undesired) if i >= vocab_size]
            if bad:
                raise DatasetError(
                    f"{file}: line {number} ({record.problem_id}): token ids {bad[:5]} are outside the model's "
                    f"vocabulary of {vocab_size}: the dataset was made for another model; use that model, or rebuild "
                    "the dataset with `peft-cca localize` for this one"
                )
    meta_file = file.parent / "meta.json"
    if tokenizer is not None:
        meta = _read_meta(meta_file) if meta_file.exists() else {}
        _check_tokenizer(file.parent, meta, records, texts, tokenizer)
    if splits is not None:
        records = [r for r in records if r.split in splits]
        if not records:
            raise DatasetError(f"{file} has no records in split(s) {splits}")
    records = _drop_without_signal(records, file)
    logger.info("loaded %d Error-Localization records from %s", len(records), file)
    return records
