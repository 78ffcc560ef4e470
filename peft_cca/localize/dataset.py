"""The Error-Localization dataset on disk: incremental, resumable JSONL.

``records.jsonl`` holds one record per pivot (the schema of DESIGN.md); ``progress.jsonl`` holds one line per
finished problem (greedy correctness, whether a counterfactual and a pivot were found, tokens spent). A
problem counts as done only once its progress line is written, after its record; on restart, records of
unfinished problems and a torn last line are dropped, so a killed run resumes to the same dataset; a damaged
line anywhere else is refused with its file and line number.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import datasets

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object
from peft_cca.runtime.runfolder import atomic_write_text

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


def load_dataset(out_dir: str | Path) -> datasets.Dataset:
    """The Error-Localization dataset of a run folder as a ``datasets.Dataset``."""
    path = Path(out_dir) / RECORDS
    if path.stat().st_size == 0:
        return datasets.Dataset.from_list([])
    return datasets.Dataset.from_json(str(path))


# records.jsonl's text fields under the names CCATrainer's text rows use (as DPOTrainer's prompt/chosen/rejected)
TEXT_COLUMNS = {"prefix_text": "prompt", "desired_token": "desired", "undesired_token": "undesired"}


def load_error_localization(folder: str | Path) -> datasets.DatasetDict:
    """A stage-1 run folder as a ``datasets.DatasetDict`` with one split per split its records hold (``train``,
    and ``validation`` when stage 1 localized it), ready for ``CCATrainer(train_dataset=data["train"])``.

    Each row has the text (``prompt``, ``desired``, ``undesired``), the token ids (``prefix_ids``,
    ``desired_token_id``, ``undesired_token_id``) and its provenance (``problem_id``, ``group_id``, ``method``,
    ``correct_trace``, ``question``, ``gold_answer``). ``info.description`` of every split is the run's
    ``meta.json`` as JSON (model, task, seed, prompt style, sampling): ``json.loads(data["train"].info.description)``.
    """
    folder = Path(folder)
    path = folder / RECORDS
    meta_path = folder / "meta.json"
    if not path.is_file() or not meta_path.is_file():
        raise UsageError(f"{folder} holds no Error-Localization run (records.jsonl and meta.json): run localize first")
    meta = parse_object(meta_path.read_bytes(), meta_path, "rerun stage 1 (localize) to rewrite it")
    rows = _read_jsonl(path)
    if not rows:
        raise UsageError(f"{path} holds no records: stage 1 found no pivot (see {folder / 'summary.json'} for why)")
    splits: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        named = {TEXT_COLUMNS.get(key, key): value for key, value in row.items()}
        splits.setdefault(str(row.get("split", "train")), []).append(named)
    info = datasets.DatasetInfo(description=json.dumps(meta, sort_keys=True))
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_list(split_rows, info=info) for name, split_rows in sorted(splits.items())}
    )
