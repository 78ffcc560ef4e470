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


def _parse(line: str, number: int, path: Path) -> Record:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise DatasetError(f"{path}:{number}: record lacks {missing}; is this an Error-Localization dataset?")
    ids = raw["prefix_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise DatasetError(f"{path}:{number}: prefix_ids must be a non-empty list of token ids")
    split = raw.get("split", "train")
    if split not in SPLITS:
        raise DatasetError(f"{path}:{number}: split {split!r} is not one of {SPLITS}")
    return Record(
        prefix_ids=tuple(ids),
        desired=int(raw["desired_token_id"]),
        undesired=int(raw["undesired_token_id"]),
        split=split,
        problem_id=str(raw.get("problem_id", number)),
    )


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
            f"{file}: every record has desired_token_id == undesired_token_id, so DCM has nothing to learn; "
            "rebuild the dataset with `peft-cca localize`"
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
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if line.strip():
            records.append(_parse(line, number, file))
            texts.append(json.loads(line).get("prefix_text"))
    if not records:
        raise DatasetError(f"{file} holds no records: the Error-Localization dataset is empty")
    if vocab_size is not None:
        for number, record in enumerate(records, start=1):
            ids = (*record.prefix_ids, record.desired, record.undesired)
            bad = [i for i in ids if not 0 <= i < vocab_size]
            if bad:
                raise DatasetError(
                    f"record {number} ({record.problem_id}) has token ids {bad[:5]} outside the model's vocabulary "
                    f"of {vocab_size}: the dataset was made for another model"
                )
    meta_file = file.parent / "meta.json"
    if tokenizer is not None:
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        _check_tokenizer(file.parent, meta, records, texts, tokenizer)
    if splits is not None:
        records = [r for r in records if r.split in splits]
        if not records:
            raise DatasetError(f"{file} has no records in split(s) {splits}")
    records = _drop_without_signal(records, file)
    logger.info("loaded %d Error-Localization records from %s", len(records), file)
    return records
