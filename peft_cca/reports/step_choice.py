"""What each step-choice rule keeps: the paper's (best validation) against ``--max-forgetting`` bounds.

A training curve that records forgetting at each validation step (``--forgetting-tokens``) holds everything a
bounded rule needs, so :func:`replay` re-applies any bound to a finished sweep exactly as
:class:`~peft_cca.amplify.trainer.BestStepCallback` applies it live (a test pins the two together), and
:func:`step_choice_table` shows, per run and bound, the step kept, its validation score, its forgetting and what
the bound cost on validation against the paper's pick. Validation scores are what the rule sees; the target gain
on the test split needs each kept adapter evaluated (``peft-cca evaluate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from peft_cca.defaults import FORGETTING_BOUNDS

Curve = Mapping[str, Any]  # {"lr", "history": [{"step", "score", "forgetting"?, "forgetting_stderr"?}]}


def has_forgetting(curves: Sequence[Curve]) -> bool:
    """Whether a sweep's curves measured forgetting at their steps."""
    return any("forgetting" in entry for curve in curves for entry in curve["history"])


def replay(curves: Sequence[Curve], bound: float | None) -> dict[str, Any]:
    """The lr and step ``bound`` (None: the paper's rule) keeps over a sweep, as the live callback keeps it.

    Per lr: the best-scoring trained step within the bound, the earlier of equals; when none is within it, the
    trained step that forgot least (``bound_met`` False). Over the sweep: runs that met the bound first, then
    the best score, the earlier-listed lr of equals.
    """
    best: tuple[tuple[bool, float], dict[str, Any]] | None = None
    for curve in curves:
        trained = [e for e in curve["history"] if e["step"] > 0]
        if not trained:
            continue
        within = [e for e in trained if bound is None or e["forgetting"] <= bound]
        # max and min keep the first (earliest) of equals, as the callback's strict comparisons do
        entry = max(within, key=lambda e: e["score"]) if within else min(trained, key=lambda e: e["forgetting"])
        pick = {
            "lr": curve["lr"],
            "step": entry["step"],
            "score": entry["score"],
            "forgetting": entry.get("forgetting"),
            "forgetting_stderr": entry.get("forgetting_stderr"),
            "bound_met": bool(within) if bound is not None else None,
        }
        key = (bool(within), entry["score"])
        if best is None or key > best[0]:
            best = (key, pick)
    if best is None:
        raise ValueError("replay: the sweep has no trained step in its curves")
    return best[1]


def step_choice_rows(
    runs: Sequence[Mapping[str, Any]], bounds: Sequence[float] = FORGETTING_BOUNDS
) -> list[dict[str, Any]]:
    """Per run whose curves measured forgetting: the paper's pick and each bound's, with the validation cost."""
    rows = []
    for run in runs:
        curves = run.get("curves") or []
        if not has_forgetting(curves):
            continue
        paper = replay(curves, None)
        for bound in (None, *bounds):
            pick = paper if bound is None else replay(curves, bound)
            rows.append(
                {
                    "config": run.get("label") or run.get("config", "?"),
                    "seed": run.get("seed"),
                    "rule": "paper" if bound is None else f"<= {bound:g}",
                    **pick,
                    "cost": paper["score"] - pick["score"],
                }
            )
    return rows


def _nats(value: float | None, stderr: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.4f}" + (f" ± {stderr:.4f}" if stderr is not None and math.isfinite(stderr) else "")


def step_choice_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as Markdown; a bound no trained step met is marked (its least-forgetting step is kept)."""
    if not rows:
        return ""
    lines = [
        "| Configuration | Seed | Rule (nats/token) | lr, step | Validation | Forgetting (nats/token) | Cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rule = row["rule"] + (" (not met)" if row["bound_met"] is False else "")
        lines.append(
            f"| {row['config']} | {row['seed'] if row['seed'] is not None else '-'} | {rule} | "
            f"{row['lr']:g}, {row['step']} | {row['score']:.3f} | "
            f"{_nats(row['forgetting'], row['forgetting_stderr'])} | {row['cost']:+.3f} |"
        )
    return "\n".join(lines) + "\n"


def describe_selection(selection: Mapping[str, Any]) -> str:
    """One paragraph for ``amplify``/``lora``: the step kept, the paper's pick, and what the bound cost."""
    chosen, paper = selection["chosen"], selection["paper"]

    def pick(p: Mapping[str, Any]) -> str:
        return f"lr {p['lr']:g} step {p['step']} (validation {p['score']:.3f}, forgetting {_nats(p['forgetting'])})"

    if selection["max_forgetting"] is None:
        return f"forgetting measured at every validation step; kept (the paper's rule): {pick(paper)}"
    met = "" if selection["bound_met"] is not False else " (no step stayed within it: the one that forgot least)"
    return (
        f"--max-forgetting {selection['max_forgetting']:g}: kept {pick(chosen)}{met}; the paper's rule would keep "
        f"{pick(paper)}; cost {selection['cost']:+.3f} validation for {_nats(selection['saved'])} nats/token less "
        "forgetting"
    )
