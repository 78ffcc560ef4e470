import ast
import csv
import json
from pathlib import Path

import pytest

from peft_cca.errors import UsageError
from peft_cca.tasks import assign_splits, load_problems, parse_spec
from peft_cca.tasks.checkers import ChoiceChecker, NumericChecker, StringChecker

ROWS = [
    {"q": {"text": "What is 2 + 3?"}, "sol": "2 + 3 = 5\n#### 5", "meta": {"topic": "add"}, "uid": "a1"},
    {"q": {"text": "What is 7 - 4?"}, "sol": "7 - 4 = 3\n#### 3", "meta": {"topic": "sub"}, "uid": "a2"},
    {"q": {"text": "What is 1 + 1?"}, "sol": "#### 2", "meta": {"topic": "add"}, "uid": "a3"},
]
NESTED = "question=q.text&answer=sol&group=meta.topic&id=uid"
MCQ = [
    {"question": "Capital of France?", "A": "Paris", "B": "Rome", "C": "Berlin", "D": "Madrid", "answer": "A"},
    {"question": "Capital of Spain?", "A": "Paris", "B": "Rome", "C": "Berlin", "D": "Madrid", "answer": "D"},
    {"question": "Yes or no?", "A": "yes", "B": "no", "C": "", "D": "", "answer": "B"},
]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep the arrow caches `datasets` writes for loaded files inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_jsonl_with_nested_fields_groups_ids_and_gsm_answers(tmp_path):
    path = _jsonl(tmp_path / "math.jsonl", ROWS)
    problems = load_problems(f"file:{path}?{NESTED}")
    assert [p.id for p in problems] == ["file:math.jsonl:a1", "file:math.jsonl:a2", "file:math.jsonl:a3"]
    assert [p.group_id for p in problems] == ["file:math.jsonl/add", "file:math.jsonl/sub", "file:math.jsonl/add"]
    first = problems[0]
    assert (first.question, first.answer, first.solution) == ("What is 2 + 3?", "5", "2 + 3 = 5")
    assert first.scorer == NumericChecker("5") and first.score("The answer is 5.") and not first.score("It is 6")
    assert first.fields == ROWS[0] and first.metadata["row"] == 0 and first.choices == ()
    assert problems[2].solution is None  # nothing before "####"
    assert first.source == f"file:{path}"


def test_defaults_are_question_and_answer_fields_one_group_and_row_ids(tmp_path):
    path = _jsonl(tmp_path / "plain.jsonl", [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "answer": "4"}])
    problems = load_problems(f"file:{path}")
    assert [(p.id, p.group_id, p.answer) for p in problems] == [
        ("file:plain.jsonl:0", "file:plain.jsonl", "2"),
        ("file:plain.jsonl:1", "file:plain.jsonl", "4"),
    ]


def test_csv_choices_from_one_column_per_choice(tmp_path):
    path = _csv(tmp_path / "mcq.csv", MCQ)
    problems = load_problems(f"file:{path}?format=choice&choices=A,B,C,D")
    assert problems[0].question == "Capital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid"
    assert problems[0].metadata["question"] == "Capital of France?"
    assert [p.answer for p in problems] == ["A", "D", "B"]
    assert problems[1].scorer == ChoiceChecker(3, ("Paris", "Rome", "Berlin", "Madrid"))
    assert problems[2].choices == ("yes", "no")  # empty cells are no choices
    assert problems[1].score("The answer is Madrid.") and problems[2].score("The answer is (B).")


def test_csv_choices_stored_as_a_json_list(tmp_path):
    rows = [{"q": "Pick two", "opts": json.dumps(["one", "two", "three"]), "a": 1}]
    [problem] = load_problems(f"file:{_csv(tmp_path / 'd.csv', rows)}?question=q&answer=a&format=choice&choices=opts")
    assert problem.choices == ("one", "two", "three") and problem.answer == "B"


def test_parquet_with_list_choices_and_string_answers(tmp_path):
    import datasets

    rows = [
        {"question": "Capital of Italy?", "choices": ["Paris", "Rome"], "answer": 1, "word": "Rome"},
        {"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": 0, "word": "Paris"},
    ]
    path = tmp_path / "mcq.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    choice = load_problems(f"file:{path}?format=choice")
    assert [p.answer for p in choice] == ["B", "A"] and choice[0].score("The answer is B.")
    words = load_problems(f"file:{path}?answer=word&format=string")
    assert words[0].scorer == StringChecker(("Rome",)) and words[0].score("The answer is rome.")
    assert words[0].choices == ()  # choices are read only for format=choice or when choices= names them


