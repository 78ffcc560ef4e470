"""GSM-Symbolic in its published format (``apple/GSM-Symbolic``: id, instance, question, answer, original_id).

The data is CC BY-NC-ND and never shipped here: it comes from the hub through ``datasets`` or from a local
JSONL the user points at. Each template id is a group, so splits and the accuracy filter work per template;
the worked answer before ``####`` is the problem's solution, which LoRA's SFT learns from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object
from peft_cca.tasks.answers import parse_number
from peft_cca.tasks.problem import Problem

HUB_DATASET = "apple/GSM-Symbolic"
CONFIGS = ("main", "p1", "p2")
KEYS = ("id", "instance", "question", "answer")


def gold_answer(answer: str, where: str = "answer") -> str:
    """The number after ``####`` in a GSM-style worked answer, without commas; anything else is refused."""
    if "####" not in answer:
        raise UsageError(f"{where}: the answer has no '#### <number>' line; GSM-Symbolic answers end with one")
    gold = answer.split("####")[-1].strip().replace(",", "")
    if parse_number(gold) is None:
        raise UsageError(f"{where}: the gold answer after '####' is {gold!r}, not a number; fix the row")
    return gold


def to_problems(rows: Iterable[tuple[str, Mapping[str, Any]]], config: str) -> list[Problem]:
    """Problems from (where, row) pairs; ``where`` names the file and line (or hub row) for errors."""
    problems = []
    for where, row in rows:
        missing = [key for key in KEYS if key not in row]
        if missing:
            raise UsageError(f"{where}: missing key(s) {', '.join(missing)}; a GSM-Symbolic row has {', '.join(KEYS)}")
        answer = str(row["answer"])
        problems.append(
            Problem(
                id=f"gsm-symbolic:{config}:{row['id']}:{row['instance']}",
                group_id=f"gsm-symbolic/{row['id']}",
                question=str(row["question"]),
                answer=gold_answer(answer, where),
                solution=answer.split("####")[0].strip() or None,
                source=f"gsm-symbolic:{config}",
                metadata={"original_id": row.get("original_id")},
            )
        )
    return problems


def load_gsm_symbolic_hub(config: str = "main", split: str = "test") -> list[Problem]:
    """The hub dataset (needs network access or a populated HF cache)."""
    import datasets

    if config not in CONFIGS:
        raise UsageError(f"gsm-symbolic:{config}: unknown config; use one of {', '.join(CONFIGS)}")
    dataset = datasets.load_dataset(HUB_DATASET, config, split=split)
    return to_problems(((f"{HUB_DATASET} {config} row {i}", row) for i, row in enumerate(dataset)), config)


def load_gsm_symbolic_file(path: str | Path) -> list[Problem]:
    """A local JSONL in the published format.

    Read line by line rather than with ``datasets.Dataset.from_json`` so that every error names its line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"gsm-symbolic-file:{path}: cannot read it ({error.strerror}); check the path") from error
    except UnicodeDecodeError as error:
        raise UsageError(f"gsm-symbolic-file:{path}: not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = parse_object(line, path, "the file needs one JSON object per line", line=number)
        rows.append((f"{path}:{number}", row))
    if not rows:
        raise UsageError(f"gsm-symbolic-file:{path}: the file holds no problems; one JSON object per line")
    return to_problems(rows, path.stem)
