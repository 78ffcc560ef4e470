"""Option types and shared flags of the stage commands: argparse refuses nonsense at parse time, before any
model loads.

argparse turns a ``ValueError``/``ArgumentTypeError`` from a ``type=`` callable into one line, the command's usage
and exit code 2, so every numeric flag gets a type here that says what it expects. Nothing here imports torch:
the parser (and so ``--help``) must build in well under a second.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _number(text: str, kind: Callable[[str], float | int], what: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (steps, sizes, budgets)."""
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (seeds, counts that may be zero)."""
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return float(_number(text, float, "a number"))


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, temperatures)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be greater than 0")
    return value


def objective_spec(text: str) -> str:
    """``paper`` or ``margin:M`` (``--objective``), normalised (``margin:2.0`` is ``margin:2``)."""
    from peft_cca.amplify.objective import Objective
    from peft_cca.errors import UsageError

    try:
        return Objective.parse(text).name
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("objective ")) from err


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (lambdas, weight decay)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be 0 or more")
    return value


def probability(text: str) -> float:
    """A number in (0, 1] (top-p, fractions)."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} must be in (0, 1]")
    return value


def fraction_of_one(text: str) -> float:
    """A number in [0, 1] (accuracy thresholds)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} must be in [0, 1]")
    return value


def positive_int_or_auto(text: str) -> int | str:
    """``auto`` or an integer >= 1 (``--micro-batch``)."""
    return "auto" if text == "auto" else positive_int(text)


def add_prompt_arguments(parser: argparse.ArgumentParser, recorded: bool = True) -> None:
    """``--prompt-template``, ``--num-fewshot``, ``--fewshot-seed``: a task's own prompt. Stage 1 records them in
    meta.json (``recorded=False``: its defaults are none); later stages default to what it recorded, so they
    prompt as the errors were localized."""
    where = "the one in meta.json, else " if recorded else ""
    parser.add_argument(
        "--prompt-template",
        metavar="TEXT|FILE",
        help="format string over the task row's fields ({question}, {choices}, any field by dotted path such as "
        "{meta.topic}), or a file holding one; replaces 'Q: ...\\nA:' (fewshot) or the user message (chat) "
        f"(default: {where}none)",
    )
    parser.add_argument(
        "--num-fewshot",
        type=non_negative_int,
        metavar="K",
        help="exemplars drawn from the training split in place of the style's built-in GSM8K ones "
        f"(default: {where}0: the style's own)",
    )
    parser.add_argument(
        "--fewshot-seed", type=non_negative_int, metavar="N", help=f"seed of the exemplar draw (default: {where}0)"
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--prompt-style``, the prompt options and ``--max-new-tokens``: how every stage that scores completions
    prompts and stops."""
    parser.add_argument("--prompt-style", help="prompt style (default: the one in meta.json, else auto)")
    add_prompt_arguments(parser)
    parser.add_argument(
        "--max-new-tokens", type=positive_int, help="generation budget (default: 1500 for GSM-Symbolic tasks, else 256)"
    )


def add_step_choice_arguments(parser: argparse.ArgumentParser) -> None:
    """``--forgetting-tokens`` and ``--max-forgetting``: let the choice of step see what it costs elsewhere (help
    and defaults: :class:`~peft_cca.sweep.settings.StepChoice`)."""
    from peft_cca.documented import help_of
    from peft_cca.sweep.settings import StepChoice

    parser.add_argument(
        "--forgetting-tokens", type=non_negative_int, metavar="N", help=help_of(StepChoice, "forgetting_tokens")
    )
    parser.add_argument(
        "--max-forgetting", type=non_negative_float, metavar="NATS", help=help_of(StepChoice, "max_forgetting")
    )


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--selection-problems``, ``--selection-task`` and ``--select-on``: the frontier's held-out split."""
    parser.add_argument(
        "--selection-problems",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="score every validated (lr, step) on N held-out problems (at least 40; none a stage-1 problem by id or "
        "question), with the gain over the base and its paired stderr: the points of compare's frontier "
        "(default: 0, off)",
    )
    parser.add_argument(
        "--selection-task",
        metavar="SPEC",
        help="task spec the selection problems are drawn from (default: the run's own; for reasoning-gym give a "
        "larger size= so problems beyond stage 1's exist)",
    )
    from peft_cca.documented import flag_options
    from peft_cca.sweep.settings import SELECT_ON, StepChoice

    parser.add_argument(
        "--select-on",
        choices=SELECT_ON,
        **flag_options(StepChoice, "select_on"),
    )