def test_json_array_file_and_a_list_index_in_a_path(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"question": "q1", "answers": {"text": ["x", "y"]}}]))
    [problem] = load_problems(f"file:{path}?answer=answers.text.1&format=string")
    assert problem.answer == "y"


def test_a_field_missing_from_one_line_is_one_error_naming_field_file_and_fields(tmp_path):
    rows = [{"question": "q1", "answer": "1", "meta": {"topic": "t"}}, {"question": "q2", "meta": {"topic": "t"}}]
    path = _jsonl(tmp_path / "gap.jsonl", rows)
    with pytest.raises(UsageError) as caught:
        load_problems(f"file:{path}")
    message = str(caught.value)
    assert message == (
        f"file:{path} row 1: no value for field 'answer' (missing or null); the fields with values are question, "
        "meta; fill it or drop the row"
    )


def test_a_field_no_row_has_names_the_fields_that_exist(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(UsageError, match=rf"^file:{path}: no field 'problem'; its fields are q, sol, meta, uid; name"):
        load_problems(f"file:{path}?question=problem&answer=sol")
    with pytest.raises(
        UsageError, match=r"row 0: no field 'meta.level'; the fields there are meta.topic; name another"
    ):
        load_problems(f"file:{path}?question=q.text&answer=sol&group=meta.level")


def test_a_choice_out_of_range_names_the_row(tmp_path):
    rows = [{**MCQ[0]}, {**MCQ[1], "answer": "E"}]
    path = _csv(tmp_path / "mcq.csv", rows)
    with pytest.raises(UsageError, match=rf"^file:{path} row 1: the answer 'E' is out of range: the row has 4 choices"):
        load_problems(f"file:{path}?format=choice&choices=A,B,C,D")


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        (
            {"text": ["a", "b"], "label": ["A", "B"]},
            r"row 0: the choices field 'choices' holds fields \(choices.text, ",
        ),
        ("a;b", r"row 0: the choices field 'choices' holds str 'a;b', not a list; store a list"),
        ([], r"row 0: the row has no choices"),
        ([str(i) for i in range(27)], r"row 0: the row has 27 choices; letters name at most 26 \(A-Z\)"),
    ],
)
def test_choices_that_are_no_list_are_refused(tmp_path, choices, message):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "choices": choices, "answer": 0}])
    with pytest.raises(UsageError, match=message):
        load_problems(f"file:{path}?format=choice")


def test_duplicate_ids_are_refused_naming_both_rows(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{**row, "uid": "same"} for row in ROWS[:2]])
    with pytest.raises(UsageError, match=r"id 'file:d.jsonl:same' comes in rows 0 and 1; the id field must be unique"):
        load_problems(f"file:{path}?{NESTED}")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.jsonl", r"no such file; check the path"),
        ("data.xlsx", r"cannot tell the file's format; name it .jsonl, .json, .csv, .tsv, .parquet"),
        ("folder", r"is a folder; use hf:.*folder to load a folder of data files"),
        ("broken.jsonl", r"datasets cannot load it \(ArrowInvalid: JSON parse error"),
    ],
)
def test_bad_files_are_one_usage_error_line(tmp_path, target, message):
    (tmp_path / "data.xlsx").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken.jsonl").write_text('{"question": "q", "answer": 1}\n{oops\n')
    with pytest.raises(UsageError, match=message) as caught:
        load_problems(f"file:{tmp_path / target}")
    assert "\n" not in str(caught.value)


