"""The offline general suite: lm-eval's own harness on benchmark data from installed packages, without network."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.evaluation import general_data
from peft_cca.evaluation.general_data import MissingDataError
from peft_cca.evaluation.general_suite import run_general_suite
from peft_cca.evaluation.offline_tasks import (
    OFFLINE_TASKS,
    PAPER_TASKS,
    STANDARD_TASKS,
    DataFiles,
    available_tasks,
    check_task_data,
    installed_tasks,
    mmlu_subjects,
    task_configs,
)

# the paper's tasks; the standard benchmarks (the default suite) are tested in test_olmo_suite.py
TINY_LIMITS = dict.fromkeys(PAPER_TASKS, 2)
BIGBENCH_TASKS = ("cca_truthfulqa_mc1_bigbench", "cca_truthfulqa_mc2_bigbench", "cca_closedbook_wikidata")
# the tasks whose data scripts/setup.sh installs: they run on every machine the README's commands set up
INSTALLED_TASKS = ("cca_mmlu_stem", "cca_mmlu_humanities", "cca_triviaqa", "cca_closedbook_nq", "cca_gsm8k")
WIKIDATA_FACTS = [("The capital of France is", "Paris"), ("The author of Hamlet is", "William Shakespeare")]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama"), tiny_tokenizer()


def _write_wikidata(path: Path, facts) -> Path:
    """Closed-book facts in BIG-bench's ``qa_wikidata`` format: ``{"examples": [{"input", "target"}]}``."""
    path.write_text(json.dumps({"examples": [{"input": prompt, "target": target} for prompt, target in facts]}))
    return path


@pytest.fixture(scope="module")
def bigbench_files(tmp_path_factory):
    """BIG-bench-format files of our own, so the optional tasks run wherever the tests do."""
    folder = tmp_path_factory.mktemp("bigbench")
    truthfulqa = _write_truthfulqa(folder / "truthful_qa", flip=False)
    wikidata = _write_wikidata(folder / "wikidata.json", WIKIDATA_FACTS)
    return DataFiles(
        truthfulqa_mc=truthfulqa.truthfulqa_mc, truthfulqa_questions=truthfulqa.truthfulqa_questions, wikidata=wikidata
    )


@pytest.fixture(scope="module")
def tiny_scores(tiny, bigbench_files):
    model, tokenizer = tiny
    return run_general_suite(
        model, tokenizer, PAPER_TASKS, limits=TINY_LIMITS, batch_size=4, max_gen_toks=8, files=bigbench_files
    )


def _suite(tiny, tasks, files=None, limit=None):
    model, tokenizer = tiny
    limits = dict.fromkeys(tasks, limit)
    return run_general_suite(model, tokenizer, tasks, limits=limits, batch_size=4, max_gen_toks=8, files=files)


def _harness(tiny, config, limit=None):
    """lm-eval's simple_evaluate on one config, with the per-document samples."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny
    return simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4),
        tasks=[config],
        task_manager=TaskManager(include_defaults=False),
        limit=limit,
        log_samples=True,
        gen_kwargs={"max_gen_toks": 8},
        bootstrap_iters=0,
    )


def _answers(output, task: str, filter_name: str) -> dict[str, str]:
    """The model's filtered answer to each question."""
    return {
        sample["doc"]["question"]: sample["filtered_resps"][0]
        for sample in output["samples"][task]
        if sample["filter"] == filter_name
    }


def test_mmlu_subjects_are_lm_evals_groups():
    stem, humanities = mmlu_subjects("stem"), mmlu_subjects("humanities")
    assert (len(stem), len(humanities)) == (19, 13)
    assert {"abstract_algebra", "college_physics", "machine_learning"} <= set(stem)
    assert {"philosophy", "world_religions", "high_school_us_history"} <= set(humanities)
    configs = task_configs("cca_mmlu_stem")
    assert [config["task"] for config in configs] == [f"cca_mmlu_{subject}" for subject in stem]
    # lm-eval's own prompt and choices: only the data source is replaced
    assert configs[0]["doc_to_choice"] == ["A", "B", "C", "D"] and configs[0]["doc_to_text"].endswith("Answer:")
    assert configs[0]["dataset_path"] is None and callable(configs[0]["custom_dataset"])


