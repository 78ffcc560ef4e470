"""Exact match on a task: per group and macro, with stage 1's prompts, batched greedy generation and scorers.

The authors select and report the macro average over templates; "right" means the same here as when the errors
were localized. Under ``accelerate launch`` the generation is split across processes in fixed units of
``batch_size`` problems and gathered, so N processes score exactly what one process scores (each unit is the same
batch either way); with a ``cache`` folder every finished unit is kept on disk, so an interrupted run, with any
number of processes, resumes where it stopped. Stage 3 and the LoRA baseline validate with it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from peft_cca.errors import UsageError
from peft_cca.runtime.generation import generate
from peft_cca.runtime.runfolder import atomic_write_json, check_settings
from peft_cca.tasks.answers import answer_is_final
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import (
    DEFAULT_PROMPT_STYLE,
    PromptOptions,
    build_prompt,
    encode_prompt,
    resolve_prompt_style,
    stop_strings,
)


def _processes() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` unless launched with several accelerate processes."""
    from peft_cca.runtime.placement import process_state

    state = process_state()
    return state.process_index, state.num_processes


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by the main process only, its result (or its :class:`UsageError`) handed to every process.

    For work that must not be repeated (lm-eval) or must happen once (recording settings); the other processes
    wait instead of running into a collective the main process never reaches.
    """
    rank, world = _processes()
    outcome: tuple[bool, Any] = (True, None)
    if rank == 0:
        try:
            outcome = (True, fn())
        except UsageError as err:
            outcome = (False, str(err))
    if world > 1:
        from accelerate.utils import broadcast_object_list

        outcome = broadcast_object_list([outcome])[0]
    if not outcome[0]:
        raise UsageError(outcome[1])
    return outcome[1]


def prepare_cache(folder: Path, settings: Mapping[str, Any]) -> Path:
    """A resumable cache folder for :func:`evaluate_exact_match`, refused when it was made with other settings."""
    folder = Path(folder)
    hint = f"delete {folder} to start afresh, or choose another --out"
    on_main(lambda: check_settings(folder, settings, restart_hint=hint))
    return folder


def _generate_units(
    model: nn.Module,
    tokenizer,
    inputs: list[list[int]],
    unit: int,
    cache: Path | None,
    progress: str | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Completions of ``inputs``, unit by unit (``unit`` inputs each), units shared out over the processes.

    A unit is generated as one batch whichever process takes it, so the texts do not depend on the process count.
    ``progress`` names a bar (in problems, the main process's share) for a long evaluation; None: no bar.
    """
    # units of similar lengths pad least: inputs are sorted longest first (then by position) before cutting
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), i))
    units = [(begin, [inputs[i] for i in order[begin : begin + unit]]) for begin in range(0, len(inputs), unit)]
    done: dict[int, list[str]] = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for index in range(len(units)):
            path = cache / f"unit-{index:05d}.json"
            if path.exists():
                done[index] = json.loads(path.read_text())
    rank, world = _processes()
    if world > 1:  # every process has listed the cached units before any process writes a new one
        from peft_cca.runtime.placement import process_state

        process_state().wait_for_everyone()
    mine = [index for index in range(len(units)) if index not in done][rank::world]
    total = sum(len(units[index][1]) for index in mine)
    with tqdm(total=total, desc=progress, unit="problem", disable=progress is None or rank != 0 or not total) as bar:
        for index in mine:
            outputs = generate(model, tokenizer, units[index][1], batch_size=unit, **generate_kwargs)
            done[index] = [generation.text for (generation,) in outputs]
            if cache is not None:
                atomic_write_json(cache / f"unit-{index:05d}.json", done[index])
            bar.update(len(units[index][1]))
    if world > 1:
        from accelerate.utils import gather_object

        done.update(gather_object([(index, done[index]) for index in mine]))
    texts = [text for index in range(len(units)) for text in done[index]]
    return [texts[position] for position in sorted(range(len(order)), key=order.__getitem__)]


@torch.no_grad()
def evaluate_exact_match(
    model: nn.Module,
    tokenizer,
    problems: Sequence[Problem],
    *,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    return_completions: bool = False,
    cache: Path | None = None,
    prompt_options: PromptOptions | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Greedy exact match: ``{"macro", "micro", "n", "groups": {group: {"accuracy", "n"}}}``.

    Generation stops once the answer sentence is closed (the extracted answer can no longer change), so the
    score equals that of the full completion at a fraction of the tokens. Every process of a multi-process
    launch must call it (the work is split and gathered); ``cache`` (see :func:`prepare_cache`) keeps each
    finished batch for a resume. ``prompt_options`` are stage 1's template and exemplars (None: the style's own).
    ``progress`` names a progress bar in problems (None, as in validation during training: no bar).
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    prompt_style = resolve_prompt_style(tokenizer, prompt_style)
    inputs = [
        encode_prompt(tokenizer, build_prompt(tokenizer, p, prompt_style, options=prompt_options)) for p in problems
    ]
    was_training = model.training
    model.eval()
    texts = _generate_units(
        model,
        tokenizer,
        inputs,
        batch_size,
        cache,
        progress,
        max_new_tokens=max_new_tokens,
        stop_strings=stop_strings(prompt_style),
        stop_when=answer_is_final,
    )
    model.train(was_training)
    correct: dict[str, list[bool]] = defaultdict(list)
    completions = []
    for problem, text in zip(problems, texts, strict=True):
        ok = problem.score(text)
        correct[problem.group_id].append(ok)
        completions.append({"id": problem.id, "group_id": problem.group_id, "completion": text, "correct": ok})
    groups = {g: {"accuracy": sum(v) / len(v), "n": len(v)} for g, v in sorted(correct.items())}
    result: dict[str, Any] = {
        "macro": sum(g["accuracy"] for g in groups.values()) / len(groups),
        "micro": sum(sum(v) for v in correct.values()) / len(problems),
        "n": len(problems),
        "groups": groups,
    }
    if return_completions:
        result["completions"] = completions
    return result


def validation_scorer(
    tokenizer,
    problems: Sequence[Problem],
    *,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    what: str = "training",
    prompt_options: PromptOptions | None = None,
):
    """``model -> macro exact match on problems``: how CCA and LoRA pick their best step (as the authors do)."""
    if not problems:
        raise ValueError(f"{what} needs validation problems (or an evaluate_fn) to pick the best step")

    def score(model: nn.Module) -> float:
        return evaluate_exact_match(
            model,
            tokenizer,
            problems,
            prompt_style=prompt_style,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            prompt_options=prompt_options,
        )["macro"]

    return score
