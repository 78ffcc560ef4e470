"""Stage 1 end to end: greedy traces, counterfactual samples, pivots, the Error-Localization dataset."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from peft_cca.generation import TokenCounter
from peft_cca.localize.dataset import DatasetWriter, _read_jsonl
from peft_cca.localize.pivots import Pivot, branching_pivot_fast, branching_pivot_naive, prefix_pivot
from peft_cca.localize.profile import pivot_profile
from peft_cca.localize.traces import DecodeSettings, Trace, counterfactual, greedy_traces
from peft_cca.runtime import placement
from peft_cca.tasks import DEFAULT_TASK
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, build_prompt, encode_prompt, resolve_prompt_style, stop_strings
from peft_cca.tasks.splits import DEFAULT_ACCURACY_THRESHOLD, assign_splits, groups_below

logger = logging.getLogger(__name__)
GREEDY = "greedy.jsonl"


@dataclass
class LocalizeConfig:
    """Everything that determines the dataset; written to meta.json."""

    task: str = DEFAULT_TASK
    method: str = "branching"  # "prefix" or "branching"
    branching: str = "fast"  # "fast" or "naive" (same pivots)
    prompt_style: str = DEFAULT_PROMPT_STYLE
    max_new_tokens: int = 96
    n_samples: int = 10
    seed: int = 0
    batch_size: int = 8
    branch_batch: int = 4
    splits: tuple[str, ...] = ("train",)
    max_group_accuracy: float = DEFAULT_ACCURACY_THRESHOLD
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def tokenizer_info(tokenizer) -> dict[str, Any]:
    return {"name": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer)}


def find_pivot(
    model,
    tokenizer,
    problem: Problem,
    prompt: list[int],
    greedy: Trace,
    sample: Trace,
    config: LocalizeConfig,
    settings: DecodeSettings,
    counter: TokenCounter,
) -> Pivot | None:
    """The pivot of one (greedy, counterfactual) pair with the configured method."""
    if config.method == "prefix":
        return prefix_pivot(prompt, greedy, sample)
    if config.branching == "naive":
        return branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, settings, counter)
    return branching_pivot_fast(
        model, tokenizer, problem, prompt, greedy, sample, settings, counter, branch_batch=config.branch_batch
    )


def make_record(tokenizer, problem: Problem, split: str, method: str, pivot: Pivot) -> dict[str, Any]:
    """One Error-Localization record (schema in DESIGN.md)."""
    return {
        "problem_id": problem.id,
        "group_id": problem.group_id,
        "split": split,
        "method": method,
        "prefix_text": tokenizer.decode(list(pivot.prefix_ids), skip_special_tokens=False),
        "prefix_ids": list(pivot.prefix_ids),
        "desired_token_id": pivot.desired_token_id,
        "desired_token": tokenizer.decode([pivot.desired_token_id]),
        "undesired_token_id": pivot.undesired_token_id,
        "undesired_token": tokenizer.decode([pivot.undesired_token_id]),
        "correct_trace": pivot.correct_trace,
        "question": problem.question,
        "gold_answer": problem.answer,
    }


def _greedy_phase(
    model, tokenizer, problems: Sequence[Problem], prompts: Sequence[list[int]], settings: DecodeSettings, out_dir: Path
) -> dict[str, dict[str, Any]]:
    """Greedy traces of all problems, in fixed chunks so a resumed run batches (and pads) them identically."""
    path = out_dir / GREEDY
    rows = {row["problem_id"]: row for row in _read_jsonl(path)}
    chunks = range(0, len(problems), settings.batch_size)
    with tqdm(total=len(problems), desc="greedy traces", unit="problem") as bar, path.open("a") as handle:
        for begin in chunks:
            chunk = problems[begin : begin + settings.batch_size]
            bar.update(sum(p.id in rows for p in chunk))
            if all(p.id in rows for p in chunk):
                continue
            chunk_prompts = prompts[begin : begin + settings.batch_size]
            traces = greedy_traces(model, tokenizer, chunk, chunk_prompts, settings)
            for problem, prompt, trace in zip(chunk, chunk_prompts, traces, strict=True):
                if problem.id in rows:
                    continue
                row = {
                    "problem_id": problem.id,
                    "group_id": problem.group_id,
                    "correct": trace.correct,
                    "token_ids": list(trace.token_ids),
                    "text": trace.text,
                    "tokens": len(prompt) + len(trace.token_ids),
                }
                handle.write(json.dumps(row) + "\n")
                rows[problem.id] = row
                bar.update(1)
            handle.flush()
    return rows


def group_accuracy(problems: Sequence[Problem], greedy: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for problem in problems:
        counts[problem.group_id][0] += 1
        counts[problem.group_id][1] += int(greedy[problem.id]["correct"])
    return {g: {"n": n, "correct": c, "accuracy": c / n} for g, (n, c) in sorted(counts.items())}


def localize(
    model, tokenizer, problems: Sequence[Problem], config: LocalizeConfig, out_dir: str | Path, model_name: str = ""
) -> dict[str, Any]:
    """Build (or resume) the Error-Localization dataset of ``problems`` in ``out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = list(problems)[: config.limit] if config.limit is not None else list(problems)
    style = resolve_prompt_style(tokenizer, config.prompt_style)
    settings = DecodeSettings(config.max_new_tokens, stop_strings(style), config.batch_size)
    prompts = [encode_prompt(tokenizer, build_prompt(tokenizer, p, style)) for p in problems]
    split_of = assign_splits(problems, seed=config.seed)

    greedy = _greedy_phase(model, tokenizer, problems, prompts, settings, out_dir)
    accuracy = group_accuracy(problems, greedy)
    kept = groups_below({g: v["accuracy"] for g, v in accuracy.items()}, config.max_group_accuracy)
    meta = {
        "model": model_name,
        "tokenizer": tokenizer_info(tokenizer),
        "task": config.task,
        "seed": config.seed,
        "split_seed": config.seed,
        "prompt_style": style,  # resolved, so later stages rebuild exactly these prompts
        "groups": sorted(kept),
        "config": asdict(config),
        "runtime": placement(model),  # device, dtype, attention kernel the traces were decoded with
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))

    writer = DatasetWriter(out_dir)
    todo = [
        (p, q) for p, q in zip(problems, prompts, strict=True) if p.group_id in kept and split_of[p.id] in config.splits
    ]
    with tqdm(total=len(todo), desc=f"pivots ({config.method})", unit="problem") as bar:
        for problem, prompt in todo:
            if writer.done(problem.id):
                bar.update(1)
                continue
            row = greedy[problem.id]
            trace = Trace(tuple(row["token_ids"]), row["text"], row["correct"])
            counter = TokenCounter()
            sample = counterfactual(
                model, tokenizer, problem, prompt, trace, settings, config.n_samples, config.seed, counter
            )
            pivot = None
            if sample is not None:
                pivot = find_pivot(model, tokenizer, problem, prompt, trace, sample, config, settings, counter)
            record = (
                None if pivot is None else make_record(tokenizer, problem, split_of[problem.id], config.method, pivot)
            )
            writer.finish(
                problem.id,
                {
                    "greedy_correct": trace.correct,
                    "counterfactual": sample is not None,
                    "pivot": pivot is not None,
                    "position": None if pivot is None else pivot.position,
                    "tokens": counter.by_kind,
                },
                record,
            )
            bar.update(1)
            bar.set_postfix(tokens=counter.total)
    summary = summarize(problems, greedy, accuracy, kept, writer)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(problems, greedy, accuracy, kept, writer: DatasetWriter) -> dict[str, Any]:
    """Counts, greedy accuracy per group, counterfactuals found and tokens the model processed."""
    progress = [writer.progress[p.id] for p in problems if writer.done(p.id)]
    tokens: dict[str, int] = defaultdict(int)
    tokens["greedy"] = sum(greedy[p.id]["tokens"] for p in problems)
    for row in progress:
        for kind, n in row["tokens"].items():
            tokens[kind] += n
    records = _read_jsonl(writer.path("records.jsonl"))
    by_split: dict[str, int] = defaultdict(int)
    for record in records:
        by_split[record["split"]] += 1
    correct = sum(int(greedy[p.id]["correct"]) for p in problems)
    return {
        "problems": len(problems),
        "greedy_correct": correct,
        "greedy_accuracy": correct / len(problems) if problems else 0.0,
        "accuracy_by_group": accuracy,
        "kept_groups": sorted(kept),
        "localized_problems": len(progress),
        "counterfactuals_found": sum(r["counterfactual"] for r in progress),
        "no_counterfactual": sum(not r["counterfactual"] for r in progress),
        "pivots": sum(r["pivot"] for r in progress),
        "records": len(records),
        "records_by_split": dict(by_split),
        "tokens_processed": {**tokens, "total": sum(tokens.values())},
        "pivot_profile": pivot_profile(records, [r["position"] for r in progress if r["pivot"]]),
    }
