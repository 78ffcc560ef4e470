"""``peft-cca circuit``: learn the circuit with DCM from an Error-Localization dataset."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

HELP = "stage 2: learn the circuit with Desiderata-based Component Masking (DCM)"


def _lambdas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--lambda takes a number or a comma list of numbers, not {text!r}") from err
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--lambda values must be finite numbers >= 0, not {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.cli.commands.options import (
        non_negative_float,
        non_negative_int,
        positive_float,
        positive_int,
        probability,
    )
    from peft_cca.cli.runtime_flags import add_runtime_arguments

    parser.description = (
        "Learn a mask in [0,1] per query/key/value head and MLP neuron that, applied at the pivot token, raises "
        "logit(desired) - logit(undesired); components with mask > 0.5 form the circuit. Writes circuit.json "
        "(for `peft-cca amplify` / CCAConfig), history.json, circuit.png and history.png; with several lambdas "
        "also sweep.json and one sub-folder per lambda, and circuit.json is the chosen one."
    )
    parser.add_argument("--data", required=True, help="Error-Localization dataset folder (records.jsonl, meta.json)")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="offline model name, HF id or local path (default: %(default)s)",
    )
    parser.add_argument(
        "--lambda",
        dest="lambdas",
        type=_lambdas,
        default=[1e-2],
        help="sparsity weight, or a comma list to sweep, e.g. 1e-3,1e-2,1e-1 (default: 1e-2). "
        "A sweep picks the sparsest circuit (within --max-fraction) whose gain is within 90%% of the best: "
        "the validation gain with >= 16 validation records, else the train gain",
    )
    parser.add_argument(
        "--form",
        choices=("paper", "authors"),
        default="paper",
        help="paper: h -> (1+m)h, m starts at 0; authors: h -> 2mh, m starts at 1 (0.5 = identity). "
        "Selected means m > 0.5 in both (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=positive_int, default=50, help="training epochs (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="records per step (default: %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=5e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument(
        "--decay-every",
        type=positive_int,
        default=None,
        help="multiply the lr by --decay-gamma every N epochs (default: 5 for GSM-Symbolic tasks, the authors' "
        "StepLR; else a constant lr)",
    )
    parser.add_argument(
        "--decay-gamma", type=probability, help="step decay factor (default: 0.9 for GSM-Symbolic tasks, else 0.5)"
    )
    parser.add_argument(
        "--lr-schedule",
        choices=("auto", "constant", "authors"),
        default="auto",
        help="authors: their StepLR(step_size=5 epochs, gamma=0.9); constant: no decay; auto: --decay-every/"
        "--decay-gamma, else the task's protocol. Recorded in history.json (default: %(default)s)",
    )
    parser.add_argument(
        "--early-stop-rule",
        choices=("auto", "selection", "authors"),
        default="auto",
        help="selection: the selected set unchanged for the patience; authors: the number selected unchanged "
        "within one epoch (reset every epoch), as in their code; both ignore steps at the initial selection. "
        "auto: authors for --form authors, else selection (default: %(default)s)",
    )
    parser.add_argument(
        "--early-stop",
        type=non_negative_float,
        default=0.2,
        help="stop when the selected set is unchanged for this fraction of an epoch's batches; "
        "0 disables (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the batch order (default: %(default)s)"
    )
    parser.add_argument(
        "--path",
        choices=("fast", "full"),
        default="fast",
        help="fast: cache the prefix keys/values once and run the last token only (exact); "
        "full: run whole prefixes every step (the slow reference) (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-budget-mb",
        type=positive_float,
        default=None,
        help="device memory for the prefix cache of the fast path (shared prefixes stored once; each layer on "
        "its own device) (default: half the device's free memory)",
    )
    parser.add_argument(
        "--host-budget-mb",
        type=positive_float,
        default=None,
        help="host memory for the prefix cache past the device budget, on GPU models (default: half the RAM)",
    )
    parser.add_argument(
        "--overflow",
        choices=("recompute", "spill"),
        default="recompute",
        help="records past both budgets: recompute their prefix when a batch needs them, or spill them to a "
        "temporary folder on disk (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=5,
        help="save the mask and optimizer every N epochs (default: %(default)s)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument(
        "--max-fraction",
        type=probability,
        help="component budget of a lambda sweep, e.g. 0.02: only circuits with at most this fraction of the "
        "components compete (the paper's circuits are under 2%%)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli.runtime_flags import runtime_from_args
    from peft_cca.dcm.find import empty_circuit_advice, search_circuits
    from peft_cca.dcm.train import AUTHORS_STEP_LR, DCMConfig
    from peft_cca.errors import UsageError
    from peft_cca.localize.folder import has_meta, read_meta
    from peft_cca.localize.records import load_records
    from peft_cca.runtime.loading import load_model
    from peft_cca.runtime.placement import record_runtime
    from peft_cca.runtime.runfolder import ensure_output_dir
    from peft_cca.tasks.protocol import setting

    out = ensure_output_dir(Path(args.out))
    if args.lr_schedule != "auto" and (args.decay_every is not None or args.decay_gamma is not None):
        raise UsageError(f"--lr-schedule {args.lr_schedule} sets the decay: drop --decay-every/--decay-gamma")
    model, tokenizer = load_model(args.model, runtime_from_args(args, training=True))
    vocab = model.get_input_embeddings().num_embeddings
    records = load_records(args.data, vocab_size=vocab, tokenizer=tokenizer)
    # the DCM schedule follows the protocol of the task stage 1 localized (tasks/protocol.py)
    task = read_meta(args.data).task if has_meta(args.data) else None
    config = DCMConfig(
        form=args.form,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        decay_every=setting(args.decay_every, task, "dcm_decay_every"),
        decay_gamma=setting(args.decay_gamma, task, "dcm_decay_gamma"),
        early_stop_fraction=args.early_stop or None,
        early_stop_rule=args.early_stop_rule,
        checkpoint_every=args.checkpoint_every,
        path=args.path,
        cache_budget_mb=args.cache_budget_mb,
        host_budget_mb=args.host_budget_mb,
        overflow=args.overflow,
    )
    if args.lr_schedule != "auto":
        decay_every, decay_gamma = AUTHORS_STEP_LR if args.lr_schedule == "authors" else (None, config.decay_gamma)
        config = replace(config, decay_every=decay_every, decay_gamma=decay_gamma)
    record_runtime(out, model)
    search = search_circuits(
        model,
        records,
        args.lambdas,
        config,
        out_dir=out,
        max_fraction=args.max_fraction,
        resume=args.resume,
        extra_settings={"model": args.model},
    )
    chosen, results = search.chosen, search.results
    print(f"{'lambda':>10} {'% mask':>8} {'q':>5} {'k':>5} {'v':>5} {'mlp':>7} {'train LD':>9} {'val LD':>9}")
    for r in results:
        row = r.row()
        c = row["counts"]
        mark = " <- chosen" if r is chosen else ""
        print(
            f"{r.lam:>10g} {100 * row['fraction']:>8.3f} {c['q']:>5} {c['k']:>5} {c['v']:>5} {c['mlp']:>7} "
            f"{row['train_logit_diff']:>9.3f} {row['validation_logit_diff']:>9.3f}{mark}"
        )
    print(f"base model: train LD {chosen.base_train_logit_diff:.3f}, val LD {chosen.base_validation_logit_diff:.3f}")
    advice = empty_circuit_advice(search)
    if advice is not None:  # the sweep's files stand (the table above is what to read), but no circuit.json
        raise UsageError(f"{advice}; the sweep is in {out / 'sweep.json'}")
    print(f"wrote {out / 'circuit.json'} ({chosen.circuit})")
    return 0
