import pytest

from peft_cca.tasks.answers import answer_is_final, extract_number, extract_text, score_numeric


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So 21 - 15 = 6. The answer is 6.", "6"),
        ("The answer is 1,234 apples. Next I said 99", "1234"),
        ("the answer is 5 + 3 = 8.\nThen 12", "8"),
        ("He has 3 + 4 = 7 left", "7"),
        ("The answer is -2.5.", "-2.5"),
        ("The answer is $12.", "12"),
        ("no numbers at all", None),
        ("", None),
        ("The answer is unknown.", None),
        ("The final answer is 3.5.", "3.5"),
        ("So 5 + 3 = 8. The answer is below.", "8"),
        ("21 - 15 = 6. The final answer is 6.\nQ: Tom has 7 apples", "6"),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_first_answer_is_wins():
    assert extract_number("The answer is 4. Wait, the answer is 5.") == "4"


@pytest.mark.parametrize(
    ("text", "gold", "right"),
    [
        ("The answer is 8.", "8", True),
        ("The answer is 8.0", "8", True),
        ("The answer is 9.", "8", False),
        ("garbage \x00 ### ∞", "8", False),
        ("The answer is 1,000.", "1000", True),
        ("8", "not a number", False),
    ],
)
def test_score_numeric(text, gold, right):
    assert score_numeric(text, gold) is right


@pytest.mark.parametrize(
    ("text", "final"),
    [
        ("The answer is 12", False),
        ("The answer is 12.", False),
        ("The answer is 12. ", True),
        ("The answer is 12\n", True),
        ("The answer is 12.5 ", False),
        ("It is 12. ", False),
    ],
)
def test_answer_is_final(text, final):
    assert answer_is_final(text) is final


def test_final_answer_never_changes_when_text_grows():
    # the early stop of fast branching relies on this
    prefix = "We add. The answer is 3. "
    assert answer_is_final(prefix)
    for tail in ["", "4", "\nThe answer is 9.", "0.5 and more"]:
        assert extract_number(prefix + tail) == "3"


def test_extract_text():
    assert extract_text("Reasoning...\nThe answer is olleh.") == "olleh"
    assert extract_text("first line\n\n  last line  ") == "last line"
    assert extract_text("") is None
