"""Prompt formats: the tokenizer's chat template for instruct models, or k-shot plain text (lm-eval's, or the
CCA authors' own variant of it).

A prompt is returned as the exact text the model sees, special tokens included, so it is encoded with
``add_special_tokens=False`` and stored verbatim in the Error-Localization dataset.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from peft_cca.errors import UsageError
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


def build_prompt(
    tokenizer, problem: Problem | str, style: str = DEFAULT_PROMPT_STYLE, shots: int = 8, instruction: str = ""
) -> str:
    """The full prompt text for ``problem`` in ``style`` ("auto", "chat", or "fewshot"/"authors" with ``shots``
    exemplars).

    The chat prompt is the bare question by default: on SmolLM2-135M an added instruction such as 'End with
    "The answer is N."' lowered accuracy (it then often answers with a bare, wrong number); see the README.
    ``instruction`` is appended on its own line when given.
    """
    question = problem if isinstance(problem, str) else problem.question
    style = resolve_prompt_style(tokenizer, style)
    if style == "chat":
        content = question.strip() + (f"\n{instruction}" if instruction else "")
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if style == "authors":
        lines = [AUTHORS_HEADER]
        lines += [f"Q: {q}\n{AUTHORS_CUE} {a}" for q, a in authors_exemplars()[:shots]]
        lines.append(f"Q: {question.strip()}\n{AUTHORS_CUE}")
        return _bos_text(tokenizer) + "\n".join(lines)
    # fewshot: lm-eval's gsm8k-cot format: "Q: <question>\nA: <target>" joined by blank lines.
    blocks = [f"Q: {q}\nA: {a}" for q, a in gsm8k_cot_exemplars()[:shots]]
    blocks.append(f"Q: {question.strip()}\nA:")
    return _bos_text(tokenizer) + "\n\n".join(blocks)


def stop_strings(style: str) -> tuple[str, ...]:
    """Strings that end a completion in ``style``, resolved (chat ends on the EOS token alone)."""
    if style == "auto":  # which strings apply depends on the tokenizer
        raise ValueError("resolve the 'auto' prompt style with resolve_prompt_style(tokenizer, style) first")
    return {"fewshot": FEWSHOT_STOP_STRINGS, "authors": AUTHORS_STOP_STRINGS}.get(style, ())


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt built by :func:`build_prompt` (its special tokens are already in the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
