"""Prompt formats: the tokenizer's chat template for instruct models, or k-shot plain text (lm-eval's, or the
CCA authors' own variant of it).

A prompt is returned as the exact text the model sees, special tokens included, so it is encoded with
``add_special_tokens=False`` and stored verbatim in the Error-Localization dataset.

:class:`PromptOptions` (built by :func:`prompt_options`) adds what a task of one's own needs: a
:class:`PromptTemplate` over the row's fields in place of the bare question, and k exemplars drawn with a seed
from the training split in place of the built-in GSM8K ones. Each exemplar is the problem's prompt text followed by
:func:`answer_target` (its worked solution, if any, and "The answer is X."): plain-text blocks for the fewshot and
authors styles, user/assistant turns of the chat template for the chat style.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from peft_cca.errors import UsageError
from peft_cca.tasks.dataset_source import MissingFieldError, choice_listing, lookup
from peft_cca.tasks.problem import Problem

PROMPT_STYLES = ("auto", "chat", "fewshot", "authors")
# auto: the chat template when the tokenizer has one (instruct models), else the few-shot prompt (base
# models such as the offline gemma3-270m, whose tokenizer carries no template)
DEFAULT_PROMPT_STYLE = "auto"
FEWSHOT_STOP_STRINGS = ("Q:", "\n\n")
# The authors' prompt separates exemplars by single newlines, so a blank line is no sign that the answer is
# over (their code decodes to the budget and cuts at the first "answer is" sentence, as answers.py does).
AUTHORS_STOP_STRINGS = ("Q:",)
# The CCA authors' 8-shot prompt (math_reasoning/templates/cot_prompt_template.txt and gsm8k-cot.json in
# apple/ml-constructive-circuit-amplification), the GSM-Symbolic paper's format: this header, then
# "Q: <question>\nA: Let's think step by step. <solution>" per exemplar, all joined by single newlines, without
# chat template. Their exemplars are lm-eval's gsm8k-cot ones with "The final answer is N." as the last sentence.
AUTHORS_HEADER = "As an expert problem solver, solve step by step the following mathematical questions."
AUTHORS_CUE = "A: Let's think step by step."


@lru_cache(maxsize=1)
def gsm8k_cot_exemplars() -> tuple[tuple[str, str], ...]:
    """The 8 (question, chain-of-thought) exemplars of lm-eval's gsm8k-cot task, read from the installed
    lm-eval so that the few-shot prompt is the one the authors used, not a retyped copy."""
    path = resources.files("lm_eval") / "tasks" / "gsm8k" / "gsm8k-cot.yaml"
    config = yaml.safe_load(path.read_text())
    samples = config["fewshot_config"]["samples"]
    return tuple((sample["question"], sample["target"]) for sample in samples)


def authors_exemplars() -> tuple[tuple[str, str], ...]:
    """The authors' 8 exemplars: lm-eval's gsm8k-cot ones ending in "The final answer is N." (checked in the
    tests against the authors' full prompt text)."""
    return tuple(
        (question, target.replace("The answer is", "The final answer is")) for question, target in gsm8k_cot_exemplars()
    )


def _bos_text(tokenizer) -> str:
    """The BOS token as text when the tokenizer would add one by itself (prompts are encoded without it)."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    return tokenizer.bos_token if bos is not None and probe and probe[0] == bos else ""


def resolve_prompt_style(tokenizer, style: str = DEFAULT_PROMPT_STYLE) -> str:
    """``style`` with "auto" replaced by "chat" or "fewshot" for this tokenizer; other styles are checked."""
    if style not in PROMPT_STYLES:
        raise UsageError(f"unknown prompt style {style!r}: use one of {', '.join(PROMPT_STYLES)}")
    if style != "auto":
        return style
    return "chat" if getattr(tokenizer, "chat_template", None) else "fewshot"


# GSM8K-style calculator annotations ("<<48/2=24>>"): no exemplar of any prompt style has them, so a target
# with them would teach a format the prompts never show
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def answer_target(problem: Problem, style: str = "fewshot") -> str:
    """What a right completion of ``problem`` reads: its worked solution when the source has one (on one line,
    as the built-in exemplars are), closed by the answer sentence of the resolved ``style`` ("The final answer is
    X." for the authors' prompt, else "The answer is X."). The text of a drawn exemplar's answer."""
    solution = _CALCULATOR.sub("", problem.solution or "").strip()
    closing = f"The {'final ' if style == 'authors' else ''}answer is {problem.answer}."
    return f"{' '.join(solution.split())} {closing}" if solution else closing


class _FieldFormatter(string.Formatter):
    """``str.format`` where a field name is a whole dotted path looked up by ``resolve`` (no attribute access)."""

    def __init__(self, resolve: Callable[[str], Any]) -> None:
        self.resolve = resolve

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        return self.resolve(field_name), field_name


@dataclass(frozen=True)
class PromptTemplate:
    """A format string over a problem's fields, the prompt text in place of the bare question.

    ``{question}`` is the question field's text, ``{choices}`` its choices as "A. <text>" lines, any other name a
    field of the source row by dotted path (``{meta.topic}``, ``{choices.0}``); ``{{`` and ``}}`` are braces.
    In the fewshot style the rendered text is the whole block (lm-eval's ``doc_to_text``: end it with your cue,
    such as "Answer:"); in the chat style it is the user's message.
    """

    text: str

    @property
    def names(self) -> list[str]:
        """The field names the template uses, in order."""
        return [name for _, name, _, _ in string.Formatter().parse(self.text) if name is not None]

    def __post_init__(self) -> None:
        try:
            names = self.names
        except ValueError as error:
            raise UsageError(f"prompt template {self.text!r}: {error}; write {{{{ and }}}} for braces") from None
        if not names:
            raise UsageError(f"prompt template {self.text!r} names no field; write e.g. 'Q: {{question}}\\nA:'")
        if any(not name or name.isdigit() for name in names):
            raise UsageError(f"prompt template {self.text!r}: name each field, e.g. {{question}}, not {{}} or {{0}}")

    @classmethod
    def from_option(cls, value: str) -> PromptTemplate:
        """The ``--prompt-template`` value: a format string, or the path of a file holding one (its final newline
        dropped); a value with a ``{`` is always a format string."""
        if "{" in value:
            return cls(value)
        path = Path(value).expanduser()
        if not path.is_file():
            raise UsageError(f"--prompt-template {value!r} names no file and has no {{field}}; give either")
        try:
            return cls(path.read_text(encoding="utf-8").removesuffix("\n"))
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--prompt-template {value}: cannot read it as UTF-8 text ({error})") from None

    def render(self, problem: Problem) -> str:
        """The template filled from ``problem``; a field it lacks is a UsageError naming the problem."""

        def resolve(name: str) -> Any:
            if name == "question":
                return problem.metadata.get("question", problem.question)
            if name == "choices":
                if not problem.choices:
                    raise UsageError(
                        f"prompt template names {{choices}}, but problem {problem.id!r} has none; "
                        "add choices=<field> to the task spec"
                    )
                return choice_listing(problem.choices)
            try:
                return lookup(problem.fields, name)
            except MissingFieldError as error:
                fields = dict.fromkeys(["question", *(["choices"] if problem.choices else []), *error.available])
                raise UsageError(
                    f"prompt template: problem {problem.id!r} ({problem.source or 'no source'}): no value for "
                    f"{{{name}}}; its fields are {', '.join(fields)}"
                ) from None

        return _FieldFormatter(resolve).format(self.text)


@dataclass(frozen=True)
class PromptOptions:
    """A prompt's template and drawn exemplars (the defaults keep each style's own prompt).

    ``exemplars`` are candidates in the order drawn; a prompt takes the first ``shots`` of them that are not its
    own problem, so a training problem never shows its own answer and every other prompt has the same exemplars.
    """

    template: PromptTemplate | None = None
    shots: int = 0
    exemplars: tuple[Problem, ...] = ()
    seed: int = 0

    def exemplars_for(self, problem: Problem) -> tuple[Problem, ...]:
        return tuple(e for e in self.exemplars if e.id != problem.id)[: self.shots]

    def to_dict(self) -> dict[str, Any]:
        """What a run records to rebuild these prompts."""
        return {
            "prompt_template": self.template.text if self.template else None,
            "num_fewshot": self.shots,
            "fewshot_seed": self.seed,
            "exemplar_ids": [e.id for e in self.exemplars],
        }


def prompt_options(
    problems: Iterable[Problem],
    split_of: Mapping[str, str],
    *,
    template: str | None = None,
    shots: int = 0,
    seed: int = 0,
) -> PromptOptions:
    """Options for a run's prompts: ``template`` as ``--prompt-template`` gives it (text or a file), and ``shots``
    (``--num-fewshot``) exemplars drawn with ``seed`` (``--fewshot-seed``) from the problems that ``split_of``
    (:func:`~peft_cca.tasks.splits.assign_splits`) puts in "train". The draw depends only on the training
    problems' ids and the seed, not on their order."""
    parsed = PromptTemplate.from_option(template) if template is not None else None
    if shots < 0:
        raise UsageError(f"--num-fewshot {shots}: use 0 (the style's own exemplars) or more")
    train = sorted((p for p in problems if split_of.get(p.id) == "train"), key=lambda p: p.id)
    if shots > len(train):
        raise UsageError(
            f"--num-fewshot {shots}: the training split has only {len(train)} problems; lower --num-fewshot"
        )
    drawn = random.Random(f"exemplars:{seed}").sample(train, min(shots + 1, len(train))) if shots else []
    return PromptOptions(template=parsed, shots=shots, exemplars=tuple(drawn), seed=seed)


def _builtin_exemplars(style: str, shots: int) -> list[tuple[Problem, str]]:
    """The style's own exemplars as (problem, answer text): lm-eval's gsm8k-cot ones, or the authors' variant."""
    pairs = authors_exemplars() if style == "authors" else gsm8k_cot_exemplars()
    return [
        (Problem(id=f"{style}-exemplar:{i}", group_id="", question=q, answer=""), a) for i, (q, a) in enumerate(pairs)
    ][:shots]


def _check_builtin_fields(template: PromptTemplate | None, builtin: bool) -> None:
    """The built-in GSM8K exemplars have a question and nothing else, so a template over other fields cannot
    render them."""
    others = sorted(set(template.names) - {"question"}) if template is not None and builtin else []
    if others:
        raise UsageError(
            f"prompt template {template.text!r} names {', '.join(others)}, which the built-in GSM8K exemplars lack "
            "(they have only {question}): draw exemplars from the data with --num-fewshot K"
        )


def build_prompt(
    tokenizer,
    problem: Problem | str,
    style: str = DEFAULT_PROMPT_STYLE,
    shots: int = 8,
    instruction: str = "",
    options: PromptOptions | None = None,
) -> str:
    """The full prompt text for ``problem`` in ``style`` ("auto", "chat", or "fewshot"/"authors" with ``shots``
    built-in exemplars), with ``options``' template and drawn exemplars when given.

    The chat prompt is the bare question by default: on SmolLM2-135M an added instruction such as 'End with
    "The answer is N."' lowered accuracy (it then often answers with a bare, wrong number); see the README.
    ``instruction`` is appended on its own line when given.
    """
    options = options or PromptOptions()
    if isinstance(problem, str):
        problem = Problem(id="", group_id="", question=problem, answer="")
    style = resolve_prompt_style(tokenizer, style)
    if style == "authors" and options.template is not None:
        raise UsageError("the authors prompt style is their fixed GSM prompt; use --prompt-style fewshot or chat")

    def text(item: Problem) -> str:
        return options.template.render(item) if options.template is not None else item.question.strip()

    if options.shots:
        exemplars = [(e, answer_target(e, style)) for e in options.exemplars_for(problem)]
    else:
        exemplars = _builtin_exemplars(style, shots) if style != "chat" else []
        _check_builtin_fields(options.template, bool(exemplars))
    if style == "chat":
        messages = []
        for exemplar, target in exemplars:
            messages += [{"role": "user", "content": text(exemplar)}, {"role": "assistant", "content": target}]
        messages.append({"role": "user", "content": text(problem) + (f"\n{instruction}" if instruction else "")})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if style == "authors":
        lines = [AUTHORS_HEADER]
        lines += [f"Q: {text(e)}\n{AUTHORS_CUE} {target}" for e, target in exemplars]
        lines.append(f"Q: {text(problem)}\n{AUTHORS_CUE}")
        return _bos_text(tokenizer) + "\n".join(lines)
    # fewshot: lm-eval's gsm8k-cot format, "Q: <question>\nA: <target>" joined by blank lines; with a template, its
    # text then " <target>" (lm-eval's doc_to_text and target delimiter)
    if options.template is not None:
        blocks = [f"{text(e)} {target}" for e, target in exemplars] + [text(problem)]
    else:
        blocks = [f"Q: {text(e)}\nA: {target}" for e, target in exemplars] + [f"Q: {text(problem)}\nA:"]
    return _bos_text(tokenizer) + "\n\n".join(blocks)


def stop_strings(style: str) -> tuple[str, ...]:
    """Strings that end a completion in ``style``, resolved (chat ends on the EOS token alone)."""
    if style == "auto":  # which strings apply depends on the tokenizer
        raise ValueError("resolve the 'auto' prompt style with resolve_prompt_style(tokenizer, style) first")
    return {"fewshot": FEWSHOT_STOP_STRINGS, "authors": AUTHORS_STOP_STRINGS}.get(style, ())


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt built by :func:`build_prompt` (its special tokens are already in the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