def test_packaged_data_is_the_real_benchmarks():
    mmlu = general_data.mmlu_records()
    assert len(mmlu) == 14_042 and len({row["subject"] for row in mmlu}) == 57
    assert set(mmlu_subjects("stem")) | set(mmlu_subjects("humanities")) <= {row["subject"] for row in mmlu}
    triviaqa = general_data.triviaqa_records()
    assert len(triviaqa) == 7_993 and len({row["question"] for row in triviaqa}) == 7_993
    aliases = [row["answer"]["aliases"] for row in triviaqa]
    assert all(names and all(isinstance(name, str) for name in names) for names in aliases)
    nq_open = general_data.nq_open_records()
    assert len(nq_open) == 3_610 and len({row["question"] for row in nq_open}) == 3_610
    assert all(row["answer"] and all(isinstance(a, str) and a for a in row["answer"]) for row in nq_open)
    gsm8k = general_data.gsm8k_records()
    assert len(gsm8k) == 1_319 and all("\n#### " in row["answer"] for row in gsm8k)
    assert set(INSTALLED_TASKS) <= set(installed_tasks())


def test_bigbench_checkout_is_the_real_benchmarks():
    try:
        general_data.bigbench_file("qa_wikidata", "task.json")
    except MissingDataError:
        pytest.skip("no BIG-bench checkout here ($PEFT_CCA_BIGBENCH): its files are optional")
    truthfulqa = general_data.truthfulqa_records()
    assert len(truthfulqa) == 299
    assert all(row["mc1_targets"]["labels"][0] == 1 and sum(row["mc1_targets"]["labels"]) == 1 for row in truthfulqa)
    assert all(row["mc2_targets"]["labels"][0] == 1 and 0 in row["mc2_targets"]["labels"] for row in truthfulqa)
    wikidata = general_data.wikidata_records()
    assert len(wikidata) == 20_442 and all(row["answer"]["aliases"] for row in wikidata)


def test_bigbench_tasks_are_installed_only_where_their_files_are(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_CCA_BIGBENCH", str(tmp_path / "benchmark_tasks"))
    assert installed_tasks() == INSTALLED_TASKS + STANDARD_TASKS
    (tmp_path / "benchmark_tasks").mkdir()
    truthfulqa = _write_truthfulqa(tmp_path / "benchmark_tasks" / "truthful_qa", flip=False)
    assert truthfulqa.truthfulqa_mc.parent == general_data.bigbench_dir() / "truthful_qa"
    assert installed_tasks() == tuple(task for task in OFFLINE_TASKS if task != "cca_closedbook_wikidata")
    (tmp_path / "benchmark_tasks" / "qa_wikidata").mkdir()
    _write_wikidata(tmp_path / "benchmark_tasks" / "qa_wikidata" / "task.json", WIKIDATA_FACTS)
    assert installed_tasks() == OFFLINE_TASKS
    check_task_data(OFFLINE_TASKS)
    # the default suite stays the standard benchmarks: the paper's tasks run by name
    assert available_tasks() == STANDARD_TASKS


def test_every_task_scores_a_tiny_model_offline(tiny_scores):
    assert list(tiny_scores) == list(PAPER_TASKS)
    assert (tiny_scores["cca_mmlu_stem"]["n"], tiny_scores["cca_mmlu_stem"]["subjects"]) == (38, 19)
    assert (tiny_scores["cca_mmlu_humanities"]["n"], tiny_scores["cca_mmlu_humanities"]["subjects"]) == (26, 13)
    for task in set(PAPER_TASKS) - {"cca_mmlu_stem", "cca_mmlu_humanities", "cca_closedbook_wikidata"}:
        assert tiny_scores[task]["n"] == 2
    assert tiny_scores["cca_closedbook_wikidata"]["n"] == len(WIKIDATA_FACTS)
    for task, metrics in tiny_scores.items():
        values = {name: value for name, value in metrics.items() if name not in ("n", "subjects")}
        assert values and all(0.0 <= value <= 1.0 for value in values.values()), (task, metrics)
    assert {"exact_match_strict-match", "exact_match_flexible-extract"} <= set(tiny_scores["cca_gsm8k"])


def test_scores_are_deterministic(tiny, tiny_scores, bigbench_files):
    tasks = ["cca_truthfulqa_mc2_bigbench", "cca_closedbook_nq"]
    assert _suite(tiny, tasks, files=bigbench_files, limit=2) == {task: tiny_scores[task] for task in tasks}


def _write_truthfulqa(folder: Path, flip: bool) -> DataFiles:
    """Three questions of two choices in BIG-bench's format; ``flip`` labels the other choice true."""
    questions = [
        ("What colour is the sky?", "The sky is blue.", "The sky is green."),
        ("What do cows drink?", "Cows drink water.", "Cows drink milk."),
        ("Where is Paris?", "Paris is in France.", "Paris is in Peru."),
    ]
    mc, answers = [], []
    for question, first, second in questions:
        true, false = (second, first) if flip else (first, second)
        mc.append({"input": question, "target_scores": {first: int(true == first), second: int(true == second)}})
        answers.append({"Question": question, "True answers": [true], "False answers": [false]})
    folder.mkdir()
    (folder / "task_mc.json").write_text(json.dumps({"examples": mc}))
    (folder / "questions.json").write_text(json.dumps({"examples": answers}))
    return DataFiles(truthfulqa_mc=folder / "task_mc.json", truthfulqa_questions=folder / "questions.json")


def test_truthfulqa_scores_follow_the_answer_key(tiny, tmp_path):
    tasks = ["cca_truthfulqa_mc1_bigbench", "cca_truthfulqa_mc2_bigbench"]
    key = _suite(tiny, tasks, files=_write_truthfulqa(tmp_path / "key", flip=False))
    flipped = _suite(tiny, tasks, files=_write_truthfulqa(tmp_path / "flipped", flip=True))
    assert key["cca_truthfulqa_mc1_bigbench"]["n"] == 3
    # the model prefers the same text whichever is labelled true: each question is right under exactly one key
    mc1 = key["cca_truthfulqa_mc1_bigbench"]["acc"], flipped["cca_truthfulqa_mc1_bigbench"]["acc"]
    assert sum(mc1) == pytest.approx(1.0) and mc1[0] != mc1[1]
    # MC2 is the probability mass on the true set: the two keys split it
    mc2 = key["cca_truthfulqa_mc2_bigbench"]["acc"], flipped["cca_truthfulqa_mc2_bigbench"]["acc"]
    assert sum(mc2) == pytest.approx(1.0) and mc2[0] != pytest.approx(0.5)


def test_mmlu_scores_follow_the_answer_key(tiny, tmp_path):
    rows = [row for row in general_data.mmlu_records() if row["subject"] == "philosophy"][:3]
    accuracies = []
    for shift in range(4):
        path = tmp_path / f"mmlu_{shift}.jsonl"
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "question": row["question"],
                        **{f"answer_{letter}": choice for letter, choice in zip("abcd", row["choices"], strict=True)},
                        "correct_answer": "ABCD"[(row["answer"] + shift) % 4],
                        "topic": "philosophy",
                    }
                )
                + "\n"
                for row in rows
            )
        )
        [config] = [c for c in task_configs("cca_mmlu_humanities", DataFiles(mmlu=path)) if "philosophy" in c["task"]]
        accuracies.append(_harness(tiny, config)["results"][config["task"]]["acc,none"])
    # the model picks one letter per question: exactly one of the four keys marks it right
    assert sum(accuracies) == pytest.approx(1.0) and len(set(accuracies)) > 1


