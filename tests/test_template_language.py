"""The published annotation language on fixtures of our own in the published format (tests/fixtures/template_language).

Each fixture exercises a group of constructs; the tests read the drawn values back out of the question text and
check the gold against them, so a construct that draws or computes wrongly fails here.
"""

import random
import re
import time
from fractions import Fraction
from pathlib import Path

import pytest

from peft_cca.errors import UsageError
from peft_cca.tasks import load_problems
from peft_cca.tasks.template_data import BUILTIN_LISTS
from peft_cca.tasks.templates import (
    TemplateError,
    default_answer,
    instantiate,
    load_template_problems,
    parse_template,
    read_templates,
    template_id,
    template_problems,
)

LANGUAGE = Path(__file__).parent / "fixtures" / "template_language"
MULTIPLES = {"double": 2, "triple": 3, "quadruple": 4, "quintuple": 5, "twice": 2, "thrice": 3}
DICE = {"six-sided": 6, "twelve-sided": 12, "d20": 20}
FRACTIONS = {word: Fraction(number) for word, number in BUILTIN_LISTS["fraction_alnum"]}
KIDS = {"twins": 2, "triplets": 3, "quadruplets": 4, "quintuplets": 5}
PAIRS_TEXT = re.compile(
    r"picks (\d+) \w+ on Monday and (\w+) that many .* a (\S+) die and gets (\d+), .*keeps (.+?) of"
)
FUNCTIONS_TEXT = re.compile(
    r"buys (\d+) boxes of (\d+) nails for \D(\S+) a box and pays with \D(\S+)\. He uses (\S+) .* of (\d+)\."
)
BARE_TEXT = re.compile(r"has (\d+) red, (\d+) blue and (\d+) green .* away (\S+) of .* bags of (\d+)\.")
PINNED_TEXT = re.compile(
    r"has (\d+) children, (\w+)\. Each gets (\d+) stickers and (\d+) marbles, and (\d+) .* the (\d+) he"
)


def _problems(name: str, size: int = 40, seed: int = 0):
    return load_template_problems(LANGUAGE / name, size=size, seed=seed)


def test_pairs_show_their_word_and_compute_as_their_number():
    problems = _problems("pairs.json")
    assert {MULTIPLES[m] for p in problems for m in re.findall(r"and (\w+) that many", p.question)} == {2, 3, 4, 5}
    for p in problems:
        found = PAIRS_TEXT.search(p.question)
        assert found, p.question
        n, target = int(found[1]), int(found[4])
        mult, dice, part = MULTIPLES[found[2]], DICE[found[3]], FRACTIONS[found[5]]
        assert target < dice and (n * mult * part).denominator == 1  # comparisons and is_int saw the numbers
        assert int(p.answer) == n + n * mult * part + dice - target
        assert p.solution is not None and p.solution.startswith(f"On Tuesday she picks {mult} * {n} = ")


def test_slices_shuffles_random_arrays_float_steps_and_format_frac():
    problems = _problems("functions.json")
    paid_choices = {round(50.02 + 1.01 * i, 2) for i in range(30)}
    for p in problems:
        found = FUNCTIONS_TEXT.search(p.question)
        assert found, p.question
        k, w, crate = int(found[1]), int(found[2]), int(found[6])
        price, paid, frac = float(found[3]), float(found[4]), Fraction(found[5])
        assert 10 <= w < 40 and frac in {Fraction(1, n) for n in (2, 3, 4, 5)} and crate in {1000, 1500, 2000, 2500}
        assert round(price * 20) == price * 20 and 0.05 <= price <= 0.95 and paid in paid_choices
        assert int(p.answer) == round(paid - k * price) + k * w * frac  # int() of a float just below 78 is 78
        whole, rest = divmod(Fraction(w, 4), 1)
        mixed = f"{whole} {rest}" if rest else f"{whole}"
        assert p.solution is not None and f"Each box is {mixed} handfuls" in p.solution
    assert len({p.question.split(" nails")[0] for p in problems}) > 30  # drawn afresh, not one fixed instance


def test_bare_list_names_fractions_and_chained_comparisons():
    problems = _problems("bare_lists.json")
    fractions = {Fraction(f) for f in BUILTIN_LISTS["fraction_nums"]}
    for p in problems:
        found = BARE_TEXT.search(p.question)
        assert found, p.question
        a, b, c, f, size = (int(found[1]), int(found[2]), int(found[3]), Fraction(found[4]), int(found[5]))
        assert c < b < a and f in fractions and size in (2, 3, 4, 5) and (a - a * f) % size == 0
        assert int(p.answer) == a - a * f + b + c  # '#answer: $a - ...' drops the number mark
    assert len({re.search(r"away (\S+)", p.question)[1] for p in problems}) > 2


def test_equality_pinned_names_are_drawn_in_one_step():
    start = time.monotonic()
    problems = _problems("pinned.json", size=200)
    assert time.monotonic() - start < 5
    for p in problems:
        found = PINNED_TEXT.search(p.question)
        assert found, p.question
        count, kids, x, y, left, total = int(found[1]), KIDS[found[2]], *map(int, found.groups()[2:])
        assert count == kids and total == count * (x + y) + left and int(p.answer) == total - left
    assert {p.question.split(", ")[1].split(".")[0] for p in problems} == set(KIDS)


