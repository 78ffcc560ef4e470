"""Stage 1's ``records.jsonl`` and ``progress.jsonl``: the writer that appends them and the reader every later stage
uses, side by side.

The writer is incremental and resumable. ``records.jsonl`` holds one record per pivot (the schema of DESIGN.md);
``progress.jsonl`` one line per finished problem (greedy correctness, whether a counterfactual and a pivot were found,
tokens spent). A problem counts as done only once its progress line is written, after its record; on restart, records
of unfinished problems and a torn last line are dropped, so a killed run resumes to the same dataset; a damaged line
anywhere else is refused with its file and line number.

The reader guards against the silent failure to fear: a dataset made with another tokenizer still holds valid
integers, and DCM would happily learn a circuit for nonsense prefixes. So :func:`load_records` compares the
vocabulary fingerprint stage 1 recorded in ``meta.json`` (:mod:`~peft_cca.localize.folder`) with the tokenizer in
use, and where a format-1 folder recorded none it checks that the ids decode back to the stored ``prefix_text``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object
from peft_cca.localize.folder import has_meta, meta_path, read_meta, read_summary, tokenizer_fingerprint, why_no_records
from peft_cca.runtime.runfolder import atomic_write_text

logger = logging.getLogger(__name__)

RECORDS = "records.jsonl"
PROGRESS = "progress.jsonl"
RECORD_FIELDS = (
    "problem_id",
    "group_id",
    "split",
    "method",
    "prefix_text",
    "prefix_ids",
    "desired_token_id",
    "desired_token",
    "undesired_token_id",
    "undesired_token",
    "correct_trace",
    "question",
    "gold_answer",
)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path``. Only the last line may be torn (a killed writer stops before its newline): it is
    dropped and its problem recomputed. A bad line anywhere else is damage no kill leaves: refuse, naming it."""
    if not path.exists():
        return []
    *lines, last = path.read_bytes().split(b"\n")  # ``last`` is empty when the file ends with a newline
    rows = [_row(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if last.strip():
        with contextlib.suppress(UsageError):
            rows.append(_row(path, len(lines) + 1, last))
    return rows


def _row(path: Path, number: int, line: bytes) -> dict[str, Any]:
    remedy = f"the run folder is damaged: delete {path.parent} or rerun with --overwrite to start afresh"
    row = parse_object(line, path, remedy, line=number)
    if not isinstance(row.get("problem_id"), str):
        raise UsageError(f"{path}: line {number}: the object has no problem_id; {remedy}")
    return row


class DatasetWriter:
    """Appends records and progress lines, and knows which problems a previous run already finished."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.progress: dict[str, dict[str, Any]] = {row["problem_id"]: row for row in _read_jsonl(self.path(PROGRESS))}
        records = [r for r in _read_jsonl(self.path(RECORDS)) if r.get("problem_id") in self.progress]
        # Rewrite both files clean: no torn lines, no records of problems that did not finish.
        self._rewrite(RECORDS, records)
        self._rewrite(PROGRESS, list(self.progress.values()))

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def _rewrite(self, name: str, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path(name), "".join(json.dumps(row) + "\n" for row in rows))

    def done(self, problem_id: str) -> bool:
        return problem_id in self.progress

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with self.path(name).open("a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def finish(self, problem_id: str, status: dict[str, Any], record: dict[str, Any] | None) -> None:
        """Write a problem's record (if any), then mark it done."""
        if record is not None:
            self._append(RECORDS, record)
        row = {"problem_id": problem_id, **status}
        self._append(PROGRESS, row)
        self.progress[problem_id] = row


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


def _check_tokenizer(folder: Path, records: list[Record], texts: list[str | None], tokenizer) -> None:
    recorded = read_meta(folder, error=DatasetError).tokenizer if has_meta(folder) else {}
    mine = tokenizer_fingerprint(tokenizer)
    where = f"{meta_path(folder)} records tokenizer {recorded.get('name', '?')!r}"
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
    # A format-1 folder (no fingerprint): the ids must decode to the stored text for one of the first records.
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
    file = path if path.suffix == ".jsonl" else path / RECORDS
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
        why = why_no_records(read_summary(file.parent, error=DatasetError))
        raise DatasetError(f"{file} holds no records: stage 1 wrote none ({why})")
    if vocab_size is not None:
        for number, record in zip(lines, records, strict=True):
            bad = [i for i in (*record.prefix_ids, record.desired, record.undesired) if i >= vocab_size]
            if bad:
                raise DatasetError(
                    f"{file}: line {number} ({record.problem_id}): token ids {bad[:5]} are outside the model's "
                    f"vocabulary of {vocab_size}: the dataset was made for another model; use that model, or rebuild "
                    "the dataset with `peft-cca localize` for this one"
                )
    if tokenizer is not None:
        _check_tokenizer(file.parent, records, texts, tokenizer)
    if splits is not None:
        records = [r for r in records if r.split in splits]
        if not records:
            raise DatasetError(f"{file} has no records in split(s) {splits}")
    records = _drop_without_signal(records, file)
    logger.info("loaded %d Error-Localization records from %s", len(records), file)
    return records


def records_in_split(folder: str | Path, split: str) -> int:
    """How many records of ``<folder>/records.jsonl`` are in ``split`` (0 without the file); a damaged line is one
    error naming it."""
    path = Path(folder) / RECORDS
    lines = path.read_bytes().splitlines() if path.is_file() else []
    rows = (
        parse_object(line, path, _FIX, line=n, error=DatasetError) for n, line in enumerate(lines, 1) if line.strip()
    )
    return sum(1 for row in rows if row.get("split", "train") == split)
