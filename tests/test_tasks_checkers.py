import json
import logging
from pathlib import Path

import pytest

from peft_cca.errors import UsageError
from peft_cca.tasks import load_problems
from peft_cca.tasks.answers import answer_is_final, extract_choice, last_boxed, normalize_answer
from peft_cca.tasks.checkers import (
    ChoiceChecker,
    MathChecker,
    NumericChecker,
    RegexChecker,
    StringChecker,
    gold_for,
    load_scorer,
    parse_format,
)

FIXTURES = Path(__file__).parent / "fixtures"
CHOICES = ("Paris", "Rome", "Berlin", "Madrid")


def _gold(fmt: str, value, choices=()):
    return gold_for(parse_format(fmt, "spec"), value, choices, "data.jsonl row 3")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep the arrow caches `datasets` writes for loaded files inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Paris.", "paris"), ('  "New   York"  ', "new york"), ("**B**", "b"), ("3.5", "3.5"), ("$12", "12")],
)
def test_normalize_answer_drops_case_spacing_and_outer_punctuation_only(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("text", ["numeric", "string", "choice", "math", "regex:(\\d+)"])
def test_formats_parse(text):
    assert parse_format(text, "spec").name == text.partition(":")[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("exact", r"spec: unknown answer format 'exact'; use one of numeric, string, choice, math, regex:<pattern>"),
        ("regex", r"unknown answer format 'regex'"),
        ("regex:", r"format=regex: has no pattern"),
        ("regex:(\\d+", r"format=regex:\(\\d\+ does not compile \(missing \), unterminated subpattern"),
        ("numeric:x", r"unknown answer format 'numeric:x'"),
    ],
)
def test_bad_formats_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_format(text, "spec")


def test_numeric_cuts_gsm_answers_at_the_hash_line():
    gold = _gold("numeric", "She has 2 + 3 = <<2+3=5>>5 apples.\n#### 1,005")
    assert gold.answer == "1005" and gold.solution == "She has 2 + 3 = <<2+3=5>>5 apples."
    assert gold.checker == NumericChecker("1005")
    assert gold.checker("So the answer is 1,005.") and not gold.checker("The answer is 1006.")
    assert _gold("numeric", 42).answer == "42" and _gold("numeric", 42).solution is None


def test_numeric_refuses_a_gold_that_is_no_number_naming_the_row():
    with pytest.raises(UsageError, match=r"data.jsonl row 3: the answer 'seven' is not a number; use format=string"):
        _gold("numeric", "seven")


def test_string_is_normalised_exact_match_of_the_final_answer():
    checker = _gold("string", "Paris").checker
    assert checker == StringChecker(("Paris",))
    assert checker("Let me think.\nThe answer is paris.")
    assert checker("It is the capital.\n  *Paris*  ")
    assert not checker("The answer is Paris, Texas.")
    assert not checker("The answer is Rome. Paris is wrong.")  # the first answer sentence decides


def test_string_accepts_a_list_of_answers_and_numbers_by_value():
    gold = _gold("string", ["NYC", "New York City", None])
    assert gold.answer == "NYC" and gold.checker("The answer is new york city.")
    assert _gold("string", "12").checker("The answer is 12.0")
    assert not _gold("string", "3.5").checker("The answer is 35")
    with pytest.raises(UsageError, match=r"row 3: the answer is a list; only format=string or regex"):
        _gold("numeric", ["1", "2"])
    with pytest.raises(UsageError, match=r"row 3: the answer is empty"):
        _gold("string", "  ")


@pytest.mark.parametrize(("value", "index"), [("B", 1), ("b", 1), (1, 1), ("1", 1), (2.0, 2), ("Madrid", 3), (0, 0)])
def test_choice_gold_is_a_letter_an_index_or_a_choice(value, index):
    gold = _gold("choice", value, CHOICES)
    assert gold.checker == ChoiceChecker(index, CHOICES)
    assert gold.answer == "ABCD"[index]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("E", r"data.jsonl row 3: the answer 'E' is out of range: the row has 4 choices \(A-D, indices 0-3\)"),
        (4, r"data.jsonl row 3: the answer '4' is out of range"),
        (-1, r"the answer '-1' is out of range"),
        ("Lisbon", r"data.jsonl row 3: the answer 'Lisbon' is not a letter, a 0-based index or the text of one"),
    ],
)
def test_choice_gold_out_of_range_names_the_row(value, message):
    with pytest.raises(UsageError, match=message):
        _gold("choice", value, CHOICES)


