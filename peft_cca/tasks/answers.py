"""Answer extraction and scoring, as the CCA authors score GSM-style traces.

Rule (numeric), the authors' cut (``extract_until_first_answer`` then ``extract_final_answer`` in their
gsm_utils.py): keep the completion up to the end of the first "answer is" sentence, drop commas, read the
last number and compare numerically with the gold answer. So "The answer is 8." reads 8 and "So 5 + 3 = 8.
The answer is below." reads 8 too. Without "answer is", the last number of the whole completion is read.
Anything unparseable is simply wrong, never an exception.

One deliberate difference: their sentence ends at the first period (regex ``answer is[^.]*`` + period), reading
"The final answer is 3.5." as 3; here a period followed by a digit is a decimal point, so it reads 3.5.

The "end of that sentence" is a newline or a period not followed by a digit. That choice makes the
extracted answer *final* once the sentence is closed: no later token can change it, which is what lets
fast branching stop a completion early and still give exactly the answer of the full completion.
"""

from __future__ import annotations

import math
import re
import unicodedata

ANSWER_CUE = re.compile(r"answer is", re.IGNORECASE)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# A sentence closes at a newline or at a period not followed by a digit (at the very end of a completion
# still being generated, a period is not yet closed: "12." may become "12.5").
SENTENCE_END = re.compile(r"\n|\.(?!\d)")


def answer_segment(text: str, finished: bool = True) -> str | None:
    """The text after the first "answer is", up to the end of its sentence.

    With ``finished=False`` (a completion still being generated) an unclosed sentence returns None,
    because more tokens could still extend it.
    """
    cue = ANSWER_CUE.search(text)
    if cue is None:
        return None
    rest = text[cue.end() :]
    end = SENTENCE_END.search(rest)
    if end is None or (not finished and end.end() == len(rest) and end.group() == "."):
        return rest if finished else None
    return rest[: end.start()]


def answer_cut(text: str) -> str:
    """The completion up to the end of its first "answer is" sentence (all of it without one)."""
    segment = answer_segment(text)
    if segment is None:
        return text
    cue = ANSWER_CUE.search(text)
    return text[: cue.end() + len(segment)]


def extract_number(text: str) -> str | None:
    """The final numeric answer of a completion as a string without commas, or None."""
    numbers = NUMBER.findall(answer_cut(text).replace(",", ""))
    return numbers[-1] if numbers else None


def extract_text(text: str) -> str | None:
    """The final free-text answer: the "answer is" sentence, else the last non-empty line."""
    segment = answer_segment(text)
    if segment is None:
        lines = [line for line in text.splitlines() if line.strip()]
        segment = lines[-1] if lines else None
    if segment is None:
        return None
    return segment.strip().strip("\"'`*").strip() or None


def answer_is_final(text: str) -> bool:
    """True when the answer extracted from ``text`` can no longer change as more tokens are appended."""
    return answer_segment(text, finished=False) is not None


def parse_number(value: str) -> float | None:
    """A gold or predicted answer as a float; None when it is not a number."""
    try:
        number = float(value.replace(",", "").strip().rstrip("."))
    except (AttributeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def numbers_equal(predicted: str | None, gold: str) -> bool:
    """Numeric comparison with a small relative tolerance (so "12.0" equals "12")."""
    if predicted is None:
        return False
    a, b = parse_number(predicted), parse_number(gold)
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def score_numeric(completion: str, gold: str) -> bool:
    """The authors' GSM scoring of one completion."""
    return numbers_equal(extract_number(completion), gold)


def normalize_answer(text: str) -> str:
    """``text`` for exact-match comparison: Unicode-normalised, case-folded, single-spaced, without the
    punctuation and symbols around it ("Paris." and " *paris* " are both "paris"). Inner punctuation stays, so
    "3.5" never equals "35"."""
    words = unicodedata.normalize("NFKC", text).casefold().split()
    joined = " ".join(words)
    start, end = 0, len(joined)
    while start < end and unicodedata.category(joined[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(joined[end - 1])[0] in "PS":
        end -= 1
    return joined[start:end].strip()


def same_answer(candidate: str, gold: str) -> bool:
    """Normalised exact match, or numeric equality when both are numbers (so "12.0" is "12", "1,000" is "1000")."""
    if normalize_answer(candidate) == normalize_answer(gold):
        return True
    return parse_number(candidate) is not None and numbers_equal(candidate, gold)


def choice_letter(index: int) -> str:
    """The letter of choice ``index`` (0 is "A")."""
    return chr(ord("A") + index)


def extract_choice(text: str, choices: tuple[str, ...]) -> int | None:
    """The index of the choice a completion gives, or None.

    Read from the final free-text answer (see :func:`extract_text`): the text of one of the choices, else a lone
    letter ("b", "(B)", "B."), else the first capital letter standing alone among the valid ones ("option B",
    "B) Paris").
    """
    candidate = extract_text(text)
    if candidate is None:
        return None
    normalised = normalize_answer(candidate)
    texts = [normalize_answer(choice) for choice in choices]
    if normalised in texts and texts.count(normalised) == 1:
        return texts.index(normalised)
    letters = "".join(choice_letter(i) for i in range(len(choices)))
    if len(normalised) == 1 and normalised.upper() in letters:
        return letters.index(normalised.upper())
    alone = re.search(rf"(?<![A-Za-z])[{letters}](?![A-Za-z])", candidate) if letters else None
    return letters.index(alone.group()) if alone else None


def extract_pattern(text: str, pattern: str) -> str | None:
    """The first match of ``pattern`` in the answer cut of ``text``: its first non-empty group, else the whole
    match (lm-eval's regex filter); None without a match."""
    match = re.search(pattern, answer_cut(text))
    if match is None:
        return None
    groups = [group for group in match.groups() if group]
    return groups[0] if groups else match.group()


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, braces balanced; None without one."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    opening = text.index("{", start)
    depth = 0
    for position in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[opening + 1 : position].strip()
    return None
