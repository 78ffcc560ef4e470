"""``peft-cca amplify``: stage 3, train only the circuit and save the best step as an adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "stage 3: train only the circuit (CCATrainer) and save the adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.amplify.settings import AmplifySettings
    from peft_cca.cli.commands.options import (
        add_training_run_arguments,
        non_negative_int,
        objective_spec,
        positive_float,
        positive_int,
        positive_int_or_auto,
    )
    from peft_cca.defaults import NO_MASK_LABELS, OPTIMIZERS
    from peft_cca.documented import flag_options

    parser.add_argument("--run", required=True, type=Path, help="run folder of stages 1-2 (records.jsonl, meta.json)")
    parser.add_argument("--model", help="model name or path (default: the one in meta.json)")
    parser.add_argument("--circuit", type=Path, help="circuit JSON (default: <run>/circuit.json)")
    parser.add_argument(
        "--no-mask",
        nargs="?",
        const="sites",
        choices=sorted(NO_MASK_LABELS),
        **flag_options(AmplifySettings, "no_mask"),
    )
    parser.add_argument("--lr", type=positive_float, nargs="+", **flag_options(AmplifySettings, "lrs"))
    parser.add_argument("--steps", type=positive_int, **flag_options(AmplifySettings, "steps"))
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), **flag_options(AmplifySettings, "optimizer"))
    parser.add_argument(
        "--micro-batch",
        "--batch-size",
        dest="micro_batch",
        type=positive_int_or_auto,
        **flag_options(AmplifySettings, "micro_batch"),
    )
    parser.add_argument("--objective", type=objective_spec, **flag_options(AmplifySettings, "objective"))
    parser.add_argument(
        "--mlp-targets", nargs="+", choices=["up", "gate", "down"], **flag_options(AmplifySettings, "mlp_targets")
    )
    parser.add_argument("--task", help="task spec for validation problems (default: the one in meta.json)")
    parser.add_argument("--split-seed", type=non_negative_int, help="split seed (default: the one in meta.json)")
    add_training_run_arguments(parser, "output folder (default: <run>/amplify, <run>/amplify-nomask[-all])")


def default_out(args: argparse.Namespace) -> Path:
    """``<run>/amplify``, ``<run>/amplify-nomask`` (sites, as before) or ``<run>/amplify-nomask-all``."""
    suffix = {None: "", "sites": "-nomask", "all": "-nomask-all"}[args.no_mask]
    return args.run / f"amplify{suffix}"


def output_settings(args: argparse.Namespace, model: str, circuit: Path | None, runtime: dict) -> dict:
    """What the adapter depends on (not the micro-batch or evaluation batch: they change speed only)."""
    keys = ("no_mask", "lr", "steps", "optimizer", "mlp_targets", "task", "split_seed", "val_limit")
    keys += ("prompt_style", "prompt_template", "num_fewshot", "fewshot_seed", "max_new_tokens", "seed")
    keys += ("forgetting_tokens", "max_forgetting")
    from peft_cca.cli.commands.options import settings_set_later

    keys += settings_set_later(args)
    return {
        **{key: getattr(args, key) for key in keys},
        "model": model,
        "circuit": str(circuit) if circuit else None,
        "runtime": runtime,
    }


def settings_from_args(args: argparse.Namespace, meta, options):
    """The parsed flags as :class:`~peft_cca.amplify.settings.AmplifySettings`, what :func:`amplify` takes; ``meta``
    (stage 1's record) and ``options`` (its prompt) fill what the flags leave to stage 1."""
    from peft_cca.amplify.settings import AmplifySettings
    from peft_cca.cli.commands.options import scoring_from_args, step_choice_from_args

    return AmplifySettings(
        lrs=tuple(args.lr),
        steps=args.steps,
        optimizer=args.optimizer,
        micro_batch=args.micro_batch,
        mlp_targets=tuple(args.mlp_targets),
        no_mask=args.no_mask,
        objective=args.objective,
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
    circuit_path = None if args.no_mask else (args.circuit or args.run / "circuit.json")
    if circuit_path is not None and not circuit_path.is_file():
        raise UsageError(f"circuit {circuit_path} does not exist: run stage 2 (circuit) or pass --circuit")
    runtime = runtime_from_args(args, training=True)
    out = ensure_output_dir(args.out or default_out(args))  # before the model loads: no work lost at save
    model_name = args.model or meta.model
    if model_name is None:
        raise UsageError(f"{meta.path} records no model: pass --model")
    from peft_cca.runtime.loading import resolve

    resolve(model_name)  # a mistyped --model is refused before settings.json records it and blocks the fixed rerun
    from peft_cca.cli.commands.options import prompt_options_from_args, selection_from_args

    # before settings.json records anything: a refused task spec or template must not block the fixed rerun
    options = prompt_options_from_args(args)
    selection = selection_from_args(args)  # a request it cannot meet is refused before settings.json
    check_settings(out, output_settings(args, model_name, circuit_path, runtime.record()), overwrite=args.overwrite)
    if args.overwrite:
        clear_outputs(out, ("adapter", "model", SUMMARY_FILES["cca"]))

    from peft_cca.amplify.trainer import amplify
    from peft_cca.localize.problems import stage_problems
    from peft_cca.localize.records import load_records
    from peft_cca.method.circuit import Circuit
    from peft_cca.runtime.loading import load_model
    from peft_cca.runtime.placement import record_runtime

    circuit = Circuit.load(circuit_path) if circuit_path is not None else None  # a damaged one: refused in seconds
    if circuit is not None and not len(circuit):
        raise UsageError(
            f"circuit {circuit_path} selects no component: rerun stage 2 (circuit) with a lower --lambda, more "
            "--epochs or a sweep of smaller values"
        )
    model, tokenizer = load_model(model_name, runtime)
    records = load_records(
        args.run, vocab_size=model.get_input_embeddings().num_embeddings, tokenizer=tokenizer, splits=("train",)
    )
    val = stage_problems(args.run, "validation", task=args.task, split_seed=args.split_seed, limit=args.val_limit)
    record_runtime(out, model)
    trains = {None: str(circuit), "sites": "every circuit site", "all": "every parameter"}[args.no_mask]
    print(f"amplify: {len(records)} records, {len(val)} validation problems, training {trains}")
    settings = settings_from_args(args, meta, options)
    result = amplify(model, tokenizer, records, circuit, val, settings, output_dir=out, selection_problems=selection)
    if result.selection is not None:
        from peft_cca.reports.step_choice import describe_selection

        print(describe_selection(result.selection))
    print(f"{'lr':>8}  {'base':>6}  {'best':>6}  step")
    for r in result.runs:
        print(f"{r.lr:>8.0e}  {r.base_score:>6.3f}  {r.best_score:>6.3f}  {r.best_step}")
    print(f"best: lr {result.best.lr:g}, step {result.best.best_step}, validation {result.best.best_score:.3f}")
    print(f"micro-batch: {result.best.micro_batch}; saved: {result.adapter_dir}")
    return 0
