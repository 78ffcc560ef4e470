"""Generic problem sources through ``datasets``: any hub dataset (``hf:``) or a data file of one's own (``file:``).

- ``hf:<dataset id or local folder>?config=<name>&split=<split>&...`` ``datasets.load_dataset`` of a hub id (or
  a folder of data files), ``datasets.load_from_disk`` of a folder written by ``save_to_disk``. ``split`` may be
  any split expression of ``datasets`` (``train+test``, ``test[:100]``); without it, a dataset with one split
  uses that one.
- ``file:<path>?...`` one JSONL, JSON, CSV, TSV or Parquet file (compressed ones too), as ``datasets`` reads it.

Both take the row fields (a dotted path reaches into nested fields, ``meta.level``, or lists, ``choices.0``):
``question`` (default "question"), ``answer`` (default "answer"), ``group`` (the unit of splitting and of the
under-0.8 filter; without it the whole source is one group), ``choices`` (a list field, a string holding a
JSON list, or several fields joined by commas, ``choices=A,B,C,D``; default "choices" with ``format=choice``),
``id`` (default: the row's index) and ``solution`` (a worked solution for LoRA's SFT and k-shot exemplars);
and the answer checker, ``format=`` or ``scorer=`` (see :mod:`peft_cca.tasks.checkers`).

Each Problem keeps its row in ``metadata["fields"]`` (for prompt templates), the question field's text in
``metadata["question"]`` and its choices in ``metadata["choices"]``; a choice question lists them, one
"A. <text>" line each, after the question. Rows are counted from 0, as ``dataset[i]`` counts them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.tasks.answers import choice_letter
from peft_cca.tasks.checkers import AnswerFormat, UserChecker, gold_for, load_scorer, parse_format
from peft_cca.tasks.problem import Problem

FIELD_OPTIONS = ("question", "answer", "group", "choices", "id", "solution")
CHECKER_OPTIONS = ("format", "scorer")
HF_OPTIONS = ("config", "split", *FIELD_OPTIONS, *CHECKER_OPTIONS)
FILE_OPTIONS = (*FIELD_OPTIONS, *CHECKER_OPTIONS)
# file suffix -> (datasets builder, its keyword arguments)
FILE_BUILDERS: dict[str, tuple[str, dict[str, str]]] = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {}),
}
MAX_CHOICES = 26  # one letter each
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


class MissingFieldError(LookupError):
    """A field path a row does not hold (or holds as null); ``available`` names what the row has there."""

    def __init__(self, path: str, available: list[str], null: bool = False) -> None:
        self.path, self.available, self.null = path, available, null
        shown = ", ".join(available) or "none"
        if null:
            message = f"no value for field {path!r} (missing or null); the fields with values are {shown}"
        else:
            message = f"no field {path!r}; the fields there are {shown}"
        super().__init__(message)


def _names(value: Any, prefix: str) -> list[str]:
    """The field paths one level into ``value``, for a missing field's message."""
    if isinstance(value, Mapping):
        return [f"{prefix}{key}" for key, item in value.items() if item is not None]
    if isinstance(value, (list, tuple)) and value:
        return [f"{prefix}0-{len(value) - 1}"]
    return []


def lookup(row: Mapping[str, Any], path: str, allow_null: bool = False) -> Any:
    """``row``'s value at the dotted ``path`` (an exact key wins, so a CSV column "a.b" is found); a missing or
    null value raises :class:`MissingFieldError` (null is returned as None with ``allow_null``)."""
    if path in row:
        value = row[path]
    else:
        value, prefix = row, ""
        for part in path.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise MissingFieldError(path, _names(value, prefix))
            prefix += f"{part}."
    if value is None and not allow_null:
        raise MissingFieldError(path, _names(row, ""), null=True)
    return value


@dataclass(frozen=True)
class Fields:
    """The row fields a spec names, as dotted paths; None where the spec names none."""

    question: str = "question"
    answer: str = "answer"
    group: str | None = None
    choices: tuple[str, ...] = ()
    id: str | None = None
    solution: str | None = None


