"""GSM-Symbolic in its published format (``apple/GSM-Symbolic``: id, instance, question, answer, original_id).

The data is CC BY-NC-ND and never shipped here: it comes from the hub through ``datasets`` or from a local
JSONL the user points at. Each template id is a group, so splits and the accuracy filter work per template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from peft_cca.tasks.problem import Problem

HUB_DATASET = "apple/GSM-Symbolic"
CONFIGS = ("main", "p1", "p2")


def gold_answer(answer: str) -> str:
    """The number after ``####`` in a GSM-style worked answer, without commas."""
    return answer.split("####")[-1].strip().replace(",", "")


def to_problems(rows: Iterable[Mapping[str, Any]], config: str) -> list[Problem]:
    return [
        Problem(
            id=f"gsm-symbolic:{config}:{row['id']}:{row['instance']}",
            group_id=f"gsm-symbolic/{row['id']}",
            question=row["question"],
            answer=gold_answer(row["answer"]),
            source=f"gsm-symbolic:{config}",
            metadata={"original_id": row.get("original_id")},
        )
        for row in rows
    ]


def load_gsm_symbolic_hub(config: str = "main", split: str = "test") -> list[Problem]:
    """The hub dataset (needs network access or a populated HF cache)."""
    import datasets

    if config not in CONFIGS:
        raise ValueError(f"GSM-Symbolic config {config!r}: expected one of {CONFIGS}")
    return to_problems(datasets.load_dataset(HUB_DATASET, config, split=split), config)


def load_gsm_symbolic_file(path: str | Path, config: str | None = None) -> list[Problem]:
    """A local JSONL in the published format."""
    import datasets

    dataset = datasets.Dataset.from_json(str(path))
    return to_problems(dataset, config or Path(path).stem)