@pytest.mark.parametrize(
    ("completion", "picked"),
    [
        ("The answer is B.", 1),
        ("The answer is (C).", 2),
        ("The answer is: d", 3),
        ("Capitals...\nThe answer is Berlin.", 2),
        ("I pick option A", 0),
        ("B) Rome", 1),
        ("The answer is E.", None),  # no such choice
        ("The answer is Lisbon.", None),
        ("", None),
    ],
)
def test_extract_choice_reads_a_letter_or_the_choice_text(completion, picked):
    assert extract_choice(completion, CHOICES) == picked


def test_choice_checker_scores_the_picked_index():
    checker = _gold("choice", "B", CHOICES).checker
    assert checker("The answer is B.") and checker("The answer is Rome.")
    assert not checker("The answer is A.") and not checker("no idea")


def test_math_verify_checks_latex_fractions_and_boxed_answers():
    checker = _gold("math", "\\frac{1}{2}").checker
    assert checker == MathChecker("\\frac{1}{2}")
    assert checker("The answer is $\\boxed{\\frac12}$.")
    assert checker("The answer is 0.5.")
    assert checker("So we get \\boxed{1/2}")
    assert not checker("The answer is 2.")
    assert not checker("I do not know")


def test_math_gold_from_a_worked_solution_is_its_last_boxed_answer():
    solution = "We have $x = \\frac{\\sqrt{3}}{2}$, so the answer is $\\boxed{\\frac{\\sqrt{3}}{2}}$."
    gold = _gold("math", solution)
    assert gold.answer == "\\frac{\\sqrt{3}}{2}" and gold.solution == solution
    assert gold.checker("The answer is $\\frac{\\sqrt 3}{2}$.")
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{a}{b}} end") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None


def test_math_refuses_a_gold_math_verify_cannot_read():
    with pytest.raises(UsageError, match=r"data.jsonl row 3: math-verify reads no answer in the gold '\\\\text\{\}'"):
        _gold("math", "\\text{}")


def test_math_checker_works_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    checker = MathChecker("\\frac{1}{2}")
    with ThreadPoolExecutor(1) as pool:  # math-verify's SIGALRM timeout cannot run there: it is turned off
        assert pool.submit(checker, "The answer is 1/2.").result()


def test_regex_extracts_its_first_group_and_compares_as_string():
    gold = _gold("regex:Final: *(\\S+)", "1000")
    assert gold.checker == RegexChecker("Final: *(\\S+)", ("1000",))
    assert gold.checker("Work...\nFinal: 1,000")
    assert not gold.checker("Final: 999")
    assert not gold.checker("no match here")
    assert _gold("regex:[A-D]", "C").checker("my pick: C")  # no group: the whole match


def test_regex_in_a_spec_is_percent_encoded_and_keeps_its_commas(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "ab"}])
    # the pattern "(a|b){1,2}&?" with & written %26; its comma must not split the value
    [problem] = load_problems(f"file:{path}?format=regex:((?:a|b){{1,2}})%26?")
    assert problem.scorer == RegexChecker("((?:a|b){1,2})&?", ("ab",))
    assert problem.score("it is ab&") and not problem.score("it is ba")


# one completion per checker whose answer sentence is closed, with its verdict: text after it must not change it
CLOSED = [
    ("numeric", "7", (), "So 3 + 4 = 7. The answer is 7. "),
    ("string", "olleh", (), "Reversed. The answer is olleh.\n"),
    ("choice", "B", CHOICES, "The answer is B. "),
    ("math", "\\frac{1}{2}", (), "The answer is \\frac{1}{2}. "),
    ("regex:= *(\\d+)", "7", (), "3 + 4 = 7. The answer is 7. "),
]


