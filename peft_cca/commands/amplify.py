"""``peft-cca amplify``: stage 3, train only the circuit and save the best step as an adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "stage 3: train only the circuit (CCATrainer) and save the adapter"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.defaults import DEFAULT_LRS, DEFAULT_STEPS, OPTIMIZERS
    from peft_cca.runtime import add_runtime_arguments

    parser.add_argument("--run", required=True, type=Path, help="run folder of stages 1-2 (records.jsonl, meta.json)")
    parser.add_argument("--model", help="model name or path (default: the one in meta.json)")
    parser.add_argument("--circuit", type=Path, help="circuit JSON (default: <run>/circuit.json)")
    parser.add_argument("--no-mask", action="store_true", help='the "CCA w/o mask" ablation: every component')
    parser.add_argument("--lr", type=float, nargs="+", default=list(DEFAULT_LRS), help="learning rate(s) to sweep")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="full-batch optimizer steps per lr")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch (steps are always full-batch)")
    parser.add_argument("--mlp-targets", nargs="+", default=["up"], choices=["up", "gate", "down"])
    parser.add_argument("--task", help="task spec for validation problems (default: the one in meta.json)")
    parser.add_argument("--split-seed", type=int, help="split seed (default: the one in meta.json)")
    parser.add_argument("--val-limit", type=int, help="use at most this many validation problems")
    parser.add_argument("--prompt-style", help="prompt style (default: the one in meta.json, else auto)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="generation budget (default: 1500 for GSM-Symbolic tasks, else 256)"
    )
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/amplify or <run>/amplify-nomask)")
    parser.add_argument("--seed", type=int, default=0)
    add_runtime_arguments(parser, training=True)


def run(args: argparse.Namespace) -> int:
    from peft_cca.circuit import Circuit
    from peft_cca.dcm.data import load_records
    from peft_cca.evaluate import stage_problems
    from peft_cca.models import load_model
    from peft_cca.runtime import record_runtime, runtime_from_args
    from peft_cca.tasks.protocol import setting
    from peft_cca.trainer import amplify

    meta = json.loads((args.run / "meta.json").read_text())
    model, tokenizer = load_model(args.model or meta["model"], runtime_from_args(args, training=True))
    circuit = Circuit.full(model) if args.no_mask else Circuit.load(args.circuit or args.run / "circuit.json")
    records = load_records(
        args.run, vocab_size=model.get_input_embeddings().num_embeddings, tokenizer=tokenizer, splits=("train",)
    )
    val = stage_problems(args.run, "validation", task=args.task, split_seed=args.split_seed, limit=args.val_limit)
    out = args.out or args.run / ("amplify-nomask" if args.no_mask else "amplify")
    record_runtime(out, model)
    print(f"amplify: {len(records)} records, {len(val)} validation problems, {circuit}")
    result = amplify(
        model,
        tokenizer,
        records,
        circuit,
        val,
        lrs=args.lr,
        steps=args.steps,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        mlp_targets=args.mlp_targets,
        prompt_style=args.prompt_style or meta.get("prompt_style", "auto"),
        max_new_tokens=setting(args.max_new_tokens, args.task or meta.get("task"), "eval_max_new_tokens"),
        eval_batch_size=args.eval_batch_size,
        output_dir=out,
        seed=args.seed,
    )
    print(f"{'lr':>8}  {'base':>6}  {'best':>6}  step")
    for r in result.runs:
        print(f"{r.lr:>8.0e}  {r.base_score:>6.3f}  {r.best_score:>6.3f}  {r.best_step}")
    print(f"best: lr {result.best.lr:g}, step {result.best.best_step}, validation {result.best.best_score:.3f}")
    print(f"adapter: {result.adapter_dir}")
    return 0
