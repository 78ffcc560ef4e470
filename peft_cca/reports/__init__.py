"""Side-by-side reports of evaluated runs: the paper's Tables 1, 2 and 7 (:mod:`~peft_cca.reports.tables`),
figures (:mod:`~peft_cca.reports.plots`) and target gain against forgetting at matched gain
(:mod:`~peft_cca.reports.frontier`), written by :func:`write_report` for ``peft-cca compare``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_cca.reports.frontier import (
    frontier_points,
    frontier_section,
    matched_gain_rows,
    matched_gain_table,
    plot_frontier,
)
from peft_cca.reports.general import letter_share_rows, render_letter_shares
from peft_cca.reports.plots import kept_step, lr_colors, plot_circuits, plot_curves, plot_general
from peft_cca.reports.step_choice import step_choice_rows, step_choice_table
from peft_cca.reports.tables import (
    BASE,
    CONFIG_ORDER,
    NOMASK_ALL,
    NOMASK_SITES,
    config_label,
    general_metrics,
    load_runs,
    paired_deltas,
    render_markdown,
    table1,
    table2,
    table7,
    template_deltas,
    trained_on,
)
from peft_cca.runtime.runfolder import atomic_write_json, atomic_write_text

__all__ = [
    "BASE",
    "CONFIG_ORDER",
    "NOMASK_ALL",
    "NOMASK_SITES",
    "config_label",
    "frontier_points",
    "general_metrics",
    "kept_step",
    "load_runs",
    "lr_colors",
    "matched_gain_rows",
    "matched_gain_table",
    "paired_deltas",
    "plot_circuits",
    "plot_curves",
    "plot_frontier",
    "plot_general",
    "render_markdown",
    "table1",
    "table2",
    "table7",
    "template_deltas",
    "trained_on",
    "write_report",
]


def write_report(runs: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.json`` and the figures (curves, circuits, general, frontier); returns tables."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "table1": table1(runs),
        "table2": table2(runs),
        "table7": table7(runs),
        "templates": template_deltas(runs),
    }
    step_rows = step_choice_rows(runs)
    markdown = render_markdown(tables)
    letters = letter_share_rows(runs)
    if letters:  # MMLU: which letters each model picked, beside its accuracy (letter bias shows here)
        tables["letter_shares"] = letters
        markdown += (
            "\n## Multiple choice: the letters picked\n\nAn accuracy close to the share of one letter among the "
            "gold answers, with that letter picked nearly always, is letter bias, not knowledge.\n\n"
            + render_letter_shares(letters)
            + "\n"
        )
    if step_rows:
        tables["step_choice"] = step_rows
        markdown += (
            "\n## Step choice: the paper's rule against forgetting bounds\n\nValidation and forgetting at the "
            "step each rule keeps (replayed from the curves); cost: validation given up against the paper's pick."
            "\n\n" + step_choice_table(step_rows)
        )
    points = frontier_points(runs)
    if points:
        matched, section = frontier_section(points)
        tables["frontier"] = {"points": points, "matched": matched}
        markdown += "\n" + section
    figures = {
        "curves": plot_curves(runs, out / "curves.png"),
        "circuits": plot_circuits(runs, out / "circuits.png"),
        "general": plot_general(tables["table2"], out / "general.png"),
        "frontier": plot_frontier(points, out / "frontier.png"),
    }
    for name, figure in figures.items():
        if figure is not None:
            markdown += f"\n![{name}]({figure.name})\n"
    atomic_write_text(out / "report.md", markdown)
    atomic_write_json(out / "report.json", tables)
    return {**tables, "markdown": markdown, "figures": {k: str(v) for k, v in figures.items() if v is not None}}