def test_limit_reads_only_the_first_rows(tmp_path):
    rows = [{"question": f"q{i}", "answer": i} for i in range(5)] + [{"question": "bad", "answer": "x"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    assert [p.answer for p in load_problems(f"file:{path}", limit=3)] == ["0", "1", "2"]
    with pytest.raises(UsageError, match=r"row 5: the answer 'x' is not a number"):
        load_problems(f"file:{path}")


def test_spec_values_of_generic_sources_stay_as_written():
    kind, target, options = parse_spec("hf:org/data?config=2020&split=train+test&choices=A,B&format=regex:\\d{1,3}")
    assert (kind, target) == ("hf", "org/data")
    assert options == {"config": "2020", "split": "train+test", "choices": "A,B", "format": "regex:\\d{1,3}"}
    with pytest.raises(UsageError, match=r"unknown option\(s\) size"):
        parse_spec("file:d.jsonl?size=3")
    with pytest.raises(UsageError, match=r"unknown option\(s\) config"):
        parse_spec("file:d.jsonl?config=main")


def _hub_rows(n: int, split: str) -> list[dict]:
    return [{"question": f"{split} {i} + 1?", "answer": f"#### {i + 1}", "level": i % 2} for i in range(n)]


def test_hf_saved_dataset_folder(tmp_path):
    import datasets

    folder = tmp_path / "my_gsm"
    datasets.Dataset.from_list(_hub_rows(4, "train")).save_to_disk(str(folder))
    problems = load_problems(f"hf:{folder}?group=level")
    assert [p.id for p in problems] == [f"hf:my_gsm:{i}" for i in range(4)]  # the folder's name, not its path
    assert {p.group_id for p in problems} == {"hf:my_gsm/0", "hf:my_gsm/1"}
    assert problems[3].answer == "4" and problems[3].score("The answer is 4.")
    with pytest.raises(UsageError, match=r"a folder saved with save_to_disk has no configs; drop config="):
        load_problems(f"hf:{folder}?config=main")


def test_hf_saved_dataset_dict_needs_its_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    splits = {name: datasets.Dataset.from_list(_hub_rows(3, name)) for name in ("train", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    problems = load_problems(f"hf:{folder}?split=test")
    assert problems[0].question == "test 0 + 1?" and problems[0].id == "hf:dd/test:0"
    with pytest.raises(UsageError, match=rf"^hf:{folder}: several splits; its splits are train, test; add split="):
        load_problems(f"hf:{folder}")
    with pytest.raises(UsageError, match=r"no split 'valid'; its splits are train, test"):
        load_problems(f"hf:{folder}?split=valid")


def test_hf_folder_of_data_files_loads_as_the_hub_would(tmp_path):
    folder = tmp_path / "hubcopy"
    (folder / "data").mkdir(parents=True)
    _jsonl(folder / "data" / "train.jsonl", _hub_rows(3, "train"))
    _jsonl(folder / "data" / "test.jsonl", _hub_rows(2, "test"))
    problems = load_problems(f"hf:{folder}?split=test[:1]+train[:2]")
    assert [p.question for p in problems] == ["test 0 + 1?", "train 0 + 1?", "train 1 + 1?"]
    assert problems[0].id == "hf:hubcopy/test[:1]+train[:2]:0"
    with pytest.raises(UsageError, match=r"datasets cannot load it \(ValueError: Unknown split \"valid\""):
        load_problems(f"hf:{folder}?split=valid")


def test_hf_hub_id_offline_is_one_usage_error_line():
    with pytest.raises(UsageError, match=r"^hf:nobody/no-such-dataset: datasets cannot load it \(") as caught:
        load_problems("hf:nobody/no-such-dataset?split=test")
    assert "\n" not in str(caught.value)


def test_groups_split_and_suites_like_the_other_sources(tmp_path):
    rows = [{"question": f"q{i}", "answer": i, "g": i % 2} for i in range(20)]
    a, b = _jsonl(tmp_path / "a.jsonl", rows), _jsonl(tmp_path / "b.jsonl", rows)
    problems = load_problems(f"file:{a}?group=g;file:{b}")
    assert len({p.id for p in problems}) == 40
    assignment = assign_splits(problems, seed=0)
    for group in ("file:a.jsonl/0", "file:a.jsonl/1"):
        members = [assignment[p.id] for p in problems if p.group_id == group]
        assert members.count("train") == 5 and members.count("validation") == 1 and members.count("test") == 4
    with pytest.raises(UsageError, match=r"problem id 'file:a.jsonl:0' comes twice"):
        load_problems(f"file:{a};file:{a}")


def test_generic_source_modules_import_no_heavy_library_at_import_time():
    heavy = {"torch", "transformers", "datasets", "math_verify", "sympy", "pyarrow", "pandas"}
    package = Path(__file__).parents[1] / "peft_cca" / "tasks"
    for name in ("dataset_source", "checkers", "answers", "prompts", "problem"):
        for node in ast.parse((package / f"{name}.py").read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {m.split(".")[0] for m in modules} & heavy, f"{name}.py imports {modules} at import time"