def test_mmlu_reports_the_share_of_each_letter_picked(tiny, tiny_scores, tmp_path):
    for task in ("cca_mmlu_stem", "cca_mmlu_humanities"):
        shares = [tiny_scores[task][f"pred_{letter}"] for letter in "ABCD"]
        assert sum(shares) == pytest.approx(1.0) and all(0.0 <= share <= 1.0 for share in shares)
    # every gold on one letter: the accuracy is the share of that letter's picks
    humanities = set(mmlu_subjects("humanities"))
    rows = [row for row in general_data.mmlu_records() if row["subject"] in humanities]
    rows = [row for subject in sorted(humanities) for row in [r for r in rows if r["subject"] == subject][:2]]
    for letter in "AB":
        path = tmp_path / f"mmlu_{letter}.jsonl"
        lines = [
            {
                "question": row["question"],
                **{f"answer_{key}": choice for key, choice in zip("abcd", row["choices"], strict=True)},
                "correct_answer": letter,
                "topic": row["subject"].replace("_", " "),
            }
            for row in rows
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        scores = _suite(tiny, ["cca_mmlu_humanities"], files=DataFiles(mmlu=path))["cca_mmlu_humanities"]
        assert scores["n"] == 26 and scores["acc"] == pytest.approx(scores[f"pred_{letter}"])


def _doctored_closed_book(task: str, answers: dict[str, str], path: Path, right: bool) -> DataFiles:
    """The questions the model answered, keyed with its own answer among others (right) or with nonsense."""
    targets = {question: [answer, "zzz"] if right else ["zzz qqq"] for question, answer in answers.items()}
    if task == "cca_closedbook_wikidata":
        return DataFiles(wikidata=_write_wikidata(path, targets.items()))
    path = path.with_suffix(".jsonl")
    if task == "cca_closedbook_nq":
        path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in targets.items()))
        return DataFiles(nq_open=path)
    path.write_text("".join(json.dumps({"question": q, "answer": {"aliases": a}}) + "\n" for q, a in targets.items()))
    return DataFiles(triviaqa=path)


