"""Which problems a stage 1 run folder holds per split, re-drawn from the task spec and split seed it recorded."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.runtime.runfolder import read_json_object
from peft_cca.tasks.problem import Problem


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
