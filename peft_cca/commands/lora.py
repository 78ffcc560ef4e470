"""``peft-cca lora``: the LoRA SFT baseline on the same training problems, best validation step kept."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "the LoRA SFT baseline on the same training problems"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.defaults import DEFAULT_LORA_LRS, LoraSettings
    from peft_cca.runtime import add_runtime_arguments

    defaults = LoraSettings()
    parser.add_argument("--run", required=True, type=Path, help="stage 1 run folder (meta.json)")
    parser.add_argument("--model", help="model name or path (default: the one in meta.json)")
    parser.add_argument("--task", help="task spec (default: the one in meta.json)")
    parser.add_argument("--split-seed", type=int, default=0, help="split seed with --task")
    parser.add_argument("--lr", type=float, nargs="+", default=list(DEFAULT_LORA_LRS), help="learning rate(s)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--effective-batch", type=int, default=defaults.effective_batch)
    parser.add_argument("--batch-size", type=int, default=defaults.per_device_batch, help="per device micro-batch")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every, help="validation every N steps")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="cap the steps (> 0)")
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--alpha", type=int, default=defaults.alpha)
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--train-limit", type=int, help="use at most this many training problems")
    parser.add_argument("--val-limit", type=int, help="use at most this many validation problems")
    parser.add_argument("--prompt-style", help="prompt style (default: the one in meta.json, else auto)")
    parser.add_argument(
        "--max-new-tokens", type=int, help="generation budget (default: 1500 for GSM-Symbolic tasks, else 256)"
    )
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/lora)")
    parser.add_argument("--seed", type=int, default=0)
    add_runtime_arguments(parser, training=True)


def run(args: argparse.Namespace) -> int:
    from peft_cca.defaults import LoraSettings
    from peft_cca.evaluate import stage_problems
    from peft_cca.lora_baseline import lora_sft
    from peft_cca.models import load_model
    from peft_cca.runtime import record_runtime, runtime_from_args
    from peft_cca.tasks.protocol import setting

    meta = json.loads((args.run / "meta.json").read_text())
    model, tokenizer = load_model(args.model or meta["model"], runtime_from_args(args, training=True))

    def problems(split: str, limit: int | None) -> list:
        return stage_problems(args.run, split, task=args.task, split_seed=args.split_seed, limit=limit)

    train, val = problems("train", args.train_limit), problems("validation", args.val_limit)
    settings = LoraSettings(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        epochs=args.epochs,
        effective_batch=args.effective_batch,
        per_device_batch=args.batch_size,
        eval_every=args.eval_every,
        max_steps=args.max_steps,
    )
    record_runtime(args.out or args.run / "lora", model)
    print(f"LoRA: {len(train)} training problems, {len(val)} validation problems")
    result = lora_sft(
        model,
        tokenizer,
        train,
        val,
        lrs=args.lr,
        settings=settings,
        prompt_style=args.prompt_style or meta.get("prompt_style", "auto"),
        max_new_tokens=setting(args.max_new_tokens, args.task or meta.get("task"), "eval_max_new_tokens"),
        eval_batch_size=args.eval_batch_size,
        output_dir=args.out or args.run / "lora",
        seed=args.seed,
    )
    for r in result.runs:
        print(f"lr {r.lr:g}: base {r.base_score:.3f}, best {r.best_score:.3f} at step {r.best_step}")
    print(f"best: lr {result.best.lr:g}, step {result.best.best_step}; adapter: {result.adapter_dir}")
    return 0