def _fields(options: Mapping[str, str], fmt: AnswerFormat) -> Fields:
    choices = tuple(name for name in options.get("choices", "").split(",") if name)
    return Fields(
        question=options.get("question", "question"),
        answer=options.get("answer", "answer"),
        group=options.get("group"),
        choices=choices or (("choices",) if fmt.name == "choice" else ()),
        id=options.get("id"),
        solution=options.get("solution"),
    )


def _choices(row: Mapping[str, Any], names: tuple[str, ...], where: str) -> tuple[str, ...]:
    """The row's choices: one list field (or a string holding a JSON list), or one field per choice, where a
    missing or empty one is left out (rows with fewer options than columns)."""
    if len(names) > 1:
        values = [lookup(row, name, allow_null=True) for name in names]
        choices = tuple(str(value) for value in values if value is not None and str(value).strip())
    else:
        value = lookup(row, names[0])
        if isinstance(value, str) and value.lstrip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        if isinstance(value, Mapping):
            keys = ", ".join(f"{names[0]}.{key}" for key in value)
            raise UsageError(f"{where}: the choices field {names[0]!r} holds fields ({keys}), not a list; name one")
        if not isinstance(value, (list, tuple)):
            raise UsageError(
                f"{where}: the choices field {names[0]!r} holds {type(value).__name__} {str(value)[:40]!r}, not a "
                "list; store a list (or a JSON list) or name one field per choice (choices=a,b,c)"
            )
        choices = tuple(str(item) for item in value)
    if not choices:
        raise UsageError(f"{where}: the row has no choices; fill {', '.join(names)} or drop the row")
    if len(choices) > MAX_CHOICES:
        raise UsageError(f"{where}: the row has {len(choices)} choices; letters name at most {MAX_CHOICES} (A-Z)")
    return choices


def choice_listing(choices: tuple[str, ...]) -> str:
    """The choices as a prompt lists them: "A. <text>" lines (lm-eval's MMLU format)."""
    return "\n".join(f"{choice_letter(i)}. {choice}" for i, choice in enumerate(choices))


@dataclass(frozen=True)
class _Source:
    """What every row of one spec shares."""

    label: str  # the spec as named, for messages and Problem.source
    prefix: str  # of problem and group ids: stable across machines (no absolute paths)
    fields: Fields
    fmt: AnswerFormat
    scorer: Any = None  # the user's function, when scorer= names one


def _problem(source: _Source, index: int, row: Mapping[str, Any]) -> Problem:
    where = f"{source.label} row {index}"
    fields = source.fields
    try:
        question = str(lookup(row, fields.question))
        choices = _choices(row, fields.choices, where) if fields.choices else ()
        gold = gold_for(source.fmt, lookup(row, fields.answer), choices, where)
        solution = str(lookup(row, fields.solution)) if fields.solution else gold.solution
        group = f"{source.prefix}/{lookup(row, fields.group)}" if fields.group else source.prefix
        row_id = lookup(row, fields.id) if fields.id else index
    except MissingFieldError as error:
        remedy = "fill it or drop the row" if error.null else "name another field in the spec"
        raise UsageError(f"{where}: {error}; {remedy}") from None
    checker = UserChecker(source.scorer, gold.answer, row) if source.scorer is not None else gold.checker
    return Problem(
        id=f"{source.prefix}:{row_id}",
        group_id=group,
        question=question + (f"\n{choice_listing(choices)}" if choices else ""),
        answer=gold.answer,
        source=source.label,
        solution=solution,
        scorer=checker,
        metadata={"fields": dict(row), "question": question, "choices": choices, "row": index},
    )


def _check_columns(dataset: Any, fields: Fields, label: str) -> None:
    """Every named field's first part must be a column: one error for the whole source, not one per row."""
    columns = dataset.column_names
    named = [fields.question, fields.answer, fields.group, *fields.choices, fields.id, fields.solution]
    for path in (p for p in named if p is not None):
        if path not in columns and path.split(".")[0] not in columns:
            raise UsageError(
                f"{label}: no field {path!r}; its fields are {', '.join(columns) or 'none'}; name one in the spec"
            )