def test_without_pins_the_same_template_is_unsatisfiable(monkeypatch):
    from peft_cca.tasks import templates

    monkeypatch.setattr(templates, "_pins", lambda template, candidates: {})  # total: 1 draw in 200,000 passes
    with pytest.raises(TemplateError, match=r"template 2004, line \d+ .*conditions not satisfied"):
        _problems("pinned.json", size=1)


def test_a_pinned_draw_keeps_the_distribution_of_rejection_sampling():
    # count is 1 twice as often as 2; rejection keeps a == 1 in 2/3 of instances, and so must the pin
    annotated = "{a,1} {c,1}\n#init:\n- $a = range(1, 3)\n- $c = [1, 1, 2]\n#conditions:\n- c == a\n#answer: a"
    problems = template_problems([parse_template({"question_annotated": annotated})], 3000, 0, "t", "t", "t")
    share = sum(p.answer == "1" for p in problems) / len(problems)
    assert abs(share - 2 / 3) < 0.03


def test_default_instances_reproduce_the_fixtures_answers():
    for where, record in read_templates(LANGUAGE):
        template = parse_template(record, where, template_id(record, where))
        assert default_answer(template) == template.expected, where


def test_joined_specs_load_every_part():
    pairs, pinned = LANGUAGE / "pairs.json", LANGUAGE / "pinned.json"
    problems = load_problems(f"template:{pairs}?size=3;template:{pinned}?size=4&seed=2")
    assert [p.group_id for p in problems].count("template/2001") == 3
    assert [p.group_id for p in problems].count("template/2004") == 4 and len({p.id for p in problems}) == 7


def test_an_unsatisfiable_template_is_one_error_naming_template_line_and_cause():
    broken = LANGUAGE / "broken" / "unsatisfiable.json"
    start = time.monotonic()
    with pytest.raises(TemplateError) as caught:
        load_problems(f"template:{LANGUAGE / 'pairs.json'}?size=2;template:{broken}?size=2")
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "unsatisfiable.json: template 2099, line 9 ('mult > 10'): conditions not satisfied in 20000 draws" in message
    assert "failed 20000 times: false" in message


@pytest.mark.parametrize(
    ("init", "answer", "gold"),
    [
        ('- $m = sample([("twice", 2)])\n- $b = sample([(5, 5)])', "int(b) + max(m, 1) + round(m) * 10", "27"),
        ('- $m = sample([("twice", 2)])', "m", "2"),
        ('- w, m = sample([("twice", 2)])', "m * 3", "6"),
        ('- $m = sample([("twice", 2)])', "-m + m[1] * 10 + abs(m)", "20"),
        ('- $h = sample([("half", "1/2")])', "h * 4 + Fraction(h) * 2", "3"),
        ("- $k = range_str(3, 3, 1, numbers)", "k * 2", "6"),
        ("- $x = np.random.randint(4, 5)", "x", "4"),
        ("- $x = sample(fraction_nums[1:2])", "int(x * 9)", "3"),
        ("- $x = shuffle_list([7])", "x", "7"),
        ("- $x = 6", "{x + 1}", "7"),
    ],
)
def test_constructs_one_line_each(init, answer, gold):
    annotated = f"{{x,1}}\n#init:\n- $x = range(1, 2)\n{init}\n#answer: {answer}"
    assert instantiate({"question_annotated": annotated}, random.Random(0))[1] == gold


def test_a_pair_reads_as_its_word_in_the_question_and_in_str():
    annotated = '{m,twice} {s,x}\n#init:\n- $m = sample([("twice", 2)])\n- s = str(m) + "!"\n#answer: m'
    assert instantiate({"question_annotated": annotated}, random.Random(0)) == ("twice twice!", "2")


@pytest.mark.parametrize(
    "init",
    ["- $x = np.random.randint(0, 10, 10**9)", "- $x = shuffle_list(range(10**18))", "- $x = sample(names[::0])"],
)
def test_new_functions_stay_bounded(init):
    start = time.monotonic()
    with pytest.raises(UsageError):
        instantiate({"question_annotated": f"{{x,1}}\n#init:\n{init}\n#answer: x"}, random.Random(0))
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    "init",
    [
        "$x = shuffle_list([1, 2, 3])",
        "$x = fix_floats(shuffle_list([1, 2, 3]))[0]",
        "$x = np.random.randint(1, 4, 5)",
        "$x = np.random.randint(1, 4, 5)[0]",
        "$x = list(range(1, 4)) * 2",
    ],
)
def test_shuffled_lists_and_random_arrays_give_every_value(init):
    template = parse_template({"question_annotated": f"{{x,1}}\n#init:\n- {init}\n#answer: x"})
    rng = random.Random(0)
    assert {instantiate(template, rng)[1] for _ in range(60)} == {"1", "2", "3"}
