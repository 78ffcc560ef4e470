"""Stage 1 end to end: greedy traces, counterfactual samples, pivots, the Error-Localization dataset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from peft_cca.localize.folder import META, SUMMARY, read_raw_meta, tokenizer_fingerprint, write_meta, write_summary
from peft_cca.localize.pivots import Pivot, branching_pivot_naive, branching_pivots_fast, prefix_pivot
from peft_cca.localize.profile import pivot_profile
from peft_cca.localize.records import PROGRESS, RECORDS, DatasetWriter, _read_jsonl
from peft_cca.localize.traces import (
    TEMPERATURE_WHEN_GREEDY_RIGHT,
    TEMPERATURE_WHEN_GREEDY_WRONG,
    TOP_K,
    TOP_P,
    DecodeSettings,
    Trace,
    counterfactuals,
    greedy_traces,
)
from peft_cca.runtime.generation import TokenCounter, plan_batches, prefill_caches
from peft_cca.runtime.placement import placement, process_state
from peft_cca.runtime.runfolder import SETTINGS_FILE, atomic_write_json, atomic_write_text, check_settings
from peft_cca.tasks import DEFAULT_TASK
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import (
    DEFAULT_PROMPT_STYLE,
    PromptTemplate,
    build_prompt,
    encode_prompt,
    prompt_options,
    resolve_prompt_style,
    stop_strings,
)
from peft_cca.tasks.splits import DEFAULT_ACCURACY_THRESHOLD, assign_splits, groups_below

logger = logging.getLogger(__name__)
GREEDY = "greedy.jsonl"
# what localize writes into its folder; --overwrite removes exactly these
RUN_FILES = (GREEDY, RECORDS, PROGRESS, META, SUMMARY, SETTINGS_FILE)


@dataclass
class LocalizeConfig:
    """Everything that determines the dataset; written to meta.json."""

    task: str = DEFAULT_TASK
    method: str = "branching"  # "prefix" or "branching"
    branching: str = "fast"  # "fast" or "naive" (same pivots)
    prompt_style: str = DEFAULT_PROMPT_STYLE
    prompt_template: str | None = None  # --prompt-template as given: a format string or a file holding one
    num_fewshot: int = 0  # exemplars drawn from the training split; 0: the style's own
    fewshot_seed: int = 0
    max_new_tokens: int = 96
    n_samples: int = 10
    seed: int = 0
    batch_size: int = 8
    batch_tokens: int | None = None
    branch_batch: int = 4
    temperature_when_greedy_wrong: float = TEMPERATURE_WHEN_GREEDY_WRONG
    temperature_when_greedy_right: float = TEMPERATURE_WHEN_GREEDY_RIGHT
    top_k: int | None = TOP_K
    top_p: float = TOP_P
    splits: tuple[str, ...] = ("train",)
    max_group_accuracy: float = DEFAULT_ACCURACY_THRESHOLD
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def config_settings(config: LocalizeConfig, model_name: str, problems: Sequence[Problem]) -> dict[str, Any]:
    """What the files of a run folder depend on, but for what only the loaded model tells (see run_settings). A
    resume with anything else would mix two datasets (and, as later stages split by the recorded seed, leak
    training records into validation and test). The batch sizes are here because a resume batches (and pads) as
    the first run did: that is what keeps it byte-identical."""
    problems = list(problems)[: config.limit] if config.limit is not None else list(problems)
    problem_rows = [[p.id, p.group_id, p.question, p.answer] for p in problems]
    return {
        "model": model_name,
        "task": config.task,
        "limit": config.limit,
        "problems_sha256": hashlib.sha256(json.dumps(problem_rows, default=str).encode()).hexdigest(),
        "method": config.method,
        "seed": config.seed,
        "max_new_tokens": config.max_new_tokens,
        "n_samples": config.n_samples,
        "temperature_when_greedy_wrong": config.temperature_when_greedy_wrong,
        "temperature_when_greedy_right": config.temperature_when_greedy_right,
        "top_k": config.top_k,
        "top_p": config.top_p,
        "splits": list(config.splits),
        "max_group_accuracy": config.max_group_accuracy,
        "batch_size": config.batch_size,
        "batch_tokens": config.batch_tokens,
        "branch_batch": config.branch_batch,
        **prompt_settings(config),
    }


def prompt_settings(config: LocalizeConfig) -> dict[str, Any]:
    """The template's text and the exemplar draw, only when set: a folder made before these options existed
    (or without them) records none, and resumes as it did."""
    settings: dict[str, Any] = {}
    if config.prompt_template is not None:
        settings["prompt_template"] = PromptTemplate.from_option(config.prompt_template).text
    if config.num_fewshot:
        settings.update(num_fewshot=config.num_fewshot, fewshot_seed=config.fewshot_seed)
    return settings


def run_settings(config: LocalizeConfig, model, model_name: str, problems: Sequence[Problem], style: str) -> dict:
    """:func:`config_settings` with the base weights' dtype and the resolved prompt style."""
    return {**config_settings(config, model_name, problems), "dtype": placement(model)["dtype"], "prompt_style": style}


