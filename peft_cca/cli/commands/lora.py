"""``peft-cca lora``: the LoRA SFT baseline on the same training problems, best validation step kept."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "the LoRA SFT baseline on the same training problems"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.baselines.settings import LoraSettings
    from peft_cca.cli.commands.options import (
        add_training_run_arguments,
        fraction_of_one,
        non_negative_int,
        positive_float,
        positive_int,
        positive_int_or_auto,
    )
    from peft_cca.documented import flag_options, help_of

    parser.add_argument("--run", required=True, type=Path, help="stage 1 run folder (meta.json)")
    parser.add_argument("--model", help="model name or path (default: the one in meta.json)")
    parser.add_argument("--task", help="task spec (default: the one in meta.json)")
    parser.add_argument("--split-seed", type=non_negative_int, default=0, help="split seed with --task")
    parser.add_argument("--lr", type=positive_float, nargs="+", **flag_options(LoraSettings, "lrs"))
    parser.add_argument("--epochs", type=positive_float, **flag_options(LoraSettings, "epochs"))
    parser.add_argument("--effective-batch", type=positive_int, **flag_options(LoraSettings, "effective_batch"))
    parser.add_argument(
        "--micro-batch",
        "--batch-size",
        dest="micro_batch",
        type=positive_int_or_auto,
        **flag_options(LoraSettings, "per_device_batch"),
    )
    parser.add_argument("--eval-every", type=positive_int, **flag_options(LoraSettings, "eval_every"))
    parser.add_argument("--max-steps", type=positive_int, help=help_of(LoraSettings, "max_steps"))
    parser.add_argument("--max-length", type=positive_int, **flag_options(LoraSettings, "max_length"))
    parser.add_argument("--rank", type=positive_int, **flag_options(LoraSettings, "rank"))
    parser.add_argument("--alpha", type=positive_int, **flag_options(LoraSettings, "alpha"))
    parser.add_argument("--dropout", type=fraction_of_one, **flag_options(LoraSettings, "dropout"))
    parser.add_argument("--train-limit", type=positive_int, help="use at most this many training problems")
    add_training_run_arguments(parser, "output folder (default: <run>/lora)")


def output_settings(args: argparse.Namespace, model: str, runtime: dict) -> dict:
    """What the adapter depends on (not the micro-batch or evaluation batch: they change speed only)."""
    keys = ("task", "split_seed", "lr", "epochs", "effective_batch", "eval_every", "max_steps", "max_length")
    keys += ("rank", "alpha", "dropout", "train_limit", "val_limit", "prompt_style", "prompt_template", "num_fewshot")
    keys += ("fewshot_seed", "max_new_tokens", "seed")
    keys += ("forgetting_tokens", "max_forgetting")
    from peft_cca.cli.commands.options import settings_set_later

    keys += settings_set_later(args)
    return {**{key: getattr(args, key) for key in keys}, "model": model, "runtime": runtime}


def settings_from_args(args: argparse.Namespace, meta, options):
    """The parsed flags as :class:`~peft_cca.baselines.settings.LoraSettings`, what :func:`lora_sft` takes; ``meta``
    (stage 1's record) and ``options`` (its prompt) fill what the flags leave to stage 1."""
    from peft_cca.baselines.settings import LoraSettings
    from peft_cca.cli.commands.options import scoring_from_args, step_choice_from_args

    return LoraSettings(
        lrs=tuple(args.lr),
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        epochs=args.epochs,
        effective_batch=args.effective_batch,
        per_device_batch=args.micro_batch,
        eval_every=args.eval_every,
        max_steps=args.max_steps or -1,
        max_length=args.max_length,
        seed=args.seed,
        scoring=scoring_from_args(args, meta, options),
        step_choice=step_choice_from_args(args),
    )


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli.runtime_flags import runtime_from_args
    from peft_cca.errors import UsageError
    from peft_cca.localize.folder import read_meta
    from peft_cca.runtime.runfolder import check_settings, clear_outputs, ensure_output_dir
    from peft_cca.sweep.runs import SUMMARY_FILES

    meta = read_meta(args.run)  # a missing or damaged meta.json is one line naming it
    runtime = runtime_from_args(args, training=True)
    out = ensure_output_dir(args.out or args.run / "lora")  # before the model loads: no work lost at save
    model_name = args.model or meta.model
    if model_name is None:
        raise UsageError(f"{meta.path} records no model: pass --model")
    from peft_cca.runtime.loading import resolve

    resolve(model_name)  # a mistyped --model is refused before settings.json records it and blocks the fixed rerun
    from peft_cca.cli.commands.options import prompt_options_from_args, selection_from_args

    # before settings.json records anything: a refused task spec or template must not block the fixed rerun
    options = prompt_options_from_args(args)
    selection = selection_from_args(args)  # a request it cannot meet is refused before settings.json
    check_settings(out, output_settings(args, model_name, runtime.record()), overwrite=args.overwrite)
    if args.overwrite:
        clear_outputs(out, ("adapter", SUMMARY_FILES["lora"]))

    from peft_cca.baselines.lora import lora_sft, target_kind
    from peft_cca.localize.problems import stage_problems
    from peft_cca.runtime.loading import load_model
    from peft_cca.runtime.placement import record_runtime

    model, tokenizer = load_model(model_name, runtime)

    def problems(split: str, limit: int | None) -> list:
        return stage_problems(args.run, split, task=args.task, split_seed=args.split_seed, limit=limit)

    train, val = problems("train", args.train_limit), problems("validation", args.val_limit)
    settings = settings_from_args(args, meta, options)
    record_runtime(out, model)
    print(f"LoRA: {len(train)} training problems, {len(val)} validation problems; target: {target_kind(train)}")
    result = lora_sft(model, tokenizer, train, val, settings, output_dir=out, selection_problems=selection)
    if result.selection is not None:
        from peft_cca.reports.step_choice import describe_selection

        print(describe_selection(result.selection))
    for r in result.runs:
        print(f"lr {r.lr:g}: base {r.base_score:.3f}, best {r.best_score:.3f} at step {r.best_step}")
    print(f"best: lr {result.best.lr:g}, step {result.best.best_step}; micro-batch {result.best.micro_batch}")
    print(f"adapter: {result.adapter_dir}")
    return 0
