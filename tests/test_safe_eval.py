import random
from pathlib import Path

import pytest

from peft_cca.tasks.safe_eval import UnsafeExpressionError, safe_eval
from peft_cca.tasks.templates import TemplateError, instantiate, load_template_problems, parse_template

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("expression", "names", "value"),
    [
        ("x + y * 2", {"x": 1, "y": 3}, 7),
        ("(x + y) % 2 == 0", {"x": 1, "y": 3}, True),
        ("a if x > 2 else b", {"x": 3, "a": "yes", "b": "no"}, "yes"),
        ("max(x, 4) // 3", {"x": 10}, 3),
        ("2 ** 10", {}, 1024),
        ("[1, 2, 3][1]", {}, 2),
        ("not x < 1 and x != 5", {"x": 2}, True),
    ],
)
def test_valid_expressions(expression, names, value):
    assert safe_eval(expression, names, {"max": max}) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('echo pwned')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "eval('1+1')",
        "(lambda: 1)()",
        "[x for x in range(10)]",
        "9 ** 9 ** 9",
        "10 ** 30",
        "'a' * 100000000",
        "x.real",
        "unknown_name + 1",
        "1 +",
        "f'{1}'",
        "1" * 600,
    ],
)
def test_hostile_expressions_are_refused(expression):
    with pytest.raises(UnsafeExpressionError):
        safe_eval(expression, {"x": 1}, {"range": range})


def test_template_parse_and_instantiate():
    template = {
        "question_annotated": "{name,Ann} has {x,3} cats.\n#init:\n- name = sample(names)\n"
        "- $x = range(2, 5)\n#conditions:\n- x != 3\n#answer: x * 4"
    }
    _, init, conditions, answer = parse_template(template["question_annotated"])
    assert init == [("name", "sample(names)"), ("x", "range(2, 5)")]
    assert conditions == ["x != 3"] and answer == "x * 4"
    for seed in range(20):
        text, gold = instantiate(template, random.Random(seed))
        count = int(text.split(" has ")[1].split()[0])
        assert count in (2, 4) and gold == count * 4


def test_template_file_is_seeded_and_respects_conditions():
    path = FIXTURES / "templates_sample.json"
    problems = load_template_problems(path, size=10, seed=1)
    assert len(problems) == 20 and {p.group_id for p in problems} == {"template/beads", "template/shelves"}
    assert [p.question for p in problems] == [p.question for p in load_template_problems(path, size=10, seed=1)]
    assert [p.question for p in problems] != [p.question for p in load_template_problems(path, size=10, seed=2)]
    for p in problems[:10]:
        numbers = [int(w) for w in p.question.replace("?", "").split() if w.isdigit()]
        x, y, z = numbers
        assert (x + y) % 2 == 0 and int(p.answer) == x + y - z
        assert p.score(f"The answer is {p.answer}.")


@pytest.mark.parametrize(
    "annotated",
    [
        "{x,1} apples\n#init:\n- $x = __import__('os').getpid()\n#answer: x",
        "{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: x.__class__",
        "{x,1} apples\n#init:\n- $x = range(1, 3)\n#conditions:\n- x > 5\n#answer: x",
        "{x,1} apples\n#init:\n- $x = range(1, 3)",
        "{y,1} apples\n#init:\n- $x = range(1, 3)\n#answer: x",
    ],
)
def test_hostile_or_broken_templates_get_a_clear_error(annotated):
    with pytest.raises((UnsafeExpressionError, TemplateError)):
        instantiate({"question_annotated": annotated}, random.Random(0))
