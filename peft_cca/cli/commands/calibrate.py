"""``peft-cca calibrate``: measure the base model on candidate retention tasks and keep those it can lose."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "choose a retention suite the base model can lose: the tasks it scores 0.3 to 0.7 on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.cli.commands.options import positive_int, probability
    from peft_cca.cli.runtime_flags import add_runtime_arguments
    from peft_cca.defaults import RETENTION_CANDIDATES
    from peft_cca.runtime.loading import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help="offline name, hub id or local path")
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=list(RETENTION_CANDIDATES),
        help="reasoning-gym tasks, each with its own config if needed (e.g. 'products?max_digits=1'); "
        "default: a built-in list of small counting, ordering, spelling and arithmetic tasks",
    )
    parser.add_argument("--size", type=positive_int, default=32, help="problems per task (default 32)")
    parser.add_argument("--seed", type=int, default=1234, help="problem seed (default 1234, evaluate's)")
    parser.add_argument("--low", type=probability, default=0.3, help="lowest base accuracy kept (default 0.3)")
    parser.add_argument("--high", type=probability, default=0.7, help="highest base accuracy kept (default 0.7)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the table (a .md beside it)")
    parser.add_argument("--prompt-style", default="auto", help="prompt style, as evaluate's (default auto)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="generation budget (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    add_runtime_arguments(parser)


def resumable_rows(out: Path, measured: dict) -> dict[str, dict]:
    """Rows an earlier run with the same measuring settings wrote to ``out``, by task (a rerun resumes)."""
    from peft_cca.runtime.runfolder import read_json_object

    if not out.is_file():
        return {}
    earlier = read_json_object(out)
    if earlier.get("settings") != measured:
        from peft_cca.errors import UsageError

        raise UsageError(
            f"{out} holds a calibration with other settings ({earlier.get('settings')}): "
            "give another --out, or delete it to measure afresh"
        )
    return {row["task"]: row for row in earlier.get("rows", [])}


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli.runtime_flags import runtime_from_args
    from peft_cca.errors import UsageError
    from peft_cca.evaluation.calibration import calibrate, render_table
    from peft_cca.runtime.loading import load_model, resolve
    from peft_cca.runtime.runfolder import atomic_write_json, atomic_write_text, ensure_output_file

    if args.low > args.high:
        raise UsageError(f"--low {args.low} is above --high {args.high}")
    ensure_output_file(args.out)
    measured = {key: getattr(args, key) for key in ("model", "size", "seed", "prompt_style", "max_new_tokens")}
    done = resumable_rows(args.out, measured)
    model, tokenizer = load_model(resolve(args.model), runtime_from_args(args))
    band = (args.low, args.high)

    def write(rows: list[dict], complete: bool = False) -> None:
        chosen = [row["task"] for row in rows if row["in_band"]]
        table = {"model": args.model, "band": list(band), "settings": measured, "rows": rows, "chosen": chosen}
        atomic_write_json(args.out, {**table, "complete": complete})

    rows = calibrate(
        model,
        tokenizer,
        args.candidates,
        size=args.size,
        seed=args.seed,
        band=band,
        done=done,
        on_row=write,
        prompt_style=args.prompt_style,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    write(rows, complete=True)
    chosen = [row["task"] for row in rows if row["in_band"]]
    table = render_table(args.model, rows, band)
    atomic_write_text(args.out.with_suffix(".md"), table)
    print(table)
    print("chosen:", " ".join(chosen) or "none (widen --low/--high or add --candidates)")
    return 0