@pytest.mark.parametrize(("fmt", "gold", "choices", "completion"), CLOSED)
def test_no_text_after_a_closed_answer_sentence_changes_a_verdict(fmt, gold, choices, completion):
    # generation stops at a closed answer sentence (answer_is_final), so the stopped and the full completion must agree
    checker = _gold(fmt, gold, choices).checker
    assert answer_is_final(completion) and checker(completion)
    for tail in ("\nThe answer is 9.", "Q: What is 1 + 1?\nA: The answer is 2 = 2.", "= 8 \\boxed{8} (A) Rome"):
        assert checker(completion + tail)


def test_user_scorer_from_a_module_on_the_path_and_from_a_file(tmp_path):
    rows = [{"question": "How far?", "answer": "12", "unit": "km"}, {"question": "How long?", "answer": 3, "unit": "h"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    for module in ("fixtures.user_scorer", FIXTURES / "user_scorer.py"):
        problems = load_problems(f"file:{path}?scorer={module}:ends_with_unit")
        assert [p.answer for p in problems] == ["12", "3"]  # the gold taken as it is, not as a number
        assert problems[0].score("It is 12 km.") and not problems[0].score("It is 12 miles.")
        assert problems[1].score("The answer is 3 h.\nSome text after") and not problems[1].score("3 km")


def test_user_scorer_sees_the_completion_cut_at_its_answer_sentence(tmp_path):
    [problem] = load_problems(
        f"file:{_jsonl(tmp_path / 'd.jsonl', [{'question': 'q', 'answer': '5', 'unit': 'm'}])}"
        f"?scorer={FIXTURES / 'user_scorer.py'}:ends_with_unit"
    )
    assert problem.score("The answer is 5 m.\nOr 6 m.")  # the scorer sees "The answer is 5 m"


@pytest.mark.parametrize(
    ("scorer", "message"),
    [
        ("no_colon", r"scorer='no_colon' is not <module>:<function>"),
        ("no_such_module_xyz:f", r"cannot import 'no_such_module_xyz' \(No module named 'no_such_module_xyz'\)"),
        ("missing_file.py:f", r"scorer file 'missing_file.py' does not exist"),
        ("fixtures.user_scorer:nope", r"'fixtures.user_scorer' has no function 'nope'"),
        (
            "fixtures.user_scorer:takes_one",
            r"scorer .*:takes_one. must take \(completion, answer, row\); it takes \(completion: str\)",
        ),
    ],
)
def test_bad_scorers_are_usage_errors(scorer, message):
    with pytest.raises(UsageError, match=r"file:d.jsonl: " + message):
        load_scorer(scorer, "file:d.jsonl")


def test_a_scorer_that_raises_counts_as_wrong_and_is_reported_once(tmp_path, caplog, monkeypatch):
    from peft_cca.tasks import checkers

    monkeypatch.setattr(checkers, "_WARNED", set())
    rows = [{"question": "q", "answer": "1"}, {"question": "r", "answer": "2"}]
    problems = load_problems(f"file:{_jsonl(tmp_path / 'd.jsonl', rows)}?scorer=fixtures.user_scorer:broken")
    with caplog.at_level(logging.WARNING, logger="peft_cca.tasks.checkers"):
        assert not any(p.score("The answer is 1.") for p in problems for _ in range(3))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "scorer broken raised KeyError: 'no_such_field'" in warnings[0]


def test_a_scorer_keeps_the_format_that_reads_gold_and_choices(tmp_path):
    rows = [{"question": "Capital of Italy?", "choices": list(CHOICES), "answer": 1, "unit": "x"}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    [problem] = load_problems(f"file:{path}?format=choice&scorer=fixtures.user_scorer:ends_with_unit")
    assert problem.answer == "B" and problem.question.endswith("D. Madrid")
    assert problem.score("B x") and not problem.score("The answer is B.")


def test_math_without_math_verify_installed_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "math_verify", None)  # an import of it now fails as if it were missing
    with pytest.raises(UsageError, match=r"format=math needs HF's math-verify: pip install 'math-verify>=0.9'"):
        _gold("math", "\\frac{1}{2}")
