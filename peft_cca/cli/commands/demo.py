"""``peft-cca demo``: every CCA stage end to end on the offline model, with the comparison table."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from peft_cca.cli.commands.evaluate import GENERAL_MODES, default_general
from peft_cca.cli.commands.options import (
    add_prompt_arguments,
    non_negative_float,
)
from peft_cca.cli.demo_plan import DemoSettings
from peft_cca.cli.demo_presets import PRESETS, SKIPPABLE, Preset
from peft_cca.cli.demo_runner import recorded_retention_tasks, run_demo
from peft_cca.cli.runtime_flags import add_runtime_arguments, runtime_argv
from peft_cca.tasks import DEFAULT_RETENTION_TASKS, DEFAULT_TASK, PROMPT_STYLES, retention_tasks_for
from peft_cca.tasks.protocol import PAPER

HELP = "every stage end to end on the offline model, with a comparison table"


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
        "quick: every stage at small counts, under 12 min on 2 idle CPU cores; paper: the paper on GSM-Symbolic "
        f"for a GPU (default task {PAPER.task}; the authors' prompt, budgets, sampling and DCM schedule), e.g. "
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
        "preset's size: quick 10 documents each of HellaSwag, ARC-Easy, PIQA and LAMBADA, full 20 on every "
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
    for count in fields(Preset):  # one flag per count, from its field (demo_presets.py)
        flag = "--" + count.name.replace("_", "-")
        group.add_argument(flag, type=count.metadata["type"], help=count.metadata["help"])


def prompt_argv(args: argparse.Namespace) -> list[str]:
    """The prompt flags the user gave, as stage 1's arguments (later stages take them from its meta.json)."""
    flags = {"--prompt-style": args.prompt_style, "--prompt-template": args.prompt_template}
    flags.update({"--num-fewshot": args.num_fewshot, "--fewshot-seed": args.fewshot_seed})
    return [item for flag, value in flags.items() if value is not None for item in (flag, str(value))]


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli import main as peft_cca
    from peft_cca.runtime.loading import resolve

    resolve(args.model)  # a mistyped model is one line now, not a failed first stage after the plan

    overrides = {count.name: getattr(args, count.name) for count in fields(Preset)}
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