def prepare_folder(out_dir: Path, settings: dict[str, Any], overwrite: bool, state: PartialState) -> None:
    """Start afresh (``overwrite``: the main process removes :data:`RUN_FILES`) or check that the folder was made
    with ``settings`` and holds no damaged line. Every process checks, so all of them stop together."""
    if state.is_main_process:
        if overwrite:
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        elif (legacy := _legacy_settings(out_dir, settings)) is not None:
            atomic_write_json(out_dir / SETTINGS_FILE, dict(sorted(legacy.items())))
    state.wait_for_everyone()
    check_settings(out_dir, settings, record=state.is_main_process)
    for name in (GREEDY, RECORDS, PROGRESS):
        _read_jsonl(out_dir / name)
    state.wait_for_everyone()


def _legacy_settings(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The settings of a folder written before settings.json existed, read from its meta.json; those meta.json
    does not hold (the problems' hash) are taken as ``settings`` has them, as they cannot be checked."""
    if (out_dir / SETTINGS_FILE).exists() or not (out_dir / META).exists():
        return None
    meta = read_raw_meta(out_dir)
    config = meta.get("config") or {}
    recorded = {key: config[key] for key in settings if key in config}
    known = {"model": meta.get("model"), "prompt_style": meta.get("prompt_style")}
    known["dtype"] = (meta.get("runtime") or {}).get("dtype", settings["dtype"])
    return {**settings, **recorded, **known, "splits": list(recorded.get("splits", settings["splits"]))}


def find_pivots(
    model,
    tokenizer,
    pairs: Sequence[tuple[Problem, list[int], Trace, Trace]],
    config: LocalizeConfig,
    settings: DecodeSettings,
    counters: Sequence[TokenCounter],
    prompt_caches: Sequence | None = None,
) -> list[Pivot | None]:
    """The pivot of each (problem, prompt, greedy, counterfactual) pair with the configured method; fast
    branching starts from the prompt caches of sampling when given."""
    if config.method == "prefix":
        return [prefix_pivot(prompt, greedy, sample) for _, prompt, greedy, sample in pairs]
    if config.branching == "naive":
        return [
            branching_pivot_naive(model, tokenizer, problem, prompt, greedy, sample, settings, counter)
            for (problem, prompt, greedy, sample), counter in zip(pairs, counters, strict=True)
        ]
    return branching_pivots_fast(
        model, tokenizer, pairs, settings, counters, branch_batch=config.branch_batch, prompt_caches=prompt_caches
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


def _rounds(state: PartialState, chunks: Sequence[list[int]], compute: Callable[[list[int]], Any]):
    """Deal ``chunks`` to the processes, one each per round, and yield every (chunk, result) to every process
    in chunk order: N processes see exactly the results, in the order, that one process computes."""
    for begin in range(0, len(chunks), state.num_processes):
        dealt = chunks[begin : begin + state.num_processes]
        mine = compute(dealt[state.process_index]) if state.process_index < len(dealt) else None
        yield from zip(dealt, gather_object([mine]), strict=False)


def _greedy_phase(
    model,
    tokenizer,
    problems: Sequence[Problem],
    prompts: Sequence[list[int]],
    settings: DecodeSettings,
    out_dir: Path,
    state: PartialState,
) -> dict[str, dict[str, Any]]:
    """Greedy traces of all problems, batched by length under the token budget. The batch plan depends only
    on the prompts, and a batch with any problem left is recomputed whole, so a resumed run batches (and
    pads) every problem as an uninterrupted one does."""
    path = out_dir / GREEDY
    rows = {row["problem_id"]: row for row in _read_jsonl(path)}
    state.wait_for_everyone()  # every process has read the file before the main one rewrites it
    if state.is_main_process and path.exists():  # drop a line torn by a kill before appending
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows.values()))
    plan = plan_batches(
        [len(p) for p in prompts],
        [settings.max_new_tokens] * len(prompts),
        batch_size=settings.batch_size,
        batch_tokens=settings.batch_tokens,
    )
    todo = [chunk for chunk in plan if not all(problems[i].id in rows for i in chunk)]

    def compute(chunk: list[int]) -> list[dict[str, Any]]:
        chunk_prompts = [prompts[i] for i in chunk]
        traces = greedy_traces(model, tokenizer, [problems[i] for i in chunk], chunk_prompts, settings)
        return [
            {
                "problem_id": problems[i].id,
                "group_id": problems[i].group_id,
                "correct": trace.correct,
                "token_ids": list(trace.token_ids),
                "text": trace.text,
                "tokens": len(prompt) + len(trace.token_ids),
            }
            for i, prompt, trace in zip(chunk, chunk_prompts, traces, strict=True)
        ]

    main = state.is_main_process
    with (
        tqdm(total=len(problems), initial=len(rows), desc="greedy traces", unit="problem", disable=not main) as bar,
        path.open("a") if main else contextlib.nullcontext() as handle,
    ):
        for _, new_rows in _rounds(state, todo, compute):
            for row in new_rows:
                if row["problem_id"] in rows:
                    continue
                if main:
                    handle.write(json.dumps(row) + "\n")
                rows[row["problem_id"]] = row
                bar.update(1)
            if main:
                handle.flush()
    return rows


def group_accuracy(problems: Sequence[Problem], greedy: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for problem in problems:
        counts[problem.group_id][0] += 1
        counts[problem.group_id][1] += int(greedy[problem.id]["correct"])
    return {g: {"n": n, "correct": c, "accuracy": c / n} for g, (n, c) in sorted(counts.items())}


def localize(
    model,
    tokenizer,
    problems: Sequence[Problem],
    config: LocalizeConfig,
    out_dir: str | Path,
    model_name: str = "",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build (or resume) the Error-Localization dataset of ``problems`` in ``out_dir``; returns the summary. A
    folder made with other settings is refused unless ``overwrite``, which starts afresh."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    problems = list(problems)[: config.limit] if config.limit is not None else list(problems)
    style = resolve_prompt_style(tokenizer, config.prompt_style)
    settings = DecodeSettings(
        max_new_tokens=config.max_new_tokens,
        stop_strings=stop_strings(style),
        batch_size=config.batch_size,
        batch_tokens=config.batch_tokens,
        temperature_when_greedy_wrong=config.temperature_when_greedy_wrong,
        temperature_when_greedy_right=config.temperature_when_greedy_right,
        top_k=config.top_k,
        top_p=config.top_p,
    )
    split_of = assign_splits(problems, seed=config.seed)
    options = prompt_options(
        problems, split_of, template=config.prompt_template, shots=config.num_fewshot, seed=config.fewshot_seed
    )
    prompts = [encode_prompt(tokenizer, build_prompt(tokenizer, p, style, options=options)) for p in problems]

    state = process_state()
    main = state.is_main_process
    prepare_folder(out_dir, run_settings(config, model, model_name, problems, style), overwrite, state)
    greedy = _greedy_phase(model, tokenizer, problems, prompts, settings, out_dir, state)
    accuracy = group_accuracy(problems, greedy)
    kept = groups_below({g: v["accuracy"] for g, v in accuracy.items()}, config.max_group_accuracy)
    meta = {
        "model": model_name,
        "tokenizer": tokenizer_fingerprint(tokenizer),  # load_records checks it
        "task": config.task,
        "seed": config.seed,
        "split_seed": config.seed,
        "prompt_style": style,  # resolved, so later stages rebuild exactly these prompts
        **options.to_dict(),  # the template's text and the drawn exemplars' ids, for the same reason
        "groups": sorted(kept),
        "sampling": {  # the authors' settings by default: T by greedy correctness, top-k 50, top-p 1.0
            "temperature_when_greedy_wrong": config.temperature_when_greedy_wrong,
            "temperature_when_greedy_right": config.temperature_when_greedy_right,
            "top_k": config.top_k,
            "top_p": config.top_p,
            "n_samples": config.n_samples,
            "seeded": "per problem (sha256 of seed and problem id), per sample",
        },
        "config": asdict(config),
        "runtime": placement(model),  # device, dtype, attention kernel the traces were decoded with
    }
    if main:
        write_meta(out_dir, meta)

    writer = DatasetWriter(out_dir) if main else None  # cleans what a kill left; only the main process writes
    state.wait_for_everyone()
    done = {row["problem_id"] for row in _read_jsonl(out_dir / PROGRESS)}
    todo = [
        (p, q) for p, q in zip(problems, prompts, strict=True) if p.group_id in kept and split_of[p.id] in config.splits
    ]
    # Fixed chunks of the todo list, recomputed whole when any problem is left: same batches on resume.
    chunks = [list(range(b, min(b + config.batch_size, len(todo)))) for b in range(0, len(todo), config.batch_size)]
    pending = [chunk for chunk in chunks if not all(todo[k][0].id in done for k in chunk)]
    # a chunk of problems is one batch of work that can take minutes: the bar also counts the tokens processed so far
    # (this process's), so it moves while a chunk runs, not only when one ends
    bars: list = []
    processed = [0, 0.0]  # tokens so far, when the bar last redrew

    def note(tokens: int) -> None:
        processed[0] += tokens
        if bars and time.monotonic() - processed[1] >= 2.0:  # at most every 2 s: a log file gets no flood
            processed[1] = time.monotonic()
            bars[0].set_postfix_str(f"{processed[0]:,} tokens", refresh=True)

    def compute(chunk: list[int]) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        problems_, prompts_ = [todo[k][0] for k in chunk], [todo[k][1] for k in chunk]
        traces = [
            Trace(tuple(greedy[p.id]["token_ids"]), greedy[p.id]["text"], greedy[p.id]["correct"]) for p in problems_
        ]
        counters = [TokenCounter(listener=note) for _ in chunk]
        # each prompt is prefilled once, for its samples and its fast branching alike
        caches = prefill_caches(
            model,
            prompts_,
            batch_size=config.batch_size,
            batch_tokens=config.batch_tokens,
            counters=counters,
            counter_kind="sample",
        )
        samples = counterfactuals(
            model, tokenizer, problems_, prompts_, traces, settings, config.n_samples, config.seed, counters, caches
        )
        found = [k for k, sample in enumerate(samples) if sample is not None]
        pairs = [(problems_[k], prompts_[k], traces[k], samples[k]) for k in found]
        pivots = dict(
            zip(
                found,
                find_pivots(
                    model,
                    tokenizer,
                    pairs,
                    config,
                    settings,
                    [counters[k] for k in found],
                    [caches[k] for k in found],
                ),
                strict=True,
            )
        )
        results = []
        for k, problem in enumerate(problems_):
            pivot = pivots.get(k)
            record = (
                None if pivot is None else make_record(tokenizer, problem, split_of[problem.id], config.method, pivot)
            )
            status = {
                "greedy_correct": traces[k].correct,
                "counterfactual": samples[k] is not None,
                "pivot": pivot is not None,
                "position": None if pivot is None else pivot.position,
                "tokens": counters[k].by_kind,
            }
            results.append((problem.id, status, record))
        return results

    with tqdm(
        total=len(todo),
        initial=len(done & {p.id for p, _ in todo}),
        desc=f"pivots ({config.method})",
        unit="problem",
        disable=not main,
    ) as bar:
        bars.append(bar)
        for _, results in _rounds(state, pending, compute):
            for problem_id, status, record in results:
                if problem_id in done:
                    continue
                if writer is not None:
                    writer.finish(problem_id, status, record)
                done.add(problem_id)
                bar.update(1)
    summary = None
    if writer is not None:
        summary = summarize(problems, greedy, accuracy, kept, writer)
        summary["max_group_accuracy"] = config.max_group_accuracy  # why_no_records names the cap
        write_summary(out_dir, summary)
    return broadcast_object_list([summary])[0]


def localize_errors(
    model,
    tokenizer,
    problems: Sequence[Problem] | str,
    out_dir: str | Path,
    config: LocalizeConfig | None = None,
    *,
    model_name: str | None = None,
    overwrite: bool = False,
):
    """Stage 1 as one call: the Error-Localization dataset of ``problems`` (a task spec such as
    ``"rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"``, or ``Problem`` objects), built (or resumed)
    in ``out_dir`` and returned as :func:`~peft_cca.localize.dataset.load_error_localization` gives it.

    ``model_name`` is what the run folder records for later stages; by default the name ``peft_cca.load_model`` was
    given, else the model's ``name_or_path``.
    """
    from dataclasses import replace

    from peft_cca.localize.dataset import load_error_localization

    config = config or LocalizeConfig()
    if isinstance(problems, str):
        from peft_cca.tasks import load_problems

        config = replace(config, task=problems)
        problems = load_problems(problems, limit=config.limit)
    if model_name is None:
        model_name = getattr(model, "peft_cca_name", None) or getattr(model, "name_or_path", "")
    localize(model, tokenizer, problems, config, out_dir, model_name=model_name, overwrite=overwrite)
    return load_error_localization(out_dir)


def summarize(problems, greedy, accuracy, kept, writer: DatasetWriter) -> dict[str, Any]:
    """Counts, greedy accuracy per group, counterfactuals found and tokens the model processed."""
    progress = [writer.progress[p.id] for p in problems if writer.done(p.id)]
    tokens: dict[str, int] = defaultdict(int)
    tokens["greedy"] = sum(greedy[p.id]["tokens"] for p in problems)
    for row in progress:
        for kind, n in row["tokens"].items():
            tokens[kind] += n
    records = _read_jsonl(writer.path(RECORDS))
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
