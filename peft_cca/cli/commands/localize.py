"""``peft-cca localize``: stage 1, the Error-Localization dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "stage 1: find pivotal tokens and write the Error-Localization dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.cli.commands.options import (
        add_prompt_arguments,
        non_negative_int,
        positive_float,
        positive_int,
        probability,
    )
    from peft_cca.cli.runtime_flags import add_runtime_arguments
    from peft_cca.runtime.loading import DEFAULT_MODEL
    from peft_cca.tasks import DEFAULT_TASK, PROMPT_STYLES
    from peft_cca.tasks.sources import __doc__ as spec_doc

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "Task specs:\n" + (spec_doc or "").split("Syntax:", 1)[-1]
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"offline model name, hub id or local path (default: {DEFAULT_MODEL})"
    )
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"problem source spec (default: {DEFAULT_TASK})")
    parser.add_argument(
        "--method",
        choices=("prefix", "branching"),
        default="branching",
        help="prefix: first token where greedy and counterfactual traces differ; branching: first "
        "token of the counterfactual whose inclusion flips the greedy completion (default)",
    )
    parser.add_argument(
        "--branching",
        choices=("fast", "naive"),
        default="fast",
        help="branching implementation: fast (exact, cached, only divergent positions; default) "
        "or naive (the paper's scan, one full completion per prefix length); same pivots",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="run folder: records.jsonl, summary.json, meta.json (re-running resumes)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in --out: remove what an earlier localize wrote there (a resume with other settings is "
        "refused without it)",
    )
    parser.add_argument("--limit", type=positive_int, help="use only the first N problems of the task")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the splits and of the samples (default: 0)"
    )
    parser.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLES,
        default=None,
        help="chat: the tokenizer's chat template; fewshot: lm-eval's 8-shot GSM8K CoT prompt; authors: the CCA "
        "authors' 8-shot prompt, no chat template; auto: chat when the tokenizer has a chat template (instruct "
        "models), else fewshot (default: authors for GSM-Symbolic tasks, the paper's protocol; else auto)",
    )
    add_prompt_arguments(parser, recorded=False)
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="token budget of every trace, prefix included (default: 2500 for GSM-Symbolic tasks, else 96)",
    )
    parser.add_argument(
        "--n-samples",
        type=positive_int,
        default=10,
        help="sampled traces per problem when looking for a counterfactual (T=0.8 when greedy is "
        "wrong, 1.2 when right; default: 10)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train"],
        choices=("train", "validation", "test"),
        help="splits whose problems get pivots (default: train; 52/8/40 per group)",
    )
    parser.add_argument(
        "--max-group-accuracy",
        type=positive_float,
        default=0.8,
        help="localize only groups whose greedy accuracy is below this (paper: 0.8)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="problems per greedy generation batch")
    parser.add_argument(
        "--branch-batch",
        type=positive_int,
        default=4,
        help="fast branching: divergent positions completed together in one batch",
    )
    parser.add_argument(
        "--batch-tokens",
        type=positive_int,
        help="cap of padded tokens (rows x (longest prompt + --max-new-tokens)) per generation batch; inputs are "
        "sorted by length and packed under it, at most --batch-size problems each (default: no cap)",
    )
    parser.add_argument(
        "--temperature-when-wrong",
        type=positive_float,
        default=0.8,
        help="sampling temperature when the greedy trace is wrong, to find a right one (authors: 0.8)",
    )
    parser.add_argument(
        "--temperature-when-right",
        type=positive_float,
        default=1.2,
        help="sampling temperature when the greedy trace is right, to find a wrong one (authors: 1.2)",
    )
    parser.add_argument(
        "--top-k",
        type=non_negative_int,
        default=50,
        help="sample among the k most likely tokens; 0 turns it off (default: 50, transformers' default, "
        "which the authors' sampling used)",
    )
    parser.add_argument(
        "--top-p",
        type=probability,
        default=1.0,
        help="nucleus sampling mass; 1.0 turns it off (default: 1.0, as the authors sampled)",
    )
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli.runtime_flags import runtime_from_args
    from peft_cca.localize.folder import why_no_records
    from peft_cca.localize.records import RECORDS
    from peft_cca.localize.run import LocalizeConfig, config_settings, localize
    from peft_cca.runtime.loading import load_model
    from peft_cca.runtime.runfolder import check_settings, ensure_output_dir
    from peft_cca.tasks import load_problems
    from peft_cca.tasks.protocol import setting

    config = LocalizeConfig(
        task=args.task,
        method=args.method,
        branching=args.branching,
        prompt_style=setting(args.prompt_style, args.task, "prompt_style"),
        prompt_template=args.prompt_template,
        num_fewshot=args.num_fewshot or 0,
        fewshot_seed=args.fewshot_seed or 0,
        max_new_tokens=setting(args.max_new_tokens, args.task, "localize_max_new_tokens"),
        n_samples=args.n_samples,
        seed=args.seed,
        batch_size=args.batch_size,
        branch_batch=args.branch_batch,
        batch_tokens=args.batch_tokens,
        temperature_when_greedy_wrong=args.temperature_when_wrong,
        temperature_when_greedy_right=args.temperature_when_right,
        top_k=args.top_k or None,
        top_p=args.top_p,
        splits=tuple(args.splits),
        max_group_accuracy=args.max_group_accuracy,
        limit=args.limit,
    )
    ensure_output_dir(args.out)  # a file or a read-only folder is refused before the model loads
    problems = load_problems(args.task, limit=args.limit)
    if not args.overwrite:  # a resume with other settings is refused before the model loads (localize checks all)
        check_settings(args.out, config_settings(config, args.model, problems), partial=True)
    model, tokenizer = load_model(args.model, runtime_from_args(args))
    summary = localize(model, tokenizer, problems, config, args.out, model_name=args.model, overwrite=args.overwrite)
    print(json.dumps({k: v for k, v in summary.items() if k != "accuracy_by_group"}, indent=2))
    print(f"wrote {summary['records']} records to {args.out / RECORDS}")
    why = why_no_records(summary)
    if why:  # a finished run, but nothing a later stage can learn from: say why, with the counts
        print(f"warning: no Error-Localization record: {why}", file=sys.stderr)
    return 0