def _to_problems(dataset: Any, source: _Source, limit: int | None) -> list[Problem]:
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise UsageError(f"{source.label}: the dataset holds no rows")
    _check_columns(dataset, source.fields, source.label)
    problems, rows_of = [], {}
    for index, row in enumerate(dataset):
        problem = _problem(source, index, row)
        if problem.id in rows_of:
            raise UsageError(
                f"{source.label}: id {problem.id!r} comes in rows {rows_of[problem.id]} and {index}; "
                "the id field must be unique (drop id= to number the rows)"
            )
        rows_of[problem.id] = index
        problems.append(problem)
    return problems


def _load_error(label: str, error: Exception) -> UsageError:
    """One line from whatever ``datasets`` (or the hub, or pyarrow under it) raised."""
    cause = error.__cause__ or error
    message = " ".join(str(cause).split())[:300]
    return UsageError(f"{label}: datasets cannot load it ({type(cause).__name__}: {message}); check the spec")


def _dataset_errors() -> tuple[type[Exception], ...]:
    from datasets.exceptions import DatasetGenerationError

    return (OSError, ValueError, DatasetGenerationError)


def _one_split(data: Any, split: str | None, label: str) -> Any:
    """A Dataset from what ``datasets`` returned: a DatasetDict is narrowed to ``split`` or its only split."""
    if not hasattr(data, "keys"):
        return data
    names = list(data.keys())
    if split is None and len(names) == 1:
        return data[names[0]]
    if split in names:
        return data[split]
    hint = f"no split {split!r}" if split is not None else "several splits"
    raise UsageError(f"{label}: {hint}; its splits are {', '.join(names)}; add split=<name> to the spec")


def _is_saved_folder(path: Path) -> bool:
    """A folder written by ``save_to_disk`` (a Dataset or a DatasetDict), which ``load_dataset`` refuses."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _load_hf(target: str, options: Mapping[str, str], label: str) -> Any:
    import datasets

    config, split = options.get("config"), options.get("split")
    path = Path(target).expanduser()
    try:
        if _is_saved_folder(path):
            if config is not None:
                raise UsageError(f"{label}: a folder saved with save_to_disk has no configs; drop config=")
            return _one_split(datasets.load_from_disk(str(path)), split, label)
        return _one_split(datasets.load_dataset(target, config, split=split), split, label)
    except UsageError:
        raise
    except _dataset_errors() as error:
        raise _load_error(label, error) from None


def _file_builder(path: Path, label: str) -> tuple[str, dict[str, str]]:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in COMPRESSIONS]
    builder = FILE_BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise UsageError(f"{label}: cannot tell the file's format; name it {', '.join(FILE_BUILDERS)}")
    return builder


def _load_file(target: str, label: str) -> Any:
    import datasets

    path = Path(target).expanduser()
    if path.is_dir():
        raise UsageError(f"{label}: is a folder; use hf:{target} to load a folder of data files")
    if not path.is_file():
        raise UsageError(f"{label}: no such file; check the path")
    builder, kwargs = _file_builder(path, label)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except _dataset_errors() as error:
        raise _load_error(label, error) from None


def _prefix(kind: str, target: str, options: Mapping[str, str]) -> str:
    """Id prefix: the hub id or the folder/file name, never an absolute path, so ids (and the splits and sampling
    seeds drawn from them) stay the same wherever the data lies."""
    if kind == "file":
        return f"file:{Path(target).name}"
    name = Path(target).name if Path(target).expanduser().is_dir() else target
    parts = [name] + [options[key] for key in ("config", "split") if key in options]
    return "hf:" + "/".join(parts)


def load_dataset_problems(
    kind: str, target: str, options: Mapping[str, str], limit: int | None = None
) -> list[Problem]:
    """The problems of an ``hf:`` or ``file:`` spec (parsed; option values as given, unconverted)."""
    label = f"{kind}:{target}"
    fmt = parse_format(options.get("format", "string" if "scorer" in options else "numeric"), label)
    scorer = load_scorer(options["scorer"], label) if "scorer" in options else None
    dataset = _load_file(target, label) if kind == "file" else _load_hf(target, options, label)
    source = _Source(label, _prefix(kind, target, options), _fields(options, fmt), fmt, scorer)
    return _to_problems(dataset, source, limit)