def add_training_run_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The flags ``amplify`` and ``lora`` share after their own: validation, output folder, seed, placement."""
    from peft_cca.cli.runtime_flags import add_runtime_arguments

    parser.add_argument("--val-limit", type=positive_int, help="use at most this many validation problems")
    add_generation_arguments(parser)
    from peft_cca.documented import flag_options
    from peft_cca.evaluation.settings import Scoring

    parser.add_argument(
        "--eval-batch-size",
        type=positive_int,
        **flag_options(Scoring, "batch_size"),
    )
    add_step_choice_arguments(parser)
    add_selection_arguments(parser)
    parser.add_argument("--out", type=Path, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help="train afresh into an --out made with other settings")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    add_runtime_arguments(parser, training=True)


# training settings added after 0.1, with their defaults: recorded in settings.json only when set, so a folder
# made before they existed still resumes
LATER_SETTINGS = {"objective": "paper", "selection_problems": 0, "selection_task": None, "select_on": "validation"}


def settings_set_later(args: argparse.Namespace) -> tuple[str, ...]:
    """The later settings ``args`` sets to something other than their default."""
    return tuple(key for key, default in LATER_SETTINGS.items() if getattr(args, key, default) != default)


def selection_from_args(args: argparse.Namespace) -> list | None:
    """The selection problems ``--selection-problems`` asks for (None when off); refused in one line when the
    request cannot be met (fewer than 40, or not enough new problems)."""
    from peft_cca.errors import UsageError

    if args.select_on == "selection" and not args.selection_problems:
        raise UsageError("--select-on selection needs a selection split: give --selection-problems N (N >= 40)")
    if not args.selection_problems:
        return None
    from peft_cca.evaluation.selection import MIN_SELECTION
    from peft_cca.localize.problems import selection_problems

    if args.selection_problems < MIN_SELECTION:
        raise UsageError(f"--selection-problems {args.selection_problems}: give at least {MIN_SELECTION}")
    return selection_problems(args.run, args.selection_problems, task=args.task, selection_task=args.selection_task)


def prompt_options_from_args(args: argparse.Namespace):
    """The prompt options of a later stage (amplify, lora, evaluate): its flags over what stage 1 recorded."""
    from peft_cca.localize.problems import stage_prompt_options

    return stage_prompt_options(
        args.run,
        task=args.task,
        split_seed=args.split_seed,
        template=args.prompt_template,
        shots=args.num_fewshot,
        seed=args.fewshot_seed,
    )


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for a comma list whose every item passes ``kind`` (a type of commands/options.py)."""

    def parse(text: str) -> tuple[Any, ...]:
        items = [v.strip() for v in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list such as 1e-3,1e-2 (an item is empty)")
        return tuple(kind(v) for v in items)

    return parse


def scoring_from_args(args: argparse.Namespace, meta, options):
    """How ``amplify`` and ``lora`` score validation: their flags over what stage 1 recorded (``meta``, a
    :class:`~peft_cca.localize.folder.Stage1Meta`), with stage 1's prompt ``options``."""
    from peft_cca.evaluation.settings import Scoring
    from peft_cca.tasks.protocol import setting

    return Scoring(
        prompt_style=args.prompt_style or meta.prompt_style or "auto",
        max_new_tokens=setting(args.max_new_tokens, args.task or meta.task, "eval_max_new_tokens"),
        batch_size=args.eval_batch_size,
        prompt_options=options,
    )


def step_choice_from_args(args: argparse.Namespace):
    """The step choice of ``amplify`` and ``lora``: ``--forgetting-tokens``, ``--max-forgetting``, ``--select-on``."""
    from peft_cca.sweep.settings import StepChoice

    return StepChoice(
        forgetting_tokens=args.forgetting_tokens, max_forgetting=args.max_forgetting, select_on=args.select_on
    )
