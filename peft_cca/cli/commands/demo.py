"""``peft-cca demo``: every CCA stage end to end on the offline model, with the comparison table."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft_cca.cli.commands.evaluate import GENERAL_MODES, default_general
from peft_cca.cli.commands.options import (
    add_prompt_arguments,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from peft_cca.cli.demo_plan import PRESETS, SKIPPABLE, DemoSettings, recorded_retention_tasks, run_demo
from peft_cca.runtime.placement import add_runtime_arguments, runtime_argv
from peft_cca.tasks import DEFAULT_RETENTION_TASKS, DEFAULT_TASK, PROMPT_STYLES, retention_tasks_for
from peft_cca.tasks.protocol import PAPER

HELP = "every stage end to end on the offline model, with a comparison table"


def _comma_list(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for a comma list whose every item passes ``kind`` (a type of commands/options.py)."""

    def parse(text: str) -> tuple[Any, ...]:
        items = [v.strip() for v in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list such as 1e-3,1e-2 (an item is empty)")
        return tuple(kind(v) for v in items)

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run CCA end to end: localize pivotal tokens, learn the circuit with DCM, amplify it (with and without "
        "the mask), train the LoRA baseline on the same problems, evaluate all of them on the test split and on "
        "the retention suite, and print the comparison table. Interrupt it at any time and run the same command "
        "again: finished stages are skipped and the interrupted one resumes."
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default: runs/demo)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="full",
        help="full (default): the paper's protocol with lambda and lr sweeps and 3 seeds (hours on a CPU); "
        "quick: every stage at small counts, ~15 min on 2 CPU cores; paper: the paper on GSM-Symbolic for a GPU "
        f"(default task {PAPER.task}; the authors' prompt, budgets, sampling and DCM schedule), e.g. "
        "--preset paper --model google/gemma-2-2b-it",
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="offline name (smollm2-135m-instruct, gemma3-270m), HF model id or local path",
    )
    parser.add_argument(
        "--task",
        default=None,
        help="target task spec, e.g. a reasoning-gym task 'rg:NAME?key=value&...', "
        "'gsm-symbolic:main' (hub) or 'gsm-symbolic-file:PATH.jsonl' (see peft-cca localize "
        f"--help); GSM-Symbolic specs follow the paper's protocol; default: {PAPER.task} with --preset paper, "
        f"else {DEFAULT_TASK}",
    )
    parser.add_argument(
        "--retention-tasks",
        nargs="+",
        help="reasoning-gym tasks the amplified model must not get worse at (default: what --out recorded when "
        "resuming, else the model's calibrated suite for an offline model, see peft-cca calibrate, else "
        f"{' '.join(DEFAULT_RETENTION_TASKS)})",
    )
    parser.add_argument(
        "--general",
        choices=GENERAL_MODES,
        default=default_general(),
        help="general abilities in every evaluation (see `peft-cca evaluate --help`); the offline suite runs at the "
        "preset's size: quick 3 documents per task on MMLU STEM/Humanities and TriviaQA, full 20 on every "
        "task, paper all (default: offline where its data is installed, else none)",
    )
    parser.add_argument(
        "--method", choices=["branching", "prefix"], default="branching", help="pivot localization method of stage 1"
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=SKIPPABLE,
        default=[],
        help="comparison arms to leave out (with their evaluations), e.g. cca-nomask where training every "
        "weight is too slow",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in --out: remove what an earlier demo wrote there (a resume with other settings is "
        "refused without it)",
    )
    parser.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        help="prompt style of every stage (see peft-cca localize --help; default: the task's protocol)",
    )
    add_prompt_arguments(parser, recorded=False)  # stage 1 records them in meta.json; later stages follow it
    parser.add_argument(
        "--max-forgetting",
        type=non_negative_float,
        metavar="NATS",
        help="CCA and LoRA keep the best-validated step whose forgetting stays within NATS per token (see peft-cca "
        "amplify --help); with --general, forgetting is measured at every validation step either way",
    )
    add_runtime_arguments(parser, training=True)
    group = parser.add_argument_group("counts (override the preset)")
    group.add_argument("--problems", type=positive_int, help="problems drawn from the task")
    group.add_argument("--n-samples", type=positive_int, help="sampled counterfactual traces per problem")
    group.add_argument("--max-new-tokens", type=positive_int, help="generation budget per trace of stage 1")
    group.add_argument(
        "--eval-max-new-tokens", type=positive_int, help="generation budget of evaluation and validation"
    )
    group.add_argument("--lambdas", type=_comma_list(non_negative_float), help="DCM sparsity weights, comma-separated")
    group.add_argument("--max-fraction", type=probability, help="component budget of the lambda sweep, e.g. 0.02")
    group.add_argument("--dcm-epochs", type=positive_int, help="DCM epochs")
    group.add_argument("--dcm-lr", type=positive_float, help="DCM Adam learning rate")
    group.add_argument("--lrs", type=_comma_list(positive_float), help="CCA learning rates, comma-separated")
    group.add_argument("--steps", type=positive_int, help="CCA full-batch steps")
    group.add_argument("--seeds", type=_comma_list(non_negative_int), help="CCA seeds, e.g. 0,1,2")
    group.add_argument("--val-limit", type=positive_int, help="validation problems used to pick the best step")
    group.add_argument("--test-limit", type=positive_int, help="test problems evaluated")
    group.add_argument("--retention-size", type=positive_int, help="problems per retention task")
    group.add_argument("--lora-lrs", type=_comma_list(positive_float), help="LoRA learning rates, comma-separated")
    group.add_argument("--lora-epochs", type=positive_int, help="LoRA epochs over the training problems")


def prompt_argv(args: argparse.Namespace) -> list[str]:
    """The prompt flags the user gave, as stage 1's arguments (later stages take them from its meta.json)."""
    flags = {"--prompt-style": args.prompt_style, "--prompt-template": args.prompt_template}
    flags.update({"--num-fewshot": args.num_fewshot, "--fewshot-seed": args.fewshot_seed})
    return [item for flag, value in flags.items() if value is not None for item in (flag, str(value))]


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli import main as peft_cca
    from peft_cca.runtime.loading import resolve

    resolve(args.model)  # a mistyped model is one line now, not a failed first stage after the plan

    overrides = {
        name: getattr(args, name)
        for name in (
            "problems",
            "n_samples",
            "max_new_tokens",
            "eval_max_new_tokens",
            "lambdas",
            "max_fraction",
            "dcm_epochs",
            "dcm_lr",
            "lrs",
            "steps",
            "seeds",
            "val_limit",
            "test_limit",
            "retention_size",
            "lora_lrs",
            "lora_epochs",
        )
    }
    settings = DemoSettings(
        out=args.out,
        model=args.model,
        task=args.task,
        preset=args.preset,
        retention_tasks=tuple(
            args.retention_tasks or recorded_retention_tasks(args.out) or retention_tasks_for(args.model)
        ),
        general=args.general,
        method=args.method,
        skip=tuple(args.skip),
        overrides=overrides,
        runtime=tuple(runtime_argv(args)),
        prompt=tuple(prompt_argv(args)),
        max_forgetting=args.max_forgetting,
    )
    report = run_demo(settings, runner=peft_cca, echo=lambda line: print(line, flush=True), overwrite=args.overwrite)
    markdown = report / "report.md"
    if markdown.exists():
        print(markdown.read_text())
    print(f"report, tables and plots: {report}")
    return 0
