"""Which problems a stage 1 run folder holds per split, and its prompt options, re-drawn from what it recorded
(:func:`~peft_cca.localize.folder.read_meta`).

A task spec with ``scorer=`` names code to import; a later stage imports it only when the user names the spec on
the command line (``--task``), never because a run folder's meta.json says so.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from peft_cca.errors import UsageError
from peft_cca.localize.folder import Stage1Meta, read_meta
from peft_cca.tasks.problem import Problem
from peft_cca.tasks.prompts import PromptOptions


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


def names_code(task: str) -> bool:
    """Whether any part of a task spec has ``scorer=`` (a module the checker imports)."""
    from peft_cca.tasks.sources import parse_spec

    return any("scorer" in parse_spec(part)[2] for part in task.split(";") if part.strip())


@dataclass(frozen=True)
class RunTask:
    """The problems a stage works on: the spec, split seed and ``--limit`` to load and split them with, and the
    groups kept for training (None: all); ``own`` when they are the stage 1 run's own problems."""

    spec: str
    split_seed: int
    task_limit: int | None
    groups: list[str] | None
    own: bool
    meta: Stage1Meta


def run_task(run_dir: str | Path, task: str | None = None, split_seed: int | None = None) -> RunTask:
    """What the stage 1 run in ``run_dir`` recorded, or ``task`` split with ``split_seed`` when a command names
    another spec. ``task`` equal to the recorded spec is the run's own problems (its split seed, limit and groups);
    a recorded spec with ``scorer=`` must be named so, or it is refused (its code is not imported from a file)."""
    meta = read_meta(run_dir)
    if task and task != meta.task:
        return RunTask(task, split_seed or 0, None, None, own=False, meta=meta)
    if meta.task is None:
        raise UsageError(f"{meta.path}: records no task spec; pass --task")
    if task is None and names_code(meta.task):
        raise UsageError(
            f"{meta.path}: its task spec imports code (scorer=), which is run only when named on the "
            f"command line: pass the same spec, --task '{meta.task}'"
        )
    return RunTask(meta.task, meta.split_seed, meta.task_limit, meta.groups, own=True, meta=meta)


def run_problems(
    run_dir: str | Path, split: str, *, limit: int | None = None, task: str | None = None
) -> list[Problem]:
    """``split`` problems of a stage 1 run directory, from the task spec and split seed it recorded (``task``: the
    same spec, named on the command line, which a spec with ``scorer=`` needs; see :func:`run_task`).

    Training problems are those of the groups the accuracy filter kept; validation and test cover every
    group, as in the paper, which filters only the training split: so the score also measures harm to the
    templates the base model already solves, and the best step is picked on the whole population.
    """
    found = run_task(run_dir, task)
    if not found.own:
        raise UsageError(f"{run_dir}: --task {task!r} is not the run's task {found.meta.task!r}")
    groups = found.groups if split == "train" else None
    return split_problems(
        found.spec, split, seed=found.split_seed, groups=groups, limit=limit, task_limit=found.task_limit
    )


def stage_problems(
    run_dir: str | Path, split: str, *, task: str | None = None, split_seed: int | None = None, limit: int | None = None
) -> list[Problem]:
    """``split`` problems of a stage 1 run, or of ``task`` split with ``split_seed`` when a command names another
    spec (the run's own spec keeps the run's split seed, limit and groups)."""
    found = run_task(run_dir, task, split_seed)
    if found.own:
        return run_problems(run_dir, split, limit=limit, task=task)
    return split_problems(found.spec, split, seed=found.split_seed, limit=limit)


def selection_problems(
    run_dir: str | Path, n: int, *, task: str | None = None, selection_task: str | None = None
) -> list[Problem]:
    """``n`` held-out problems for the frontier (:mod:`~peft_cca.evaluation.selection`): from ``selection_task``
    (default: the run's spec), none of them one of the problems stage 1 loaded and split, by id or question."""
    from peft_cca.evaluation.selection import held_out_problems
    from peft_cca.tasks.sources import load_problems

    found = run_task(run_dir, task)
    used = load_problems(found.spec, limit=found.task_limit)
    return held_out_problems(load_problems(selection_task or found.spec), used, n)


def stage_prompt_options(
    run_dir: str | Path,
    *,
    task: str | None = None,
    split_seed: int | None = None,
    template: str | None = None,
    shots: int | None = None,
    seed: int | None = None,
) -> PromptOptions:
    """The prompt options of a later stage: ``template``, ``shots`` and ``seed`` as its flags give them, else as
    stage 1 recorded them in meta.json; exemplars are drawn again from the full problem list that stage 1 split
    (``load_problems(task, limit=task_limit)``), so they are the ones its prompts showed. When nothing is
    overridden and the draw gives other exemplars than meta.json's, the task's data changed: refused."""
    from peft_cca.tasks.prompts import prompt_options
    from peft_cca.tasks.sources import load_problems
    from peft_cca.tasks.splits import assign_splits

    meta = read_meta(run_dir)
    # a recorded scorer= is refused here, before any model loads; a run recording no task needs one only to draw
    found = run_task(run_dir, task, split_seed) if task or meta.task else None
    template = template if template is not None else meta.prompt_template
    shots = shots if shots is not None else meta.num_fewshot
    seed = seed if seed is not None else meta.fewshot_seed
    if template is None and not shots:  # the style's own prompt: nothing to draw
        return PromptOptions()
    found = found or run_task(run_dir, task, split_seed)
    problems = load_problems(found.spec, limit=found.task_limit)
    options = prompt_options(
        problems, assign_splits(problems, seed=found.split_seed), template=template, shots=shots, seed=seed
    )
    recorded = meta.exemplar_ids
    same_draw = found.own and shots == meta.raw.get("num_fewshot") and seed == meta.raw.get("fewshot_seed")
    if same_draw and recorded is not None and recorded != options.to_dict()["exemplar_ids"]:
        raise UsageError(
            f"{meta.path}: the exemplars drawn now differ from those stage 1 drew "
            f"({', '.join(recorded[:3])}, ...): the task's data changed since; rerun stage 1 (localize)"
        )
    return options
