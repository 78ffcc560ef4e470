import ast
import json
from pathlib import Path

import pytest

from peft_cca.errors import UsageError
from peft_cca.tasks import DEFAULT_RETENTION_TASKS, DEFAULT_TASK, load_problems, parse_spec
from peft_cca.tasks.gsm_symbolic import gold_answer

FIXTURES = Path(__file__).parent / "fixtures"


def test_parse_spec_keeps_plus_and_parses_values():
    kind, target, options = parse_spec("rg:basic_arithmetic?min_terms=2&operators=+,-&size=7&x=1.5&flag=true")
    assert (kind, target) == ("rg", "basic_arithmetic")
    assert options == {"min_terms": 2, "operators": ("+", "-"), "size": 7, "x": 1.5, "flag": True}


@pytest.mark.parametrize("spec", ["nope:thing", "rg:", "basic_arithmetic", "rg:x?novalue", "template:x?bogus=1"])
def test_bad_specs_are_rejected(spec):
    with pytest.raises(UsageError, match="spec"):
        parse_spec(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "rg:chain_sum?size=99999999999999999999",
        "rg:chain_sum?size=abc",
        "rg:chain_sum?seed=-1",
        "rg:no_such_task?size=2",
        "template:/no/such/file.json",
        f"template:{FIXTURES / 'templates_sample.json'}?size=0",
    ],
)
def test_bad_sizes_and_targets_are_usage_errors_before_any_work(spec):
    with pytest.raises(UsageError):
        load_problems(spec, limit=2)


def test_limit_bounds_what_a_source_generates():
    assert len(load_problems("rg:chain_sum?size=100000", limit=2)) == 2


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


GOOD_ROW = {"id": 0, "instance": 0, "question": "q?", "answer": "2 + 3 = 5\n#### 5", "original_id": 1}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({**GOOD_ROW, "answer": "seven"}, r"rows.jsonl:2: the answer has no '#### <number>'"),
        ({**GOOD_ROW, "answer": "x\n#### seven"}, r"rows.jsonl:2: the gold answer .* not a number"),
        ({k: v for k, v in GOOD_ROW.items() if k != "question"}, r"rows.jsonl:2: missing key\(s\) question"),
    ],
)
def test_malformed_gsm_rows_name_file_line_and_key(tmp_path, row, message):
    path = _write_rows(tmp_path / "rows.jsonl", [GOOD_ROW, row])
    with pytest.raises(UsageError, match=message):
        load_problems(f"gsm-symbolic-file:{path}")


def test_source_modules_import_no_heavy_library_at_import_time():
    heavy = {"torch", "transformers", "reasoning_gym", "datasets", "peft", "accelerate", "trl"}
    package = Path(__file__).parents[1] / "peft_cca" / "tasks"
    for name in ("sources", "templates", "template_data", "safe_eval", "gsm_symbolic", "reasoning_gym_source"):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not {m.split(".")[0] for m in modules} & heavy, f"{name}.py imports {modules} at import time"


def test_reasoning_gym_problems_are_seeded_and_scored_by_reasoning_gym():
    spec = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1&size=6&seed=3"
    first, second = load_problems(spec), load_problems(spec)
    assert [p.question for p in first] == [p.question for p in second]
    assert len(first) == 6 and len({p.id for p in first}) == 6
    problem = first[0]
    assert problem.group_id == "chain_sum"
    assert problem.score(f"The answer is {problem.answer}.")
    assert not problem.score(f"The answer is {int(problem.answer) + 1}.")
    assert not problem.score("I refuse.")


def test_gsm_symbolic_generators_are_groups():
    problems = load_problems("rg:gsm_symbolic?size=5&seed=1")
    assert all(p.group_id.startswith("gsm_symbolic/") for p in problems)
    assert problems[0].score(f"So... The answer is {problems[0].answer}.")


def test_text_tasks_use_text_extraction():
    problem = load_problems("rg:spell_backward?size=2&seed=0")[0]
    assert problem.score(f"Let me reverse it.\nThe answer is {problem.answer}.")
    assert not problem.score("The answer is zzzz.")


def test_gsm_symbolic_file_fixture():
    problems = load_problems(f"gsm-symbolic-file:{FIXTURES / 'gsm_symbolic_sample.jsonl'}")
    assert len(problems) == 20
    assert {p.group_id for p in problems} == {"gsm-symbolic/0", "gsm-symbolic/1"}
    assert all("," not in p.answer and p.answer.isdigit() for p in problems)
    assert all(p.solution and "####" not in p.solution for p in problems)
    assert gold_answer("Tom has 2 + 3 = 5.\n#### 1,005") == "1005"


def test_spec_suite_and_limit():
    problems = load_problems("rg:chain_sum?size=3;rg:leg_counting?size=2", limit=4)
    assert [p.group_id for p in problems] == ["chain_sum"] * 3 + ["leg_counting"]


def test_defaults_load():
    assert load_problems(DEFAULT_TASK, limit=3)
    for task in DEFAULT_RETENTION_TASKS:
        assert load_problems(f"rg:{task}?size=1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rg:chain_sum?size=2&min_digits=-5", r"AssertionError: min_digits must be positive"),
        ("rg:chain_sum?size=2&min_digits=5000&max_digits=5000", r"ValueError: Exceeds the limit"),
    ],
)
def test_reasoning_gym_configs_it_refuses_are_one_usage_error_line(spec, message):
    with pytest.raises(UsageError, match=r"rg:chain_sum: reasoning-gym refused .*" + message) as caught:
        load_problems(spec, limit=2)
    assert "\n" not in str(caught.value)


def test_a_reasoning_gym_config_that_would_run_for_ever_is_stopped_by_its_time_budget(monkeypatch):
    import time

    from peft_cca.tasks import reasoning_gym_source

    monkeypatch.setattr(reasoning_gym_source, "SECONDS", 0.5)
    monkeypatch.setattr(reasoning_gym_source, "SECONDS_PER_ITEM", 0.0)
    start = time.monotonic()
    with pytest.raises(UsageError, match=r"rg:chain_sum: generating 2 items took over 0\.5 s; lower the config"):
        load_problems("rg:chain_sum?size=2&min_terms=10000000&max_terms=10000000", limit=2)
    assert time.monotonic() - start < 5
    assert len(load_problems("rg:chain_sum?size=3")) == 3  # the timer is gone: a normal load is unaffected
