"""Evaluation: exact match on the target task, and what an update may have cost elsewhere.

- :func:`evaluate_exact_match`: per group and macro (the authors select and report the macro average over
  templates), with stage 1's prompts, batched greedy generation and scorers, so "right" means the same here
  as when the errors were localized.
- :func:`retention`: the same exact match on reasoning-gym tasks that are not the target skill (offline).
- :func:`kl_drift`: mean KL(base || updated) of next-token distributions over neutral text (offline).
- :func:`lm_eval_bridge`: lm-eval's own harness on the model object, for MMLU STEM/Humanities, TriviaQA and
  TruthfulQA when the hub is reachable, or for any local task directory.

Under ``accelerate launch`` the generation is split across processes in fixed units of ``batch_size`` problems
and gathered, so N processes score exactly what one process scores (each unit is the same batch either way);
with a ``cache`` folder every finished unit is kept on disk, so an interrupted run, with any number of
processes, resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from peft_cca.defaults import LM_EVAL_TASKS
from peft_cca.errors import UsageError
from peft_cca.runtime.generation import generate, left_pad, pad_token_id
from peft_cca.runtime.runfolder import atomic_write_json, check_settings, read_json_object
from peft_cca.tasks import DEFAULT_RETENTION_TASKS
from peft_cca.tasks.answers import answer_is_final
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, build_prompt, encode_prompt, resolve_prompt_style, stop_strings

logger = logging.getLogger(__name__)

RETENTION_TASKS: tuple[str, ...] = DEFAULT_RETENTION_TASKS
# Plain encyclopedic sentences with no arithmetic: drift here is drift in general language modelling.
NEUTRAL_TEXTS: tuple[str, ...] = (
    "The river winds through a wide valley before it reaches the sea, and small villages line its banks.",
    "Many birds migrate south in autumn, following routes that their species have used for thousands of years.",
    "The library opens early on weekdays, and students often gather there to read and discuss their projects.",
    "A violin is a string instrument played with a bow; its body is usually made of spruce and maple.",
    "In the morning the market fills with people buying bread, fruit, cheese and fresh flowers.",
    "Volcanoes form where molten rock rises through the crust, and their eruptions can reshape the landscape.",
    "The novel follows a young sailor who leaves his home town to explore distant islands.",
    "Tea was first cultivated in East Asia and later became a popular drink across the whole world.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "The old bridge was rebuilt in stone after a flood destroyed the wooden one that stood there before.",
    "Museums preserve paintings, sculptures and tools that tell the story of how people lived long ago.",
    "Whales communicate with songs that can travel for many kilometres under the ocean surface.",
)


def _processes() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` unless launched with several accelerate processes."""
    from peft_cca.runtime.placement import process_state

    state = process_state()
    return state.process_index, state.num_processes


