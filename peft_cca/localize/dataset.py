"""Stage 1's dataset as ``datasets`` objects, for the Python API and Trainer habits (the files themselves are read
and written by :mod:`~peft_cca.localize.records` and :mod:`~peft_cca.localize.folder`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

from peft_cca.errors import UsageError
from peft_cca.localize.folder import has_meta, read_raw_meta, read_summary, why_no_records
from peft_cca.localize.records import RECORDS, _read_jsonl


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
    if not path.is_file() or not has_meta(folder):
        raise UsageError(f"{folder} holds no Error-Localization run (records.jsonl and meta.json): run localize first")
    meta = read_raw_meta(folder)
    rows = _read_jsonl(path)
    if not rows:
        raise UsageError(f"{path} holds no records: stage 1 wrote none ({why_no_records(read_summary(folder))})")
    splits: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        named = {TEXT_COLUMNS.get(key, key): value for key, value in row.items()}
        splits.setdefault(str(row.get("split", "train")), []).append(named)
    info = datasets.DatasetInfo(description=json.dumps(meta, sort_keys=True))
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_list(split_rows, info=info) for name, split_rows in sorted(splits.items())}
    )
