"""Problem sources, prompts, answer scoring and splits.

Public API::

    load_problems(spec, limit=None) -> list[Problem]      # spec syntax: see peft_cca.tasks.sources
    build_prompt(tokenizer, problem, style="chat", options=None) -> str; encode_prompt(tokenizer, text) -> list[int]
    prompt_options(problems, split_of, template=None, shots=0, seed=0) -> PromptOptions  # template, k-shot
    stop_strings(style) -> tuple[str, ...]
    score(problem, completion) -> bool                   # or problem.score(completion)
    assign_splits(problems, seed=0) -> {problem_id: "train"|"validation"|"test"}
"""

from peft_cca.tasks.answers import extract_number, extract_text, score_numeric
from peft_cca.tasks.checkers import FORMATS as ANSWER_FORMATS
from peft_cca.tasks.problem import Problem, score
from peft_cca.tasks.prompts import (
    DEFAULT_PROMPT_STYLE,
    PROMPT_STYLES,
    PromptOptions,
    PromptTemplate,
    answer_target,
    build_prompt,
    encode_prompt,
    prompt_options,
    resolve_prompt_style,
    stop_strings,
)
from peft_cca.tasks.sources import load_problems, parse_spec
from peft_cca.tasks.splits import assign_splits, groups_below, split_counts

# SmolLM2-135M-Instruct, chat prompt, greedy, 50 problems: 56% right (README calibration table; the paper
# trains on templates under 80%). Sums/differences of two one-digit numbers.
DEFAULT_TASK = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1&size=200"
# Reasoning-gym tasks that are not the target skill, for retention: what the amplified model must not forget.
# Chosen because SmolLM2-135M-Instruct gets some of them right (16 problems, 48 tokens: aiw 25%, number_sequence
# 25%, products 12%, gcd 6%); on letter_counting, spell_backward, word_sorting, syllogism and
# family_relationships it scores 0%, which could never show forgetting.
DEFAULT_RETENTION_TASKS = ("aiw", "number_sequence", "products", "gcd")


def retention_tasks_for(model: str | None) -> tuple[str, ...]:
    """The retention suite of ``model``: the calibrated one of an offline model (tasks its base can lose, see
    ``peft-cca calibrate``), else :data:`DEFAULT_RETENTION_TASKS`."""
    from peft_cca.defaults import CALIBRATED_RETENTION_TASKS

    return CALIBRATED_RETENTION_TASKS.get(model or "", DEFAULT_RETENTION_TASKS)


__all__ = [
    "ANSWER_FORMATS",
    "DEFAULT_PROMPT_STYLE",
    "DEFAULT_RETENTION_TASKS",
    "DEFAULT_TASK",
    "PROMPT_STYLES",
    "Problem",
    "PromptOptions",
    "PromptTemplate",
    "answer_target",
    "assign_splits",
    "build_prompt",
    "encode_prompt",
    "extract_number",
    "extract_text",
    "groups_below",
    "load_problems",
    "parse_spec",
    "prompt_options",
    "resolve_prompt_style",
    "retention_tasks_for",
    "score",
    "score_numeric",
    "split_counts",
    "stop_strings",
]