def on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` run by the main process only, its result (or its :class:`UsageError`) handed to every process.

    For work that must not be repeated (lm-eval) or must happen once (recording settings); the other processes
    wait instead of running into a collective the main process never reaches.
    """
    rank, world = _processes()
    outcome: tuple[bool, Any] = (True, None)
    if rank == 0:
        try:
            outcome = (True, fn())
        except UsageError as err:
            outcome = (False, str(err))
    if world > 1:
        from accelerate.utils import broadcast_object_list

        outcome = broadcast_object_list([outcome])[0]
    if not outcome[0]:
        raise UsageError(outcome[1])
    return outcome[1]


def prepare_cache(folder: Path, settings: Mapping[str, Any]) -> Path:
    """A resumable cache folder for :func:`evaluate_exact_match`, refused when it was made with other settings."""
    folder = Path(folder)
    hint = f"delete {folder} to start afresh, or choose another --out"
    on_main(lambda: check_settings(folder, settings, restart_hint=hint))
    return folder


def _generate_units(
    model: nn.Module, tokenizer, inputs: list[list[int]], unit: int, cache: Path | None, **generate_kwargs: Any
) -> list[str]:
    """Completions of ``inputs``, unit by unit (``unit`` inputs each), units shared out over the processes.

    A unit is generated as one batch whichever process takes it, so the texts do not depend on the process count.
    """
    # units of similar lengths pad least: inputs are sorted longest first (then by position) before cutting
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i]), i))
    units = [(begin, [inputs[i] for i in order[begin : begin + unit]]) for begin in range(0, len(inputs), unit)]
    done: dict[int, list[str]] = {}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for index in range(len(units)):
            path = cache / f"unit-{index:05d}.json"
            if path.exists():
                done[index] = json.loads(path.read_text())
    rank, world = _processes()
    if world > 1:  # every process has listed the cached units before any process writes a new one
        from peft_cca.runtime.placement import process_state

        process_state().wait_for_everyone()
    mine = [index for index in range(len(units)) if index not in done][rank::world]
    for index in mine:
        outputs = generate(model, tokenizer, units[index][1], batch_size=unit, **generate_kwargs)
        done[index] = [generation.text for (generation,) in outputs]
        if cache is not None:
            atomic_write_json(cache / f"unit-{index:05d}.json", done[index])
    if world > 1:
        from accelerate.utils import gather_object

        done.update(gather_object([(index, done[index]) for index in mine]))
    texts = [text for index in range(len(units)) for text in done[index]]
    return [texts[position] for position in sorted(range(len(order)), key=order.__getitem__)]


@torch.no_grad()
def evaluate_exact_match(
    model: nn.Module,
    tokenizer,
    problems: Sequence[Problem],
    *,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    return_completions: bool = False,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Greedy exact match: ``{"macro", "micro", "n", "groups": {group: {"accuracy", "n"}}}``.

    Generation stops once the answer sentence is closed (the extracted answer can no longer change), so the
    score equals that of the full completion at a fraction of the tokens. Every process of a multi-process
    launch must call it (the work is split and gathered); ``cache`` (see :func:`prepare_cache`) keeps each
    finished batch for a resume.
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    prompt_style = resolve_prompt_style(tokenizer, prompt_style)
    inputs = [encode_prompt(tokenizer, build_prompt(tokenizer, p, prompt_style)) for p in problems]
    was_training = model.training
    model.eval()
    texts = _generate_units(
        model,
        tokenizer,
        inputs,
        batch_size,
        cache,
        max_new_tokens=max_new_tokens,
        stop_strings=stop_strings(prompt_style),
        stop_when=answer_is_final,
    )
    model.train(was_training)
    correct: dict[str, list[bool]] = defaultdict(list)
    completions = []
    for problem, text in zip(problems, texts, strict=True):
        ok = problem.score(text)
        correct[problem.group_id].append(ok)
        completions.append({"id": problem.id, "group_id": problem.group_id, "completion": text, "correct": ok})
    groups = {g: {"accuracy": sum(v) / len(v), "n": len(v)} for g, v in sorted(correct.items())}
    result: dict[str, Any] = {
        "macro": sum(g["accuracy"] for g in groups.values()) / len(groups),
        "micro": sum(sum(v) for v in correct.values()) / len(problems),
        "n": len(problems),
        "groups": groups,
    }
    if return_completions:
        result["completions"] = completions
    return result


def validation_scorer(
    tokenizer,
    problems: Sequence[Problem],
    *,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    what: str = "training",
):
    """``model -> macro exact match on problems``: how CCA and LoRA pick their best step (as the authors do)."""
    if not problems:
        raise ValueError(f"{what} needs validation problems (or an evaluate_fn) to pick the best step")

    def score(model: nn.Module) -> float:
        return evaluate_exact_match(
            model, tokenizer, problems, prompt_style=prompt_style, batch_size=batch_size, max_new_tokens=max_new_tokens
        )["macro"]

    return score


def retention_problems(tasks: Sequence[str] = RETENTION_TASKS, size: int = 50, seed: int = 1234) -> list[Problem]:
    """``size`` reasoning-gym problems per non-target task (each task is one group)."""
    from peft_cca.tasks.sources import load_problems

    return [p for task in tasks for p in load_problems(f"rg:{task}?size={size}&seed={seed}")]


def retention(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] = RETENTION_TASKS,
    *,
    size: int = 50,
    seed: int = 1234,
    problems: Sequence[Problem] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Exact match per non-target task (``groups``) and their macro average; kwargs go to exact match."""
    problems = retention_problems(tasks, size, seed) if problems is None else problems
    return evaluate_exact_match(model, tokenizer, problems, **kwargs)


@torch.no_grad()
def _next_token_logprobs(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def kl_drift(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str] = NEUTRAL_TEXTS,
    *,
    base_model: nn.Module | None = None,
    batch_size: int = 8,
) -> float:
    """Mean over all text positions of KL(base || updated) between next-token distributions.

    Without ``base_model``, ``model`` must be a PeftModel: the base is the same model with adapters
    disabled (exact for CCA and LoRA, no second copy in memory).
    """
    if base_model is None and not hasattr(model, "disable_adapter"):
        raise ValueError("kl_drift needs base_model, or a PeftModel whose adapters can be disabled")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    encoded = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    for begin in range(0, len(encoded), batch_size):
        input_ids, mask = left_pad(encoded[begin : begin + batch_size], pad_token_id(tokenizer))
        input_ids, mask = input_ids.to(device), mask.to(device)
        updated = _next_token_logprobs(model, input_ids, mask)
        if base_model is None:
            with model.disable_adapter():
                base = _next_token_logprobs(model, input_ids, mask)
        else:
            base = _next_token_logprobs(base_model, input_ids, mask)
        kl = F.kl_div(updated, base, log_target=True, reduction="none").sum(-1)  # KL(base || updated) per position
        total += float((kl * mask).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / count


def lm_eval_bridge(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] = LM_EVAL_TASKS,
    *,
    include_path: str | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, float]]:
    """lm-eval's ``simple_evaluate`` on the model object (base, PEFT or merged); ``{task: {metric: value}}``.

    ``include_path`` adds a folder of task YAMLs (local tasks need no hub access).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    output = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=0,
    )
    # lm-eval keys metrics as "<metric>,<filter>"; keep the metric name and drop the stderr entries
    return {
        task: {
            key.split(",")[0]: float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and "stderr" not in key
        }
        for task, metrics in output["results"].items()
    }


def split_problems(
    task: str,
    split: str,
    *,
    seed: int = 0,
    groups: Collection[str] | None = None,
    limit: int | None = None,
    task_limit: int | None = None,
) -> list[Problem]:
    """The problems of ``split`` for a task spec, split exactly as stage 1 splits them (seeded, per group).

    ``task_limit`` must be the ``--limit`` stage 1 used: splits are drawn per group from the problems loaded,
    so a different count would move problems between splits and leak training problems into the test.
    """
    from peft_cca.tasks.sources import load_problems
    from peft_cca.tasks.splits import assign_splits

    problems = load_problems(task, limit=task_limit)
    assignment = assign_splits(problems, seed=seed)
    chosen = [p for p in problems if assignment[p.id] == split and (groups is None or p.group_id in groups)]
    return chosen[:limit] if limit is not None else chosen


def _first(data: Mapping[str, Any], *keys: str) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


def run_problems(run_dir: str | Path, split: str, *, limit: int | None = None) -> list[Problem]:
    """``split`` problems of a stage 1 run directory, from the task spec and split seed it recorded.

    Reads ``meta.json`` (``task``/``task_spec``, ``split_seed``/``seed``). Training problems are those of the groups
    the accuracy filter kept (``groups`` in ``meta.json`` or ``summary.json``); validation and test cover every
    group, as in the paper, which filters only the training split: so the score also measures harm to the
    templates the base model already solves, and the best step is picked on the whole population.
    """
    run_dir = Path(run_dir)
    meta = read_json_object(run_dir / "meta.json")
    summary_file = run_dir / "summary.json"
    summary = read_json_object(summary_file) if summary_file.exists() else {}
    task = _first(meta, "task", "task_spec")
    if task is None:
        raise UsageError(f"{run_dir / 'meta.json'}: records no task spec; pass --task")
    seed = int(_first(meta, "split_seed", "seed") or 0)
    groups = None
    if split == "train":  # an empty list of kept groups is a filter too (nothing to train on), not its absence
        groups = next((d[k] for d in (meta, summary) for k in ("groups", "kept_groups") if d.get(k) is not None), None)
        if isinstance(groups, Mapping):
            groups = list(groups)
    task_limit = (meta.get("config") or {}).get("limit")
    return split_problems(task, split, seed=seed, groups=groups, limit=limit, task_limit=task_limit)


def stage_problems(
    run_dir: str | Path, split: str, *, task: str | None = None, split_seed: int | None = None, limit: int | None = None
) -> list[Problem]:
    """``split`` problems of a stage 1 run, or of ``task`` split with ``split_seed`` when a command overrides it."""
    if task:
        return split_problems(task, split, seed=split_seed or 0, limit=limit)
    return run_problems(run_dir, split, limit=limit)


def adapter_summary(model: nn.Module) -> dict[str, Any]:
    """Which configuration a model is ("Base", "CCA w/ mask", "CCA w/o mask", "LoRA"), with its circuit's stats."""
    config = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    if config is None:
        return {"config": "Base", "mask_percent": None, "circuit_counts": None, "circuit_layers": None}
    # PeftType is a str enum: str() gives "PeftType.CCA" on Python 3.11+, its value is "CCA"
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    if peft_type != "CCA":
        return {
            "config": "LoRA" if peft_type == "LORA" else peft_type,
            "mask_percent": None,
            "circuit_counts": None,
            "circuit_layers": None,
        }
    circuit = config.get_circuit()
    layers = {
        layer: {kind: len(circuit.selected(int(layer), kind)) for kind in ("q", "k", "v", "mlp")}
        for layer in map(str, range(circuit.shape.num_layers))
    }
    return {
        "config": "CCA w/o mask" if circuit.fraction == 1.0 else "CCA w/ mask",
        "mask_percent": 100.0 * circuit.fraction,
        "circuit_counts": circuit.counts(),
        "circuit_layers": layers,
        "num_layers": circuit.shape.num_layers,
        "kind_sizes": {kind: circuit.shape.count(kind) for kind in ("q", "k", "v", "mlp")},  # per layer
    }


def evaluate_model(
    model: nn.Module,
    tokenizer,
    test_problems: Sequence[Problem],
    *,
    val_problems: Sequence[Problem] | None = None,
    retention_tasks: Sequence[str] = RETENTION_TASKS,
    retention_size: int = 50,
    kl_texts: Sequence[str] = NEUTRAL_TEXTS,
    lm_eval_tasks: Sequence[str] | None = None,
    lm_eval_limit: int | float | None = None,
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Everything Tables 1 and 2 need for one model: ``{"test", "validation", "general": {...}}`` plus its config.

    KL drift is measured against the same model with adapters disabled (0 for a bare base model); every process
    computes it (it is small, and so it is the same number in any launch); lm-eval runs on the main process.
    ``cache`` is a folder from :func:`prepare_cache` whose sub-folders keep finished batches per section.
    """
    em = {"prompt_style": prompt_style, "max_new_tokens": max_new_tokens, "batch_size": batch_size}

    def section(name: str) -> dict[str, Any]:
        return {**em, "cache": None if cache is None else Path(cache) / name}

    held_out = retention_problems(retention_tasks, retention_size) if retention_tasks else []  # a bad name fails now
    result: dict[str, Any] = {**adapter_summary(model)}
    result["test"] = evaluate_exact_match(model, tokenizer, test_problems, **section("test"))
    if val_problems:
        result["validation"] = evaluate_exact_match(model, tokenizer, val_problems, **section("validation"))
    general: dict[str, Any] = {}
    if retention_tasks:
        general["retention"] = retention(model, tokenizer, problems=held_out, **section("retention"))
    if kl_texts:
        adapted = hasattr(model, "disable_adapter")
        general["kl"] = kl_drift(model, tokenizer, kl_texts, batch_size=batch_size) if adapted else 0.0
    if lm_eval_tasks:
        general["lm_eval"] = on_main(lambda: lm_eval_bridge(model, tokenizer, lm_eval_tasks, limit=lm_eval_limit))
    result["general"] = general
    return result
