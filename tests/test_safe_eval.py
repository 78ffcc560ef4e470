import random
import time
from fractions import Fraction
from pathlib import Path

import pytest

from peft_cca.errors import UsageError
from peft_cca.tasks.safe_eval import Pair, UnsafeExpressionError, safe_eval
from peft_cca.tasks.templates import TemplateError, _functions, instantiate, load_template_problems, parse_template

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
        ("[1, 2] * 3", {}, [1, 2, 1, 2, 1, 2]),
        ("2.5 in range(10)", {}, False),
        ("np.arange(0, 1, 0.25)", {}, (0.0, 0.25, 0.5, 0.75)),
        ("x[:2] + x[-1:] + x[::2]", {"x": [1, 2, 3]}, [1, 2, 3, 1, 3]),
        ("len(range(10**18)[::2])", {}, 5 * 10**17),
        ("w3 < w2 < w1", {"w1": 3, "w2": 2, "w3": 1}, True),
        ("w3 < w2 < w1", {"w1": 3, "w2": 4, "w3": 1}, False),
        ("format_frac(Fraction(7, 2)) + ' ' + format_frac(-5 / 4) + ' ' + format_frac(6)", {}, "3 1/2 -1 1/4 6"),
        ("int(Fraction(7, 2)) + int('7/2') + int(78.3 - 0.3)", {}, 84),
    ],
)
def test_valid_expressions(expression, names, value):
    assert safe_eval(expression, names, _functions(random.Random(0))) == value


HOSTILE = [
    "__import__('os').system('echo pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "eval('1+1')",
    "(lambda: 1)()",
    "[x for x in range(10)]",
    "9 ** 9 ** 9",
    "10 ** 30",
    "'a' * 100000000",
    "[0] * 10 ** 9",
    "[[0] * 10000] * 10000",
    "x.real",
    "unknown_name + 1",
    "1 +",
    "f'{1}'",
    "round(x, -10**9)",
    "'%01000000000d' % x",
    "-" * 300 + "1",
    "[" * 150 + "]" * 150,
    "min(range(10**18))",
    "sum(range(10**18))",
    "list(range(10**18))",
    "sample(range(10**18), 10**17)",
    "Fraction('1e99999999')",
    "int('9' * 5000)",
    "(-8) ** 0.5",
    "float('nan')",
    "float('inf') - 1",
    "range_str(-10**18, 10, 1, numbers)",
    "frange(0, 10**18, 0.5)",
    "sample_sequential(range(10**18), 10**17)",
    "sample(x=1)",
    "1" * 5000,
    "numbers[::0]",
    "numbers[1.5:]",
    "numbers[1:2, 0]",
    "np.random.randint(0, 10, 10**9)",
    "shuffle_list(range(10**18))",
    "format_frac('1e99999999')",
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_hostile_expressions_end_within_a_second_with_a_usage_error(expression):
    start = time.monotonic()
    with pytest.raises(UnsafeExpressionError) as caught:
        safe_eval(expression, {"x": 1, "numbers": ["one"]}, _functions(random.Random(0)))
    assert time.monotonic() - start < 1.0
    assert isinstance(caught.value, UsageError)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("n1 + n2 + mult * n1", 4 + 6 + 3 * 4),
        ("-mult + abs(mult) + mult ** 2", 9),
        ("n1 < mult < n2", False),
        ("mult == 3 and mult != half and 3 in [mult[1]]", True),
        ("mult[0] + ' ' + str(half)", "triple half"),
        ("int(half * 8) + round(mult) + max(mult, half) + is_int(n1 * half) + divides(n2, mult)", 4 + 3 + 3 + 1 + 1),
        ("half[1] * n1", 2),
    ],
)
def test_pairs_compute_as_their_number(expression, value):
    names = {"n1": 4, "n2": 6, "mult": Pair("triple", 3, 3), "half": Pair("half", "1/2", Fraction(1, 2))}
    assert safe_eval(expression, names, _functions(random.Random(0))) == value


def test_template_parse_and_instantiate():
    template = parse_template(
        {
            "question_annotated": "{name,Ann} has {x,3} cats.\n#init:\n- name = sample(names)\n"
            "- $x = range(2, 5)\n#conditions:\n- x != 3\n#answer: x * 4"
        }
    )
    assert [b.names for b in template.bindings] == [("name",), ("x",)]
    assert [c.text for c in template.conditions] == ["x != 3"] and template.answer.text == "x * 4"
    for seed in range(20):
        text, gold = instantiate(template, random.Random(seed))
        count = int(text.split(" has ")[1].split()[0])
        assert count in (2, 4) and int(gold) == count * 4


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
    ("annotated", "line"),
    [
        ("{x,1} apples\n#init:\n- $x = __import__('os').getpid()\n#answer: x", 3),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: x.__class__", 4),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#conditions:\n- x > 5\n#answer: x", 5),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)", None),
        ("{y,1} apples\n#init:\n- $x = range(1, 3)\n#answer: x", None),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: round(x, -10**9)", 4),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: '%01000000000d' % x", 4),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: (-x) ** 0.5", 4),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: float('nan')", 4),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: x > 0", 4),
        ("{x,1} apples\n#init:\n- a, b = sample([1, 2, 3])\n#answer: a", 3),
        ("{x,1} apples\n#init:\n- $x = range(1, 3)\n#answer: [x] * 10**9", 4),
    ],
)
def test_hostile_or_broken_templates_get_a_template_error_naming_the_line(annotated, line):
    start = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        instantiate({"question_annotated": annotated}, random.Random(0))
    assert time.monotonic() - start < 1.0
    assert "template 0" in str(caught.value)
    if line is not None:
        assert f"line {line} " in str(caught.value)