@pytest.mark.parametrize("task", ["cca_triviaqa", "cca_closedbook_nq", "cca_closedbook_wikidata"])
def test_closed_book_scores_exact_match_against_any_accepted_answer(tiny, tmp_path, bigbench_files, task):
    [config] = task_configs(task, bigbench_files)
    answers = _answers(_harness(tiny, config, limit=2), config["task"], "remove_whitespace")
    assert len(answers) == 2
    right = _suite(tiny, [task], files=_doctored_closed_book(task, answers, tmp_path / "right", True), limit=2)
    wrong = _suite(tiny, [task], files=_doctored_closed_book(task, answers, tmp_path / "wrong", False), limit=2)
    assert right[task] == {"exact_match": 1.0, "exact_match_stderr": 0.0, "n": 2}
    assert wrong[task]["exact_match"] == 0.0


def test_gsm8k_prompts_hold_no_test_problem_but_the_scored_one():
    """lm-eval's fixed chain-of-thought exemplars, rendered by lm-eval's own few-shot machinery."""
    from lm_eval.tasks import TaskManager, get_task_dict

    [config] = task_configs("cca_gsm8k")
    exemplars = [sample["question"] for sample in config["fewshot_config"]["samples"]]
    assert len(exemplars) == config["num_fewshot"] == 8 and config.get("fewshot_split") is None
    questions = [row["question"] for row in general_data.gsm8k_records()]
    assert not set(exemplars) & set(questions)
    [task] = get_task_dict([config], TaskManager(include_defaults=False)).values()
    task.build_all_requests(limit=5, rank=0, world_size=1)
    assert len(task.instances) == 5
    for instance in task.instances:
        prompt, scored = instance.arguments[0], instance.doc["question"]
        assert all(exemplar in prompt for exemplar in exemplars)
        assert prompt.count(scored) == 1 and prompt.endswith(f"Q: {scored}\nA:")
        assert [question for question in questions if question in prompt] == [scored]


def test_gsm8k_scores_exact_match_against_the_key(tiny, tmp_path):
    # the scored answers of the first two problems, doctored in a copy of the whole test set
    [gsm8k] = task_configs("cca_gsm8k")
    solved = _answers(_harness(tiny, gsm8k, limit=2), gsm8k["task"], "flexible-extract")
    problems = general_data.gsm8k_records()
    gsm_own, gsm_wrong = tmp_path / "gsm_own.jsonl", tmp_path / "gsm_wrong.jsonl"
    for path, answer in ((gsm_own, solved.get), (gsm_wrong, lambda q: "987654321" if q in solved else None)):
        rows = [
            {**row, "answer": f"...\n#### {answer(row['question'])}"} if answer(row["question"]) else row
            for row in problems
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    right = _suite(tiny, ["cca_gsm8k"], files=DataFiles(gsm8k=gsm_own), limit=2)
    wrong_scores = _suite(tiny, ["cca_gsm8k"], files=DataFiles(gsm8k=gsm_wrong), limit=2)
    assert right["cca_gsm8k"]["exact_match_flexible-extract"] == 1.0
    assert wrong_scores["cca_gsm8k"]["exact_match_flexible-extract"] == 0.0


@pytest.mark.parametrize(
    ("package", "read"),
    [
        (general_data.MMLU, general_data.mmlu_records),
        (general_data.GSM8K, general_data.gsm8k_records),
        (general_data.TRIVIAQA, general_data.triviaqa_records),
        (general_data.NQ_OPEN, general_data.nq_open_records),
        (general_data.WIKIPEDIA, general_data.wikipedia_documents),
    ],
)
def test_a_missing_data_package_is_one_line_with_the_install_command(monkeypatch, package, read):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == package.distribution:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(MissingDataError) as error:
        read()
    message = str(error.value)
    assert "\n" not in message and package.distribution in message and f"`{package.install}`" in message


def test_missing_bigbench_files_name_the_checkout_and_where_it_goes(monkeypatch, tmp_path, tiny):
    monkeypatch.delenv("PEFT_CCA_BIGBENCH", raising=False)
    monkeypatch.setenv("PEFT_CCA_CACHE", str(tmp_path))
    with pytest.raises(MissingDataError) as checked:
        check_task_data(["cca_mmlu_stem", "cca_truthfulqa_mc1_bigbench"])
    with pytest.raises(MissingDataError) as error:
        _suite(tiny, ["cca_truthfulqa_mc1_bigbench"])  # the error reaches the caller through lm-eval
    message = str(error.value)
    assert message == str(checked.value) and "\n" not in message
    assert "https://github.com/google/BIG-bench" in message and "PEFT_CCA_BIGBENCH=" in message
    assert str(tmp_path / "general-data" / "bigbench") in message


def test_an_unknown_task_is_refused_by_name_before_any_data_or_model_work(tiny):
    from peft_cca.errors import UsageError

    for call in (lambda: check_task_data(["cca_mmlu_stem", "mmlu_typo"]), lambda: _suite(tiny, ["mmlu_typo"])):
        with pytest.raises(UsageError, match="unknown offline task\\(s\\) mmlu_typo; choose from cca_mmlu_stem"):
            call()
