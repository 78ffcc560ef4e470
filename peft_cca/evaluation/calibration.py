"""Choosing a retention suite the base model can lose: tasks on which it scores inside a band (30-70% by default).

A retention task the base already fails (1 in 16) cannot show forgetting: every arm "keeps" it or "raises" it.
So the suite is chosen per model, by measuring the base on candidate non-target tasks and keeping those inside
the band, with each figure's n and binomial standard error. ``peft-cca calibrate`` runs it and writes the table;
``results/retention-calibration/<model>.md`` holds the committed ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from peft_cca.defaults import RETENTION_BAND as BAND
from peft_cca.defaults import RETENTION_CANDIDATES as CANDIDATES
from peft_cca.evaluation.exact_match import evaluate_exact_match
from peft_cca.evaluation.retention import retention_problems


def binomial_stderr(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on ``n`` independent problems."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n) if n else float("nan")


def calibrate(
    model: nn.Module,
    tokenizer,
    candidates: Sequence[str] = CANDIDATES,
    *,
    size: int = 32,
    seed: int = 1234,
    band: tuple[float, float] = BAND,
    done: Mapping[str, Mapping[str, Any]] | None = None,
    on_row: Callable[[list[dict[str, Any]]], None] | None = None,
    **exact_match: Any,
) -> list[dict[str, Any]]:
    """``[{"task", "n", "accuracy", "stderr", "in_band"}]`` per candidate, in the order given.

    ``done`` holds rows measured before (by task; a resumed run skips them, its band re-applied); ``on_row``
    gets the rows so far after each task, so a stopped calibration loses at most the task it was on.
    """
    rows = []
    for task in tqdm(candidates, desc="calibrate", unit="task"):
        if done and task in done:
            rows.append({**done[task], "in_band": band[0] <= done[task]["accuracy"] <= band[1]})
            continue
        problems = retention_problems([task], size, seed)
        result = evaluate_exact_match(model, tokenizer, problems, **exact_match)
        accuracy, n = result["micro"], result["n"]
        rows.append(
            {
                "task": task,
                "n": n,
                "accuracy": accuracy,
                "stderr": binomial_stderr(accuracy, n),
                "in_band": band[0] <= accuracy <= band[1],
            }
        )
        if on_row is not None:
            on_row(rows)
    return rows


def render_table(model_name: str, rows: Sequence[dict[str, Any]], band: tuple[float, float] = BAND) -> str:
    """The calibration as a Markdown table, chosen tasks in bold."""
    lines = [
        f"Base model `{model_name}`; chosen: {band[0]:.0%} <= accuracy <= {band[1]:.0%} (bold).",
        "",
        "| task | n | base accuracy (%) | stderr |",
        "|---|---|---|---|",
    ]
    for row in rows:
        task = f"**`{row['task']}`**" if row["in_band"] else f"`{row['task']}`"
        lines.append(f"| {task} | {row['n']} | {100 * row['accuracy']:.1f} | {100 * row['stderr']:.1f} |")
    return "\n".join(lines) + "\n"
