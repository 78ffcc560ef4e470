"""Target gain against forgetting: the frontier's points, arms matched at equal gain, its figure and report section,
and Table 1's noise on a single seed (a measurement's stderr, never a spread of zero)."""

from __future__ import annotations

import json
import math

import pytest

from peft_cca.reports import write_report
from peft_cca.reports.frontier import (
    arm_pairs,
    frontier_points,
    matched_gain_rows,
    matched_gain_table,
    matched_summary,
    plot_frontier,
)
from peft_cca.reports.tables import render_markdown, table1

CCA, LORA = "CCA w/ mask", "LoRA"


def entry(step, gain, se, forgetting=None, forgetting_se=None, n=48):
    """One validated step as the trainers record it once a selection split is scored."""
    made = {
        "step": step,
        "score": 0.5,
        "selection_accuracy": 0.4 + gain,
        "selection_stderr": 0.07,
        "selection_gain": gain,
        "selection_gain_stderr": se,
        "selection_n": n,
    }
    if forgetting is not None:
        made.update(forgetting=forgetting, forgetting_stderr=forgetting_se)
    return made


def sweep(config, seed, lr, *history):
    """A run with one learning rate's curve; step 0 (the base) measured alike, forgetting zero where measured."""
    start = entry(0, 0.0, 0.0, 0.0, 0.0) if "forgetting" in history[0] else entry(0, 0.0, 0.0)
    return {
        "name": f"{config}-{seed}",
        "config": config,
        "method": None,
        "seed": seed,
        "test": {"macro": 0.5},
        "general": {},
        "curves": [{"lr": lr, "history": [start, *history]}],
    }


def runs():
    """Two arms on two seeds (and a base without curves), built so that every rule of the matching decides a row."""
    return [
        {"name": "base", "config": "Base", "seed": 0, "test": {"macro": 0.4}, "general": {}},
        sweep(CCA, 0, 1e-3, entry(2, 0.10, 0.05, 0.010, 0.002), entry(4, 0.40, 0.05, 0.020, 0.002)),
        sweep(CCA, 1, 1e-3, entry(2, 0.20, 0.04, 0.004, 0.001)),
        sweep("CCA w/o mask", 0, 1e-3, entry(2, 0.30, 0.04)),  # forgetting not measured: no point
        sweep(
            LORA,
            0,
            1e-4,
            entry(2, 0.08, 0.05, 0.020, 0.004),
            entry(4, 0.12, 0.05, 0.030, 0.004),
            entry(6, 0.20, 0.05, 0.050, 0.004),
        ),
        sweep(LORA, 1, 1e-4, entry(2, 0.25, 0.06, 0.006, 0.001)),
    ]


def keyed(rows):
    return {(r["seed"], r["step"]): r for r in rows}


def test_points_are_trained_steps_with_both_a_gain_and_forgetting():
    points = frontier_points(runs())
    assert [(p["arm"], p["seed"], p["step"]) for p in points] == [
        (CCA, 0, 2),
        (CCA, 0, 4),
        (CCA, 1, 2),
        (LORA, 0, 2),
        (LORA, 0, 4),
        (LORA, 0, 6),
        (LORA, 1, 2),
    ]
    assert points[0] == {
        "arm": CCA,
        "seed": 0,
        "lr": 1e-3,
        "step": 2,
        "gain": 0.10,
        "gain_stderr": 0.05,
        "n": 48,
        "forgetting": 0.010,
        "forgetting_stderr": 0.002,
    }


def test_cca_against_lora_ties_go_to_least_forgetting_and_a_far_gain_has_no_match():
    rows = keyed(matched_gain_rows(frontier_points(runs()), CCA, LORA))
    # LoRA's 0.08 and 0.12 are equally close to 0.10 (in floats 0.12 is closer by 1e-17): the one forgetting less
    tie = rows[(0, 2)]
    assert (tie["match"], tie["other_seed"], tie["other_step"]) == ("same seed", 0, 2)
    assert tie["diff"] == pytest.approx(-0.010)
    assert tie["diff_stderr"] == pytest.approx(math.hypot(0.002, 0.004))
    assert tie["clear"] is True  # 0.010 > 2 * 0.00447
    far = rows[(0, 4)]
    assert far["match"] == "no match" and far["other_step"] is None and far["diff"] is None
    # 0.20 against LoRA seed 1's 0.25: 0.05 apart, beyond CCA's se (0.04) but within LoRA's (0.06), the larger
    larger = rows[(1, 2)]
    assert (larger["match"], larger["other_seed"], larger["other_step"]) == ("same seed", 1, 2)
    assert larger["diff"] == pytest.approx(-0.002) and larger["clear"] is False  # 1.4 se: within 2


def test_the_same_seed_is_preferred_to_an_exact_gain_on_another_seed():
    rows = keyed(matched_gain_rows(frontier_points(runs()), LORA, CCA))
    # LoRA seed 0's 0.20 equals CCA seed 1's gain exactly, but seed 0 has CCA points and none within 0.05
    assert rows[(0, 6)]["match"] == "no match"
    assert (rows[(0, 2)]["other_step"], rows[(0, 2)]["diff"], rows[(0, 2)]["clear"]) == (2, pytest.approx(0.01), True)
    assert (rows[(0, 4)]["other_step"], rows[(0, 4)]["diff"], rows[(0, 4)]["clear"]) == (2, pytest.approx(0.02), True)
    assert rows[(1, 2)]["other_seed"] == 1 and rows[(1, 2)]["clear"] is False


def test_a_seed_the_other_arm_lacks_is_matched_across_seeds():
    made = [*runs(), sweep(CCA, 2, 1e-3, entry(2, 0.21, 0.05, 0.004, 0.001))]
    (row,) = [r for r in matched_gain_rows(frontier_points(made), CCA, LORA) if r["seed"] == 2]
    # the closest LoRA gain on any seed: seed 0's 0.20 (0.01 away), not seed 1's 0.25
    assert (row["match"], row["other_seed"], row["other_step"]) == ("across seeds", 0, 6)
    assert row["diff"] == pytest.approx(-0.046) and row["clear"] is True


def test_the_matched_table_and_the_summary_say_what_the_rows_hold():
    rows = matched_gain_rows(frontier_points(runs()), CCA, LORA)
    table = matched_gain_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| CCA w/ mask: seed | lr, step | gain (points) |")
    assert "Δ forgetting (CCA w/ mask − LoRA)" in lines[0]
    assert lines[2] == (
        "| 0 | 0.001, 2 | +10.0 ± 5.0 | +0.0100 ± 0.0020 | same seed | 0 | 0.0001, 2 | +8.0 ± 5.0 | "
        "+0.0200 ± 0.0040 | -0.0100 ± 0.0045 | forgot less |"
    )
    assert lines[3] == "| 0 | 0.001, 4 | +40.0 ± 5.0 | +0.0200 ± 0.0020 | no match | - | - | - | - | - | - |"
    assert lines[4].endswith("| -0.0020 ± 0.0014 | within 2 se |")
    assert matched_summary(rows) == (
        "CCA w/ mask against LoRA at matched gain (2 of 3 points matched): CCA w/ mask forgot less in 1 by more "
        "than 2 se, more in 0, no clear difference in 1."
    )
    back = matched_summary(matched_gain_rows(frontier_points(runs()), LORA, CCA))
    assert "(3 of 4 points matched)" in back and "LoRA forgot less in 0 by more than 2 se, more in 2" in back


def test_nothing_matched_makes_no_claim():
    points = [p for p in frontier_points(runs()) if (p["arm"], p["step"]) == (CCA, 4) or p["arm"] == LORA]
    rows = matched_gain_rows(points, CCA, LORA)
    assert matched_summary(rows) == (
        "CCA w/ mask against LoRA: no match within one standard error for its 1 point; no claim."
    )


def test_pairs_are_every_arm_against_lora_both_ways_else_every_ordered_pair():
    assert arm_pairs([CCA, "CCA w/ mask, margin 2", LORA]) == [
        (CCA, LORA),
        ("CCA w/ mask, margin 2", LORA),
        (LORA, CCA),
        (LORA, "CCA w/ mask, margin 2"),
    ]
    assert arm_pairs([CCA, "CCA w/ mask, margin 2"]) == [(CCA, "CCA w/ mask, margin 2"), ("CCA w/ mask, margin 2", CCA)]


def test_plot_frontier_draws_a_line_per_curve_and_a_legend_per_arm(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    assert plot_frontier([], tmp_path / "none.png") is None
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    path = plot_frontier(frontier_points(runs()), tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [CCA, LORA]
    thin = [line for line in ax.get_lines() if line.get_linewidth() == 0.6 and len(line.get_xdata()) > 0]
    assert sorted(len(line.get_xdata()) for line in thin) == [1, 1, 2, 3]  # (CCA 0), (CCA 1), (LoRA 0), (LoRA 1)


def test_write_report_adds_the_frontier_section_figure_and_json(tmp_path):
    report = write_report(runs(), tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Target gain against forgetting (frontier)" in markdown
    assert "### CCA w/ mask against LoRA" in markdown and "### LoRA against CCA w/ mask" in markdown
    assert "![frontier](frontier.png)" in markdown and (tmp_path / "frontier.png").stat().st_size > 0
    saved = json.loads((tmp_path / "report.json").read_text())["frontier"]
    assert len(saved["points"]) == 7 and len(saved["matched"]) == 3 + 4
    assert report["figures"]["frontier"] == str(tmp_path / "frontier.png")


def test_write_report_without_selection_fields_has_no_frontier(tmp_path):
    history = [{"step": 0, "score": 0.3}, {"step": 2, "score": 0.4, "forgetting": 0.01, "forgetting_stderr": 0.001}]
    report = write_report([{**runs()[1], "curves": [{"lr": 1e-3, "history": history}]}], tmp_path)
    assert "frontier" not in report and "frontier" not in report["figures"]
    assert not (tmp_path / "frontier.png").exists() and "(frontier)" not in report["markdown"]


def scored(name, config, correct, seed=0, completions=False):
    """A run scored on ``len(correct)`` problems of one group (per-problem results kept when asked)."""
    accuracy = sum(correct) / len(correct)
    test = {
        "macro": accuracy,
        "micro": accuracy,
        "n": len(correct),
        "groups": {"g": {"accuracy": accuracy, "n": len(correct)}},
    }
    if completions:
        test["completions"] = [{"id": f"p{i}", "group_id": "g", "correct": bool(c)} for i, c in enumerate(correct)]
    return {
        "name": name,
        "config": config,
        "method": None if config == "Base" else "prefix",
        "seed": seed,
        "dataset_size": 40,
        "test": test,
        "general": {},
    }


def test_table1_with_one_seed_shows_the_binomial_stderr_and_n_not_a_zero_spread():
    base, cca = [1] * 12 + [0] * 20, [1] * 14 + [0] * 18  # 37.5% and 43.75% of 32
    rows = table1([scored("base", "Base", base), scored("cca", CCA, cca)])
    markdown = render_markdown({"table1": rows, "table2": [], "table7": []})
    table = markdown.split("## Table 1")[1]
    assert "± 0.0" not in table
    assert "| Base | - | 1 | - | - | 37.5 ± 8.6 | 0 (reference) | binomial stderr, n=32 |" in table
    # unpaired: the eval JSON keeps no per-problem results, so sqrt(0.0856^2 + 0.0877^2)
    assert (
        "| CCA w/ mask | prefix | 1 | 40 pivots | - | 43.8 ± 8.8 | +6.2 ± 12.3 | binomial stderr, n=32; Δ: "
        "unpaired stderr |" in table
    )
    assert rows[1]["test_std"] is None and rows[1]["test_stderr"] == pytest.approx(math.sqrt(0.4375 * 0.5625 / 32))


def test_table1_pairs_per_problem_when_the_eval_json_keeps_them():
    base = scored("base", "Base", [1, 1, 0, 0], completions=True)
    cca = scored("cca", CCA, [1, 1, 1, 0], completions=True)
    (_, row) = table1([base, cca])
    assert row["delta"] == pytest.approx(0.25) and row["delta_stderr_kind"] == "paired"
    assert row["delta_stderr"] == pytest.approx(0.25)  # differences (0, 0, 1, 0): stdev 0.5 / sqrt(4)
    markdown = render_markdown({"table1": [row], "table2": [], "table7": []})
    assert "| +25.0 ± 25.0 | binomial stderr, n=4; Δ: paired stderr |" in markdown


def test_table1_with_several_seeds_keeps_the_spread_and_states_n():
    made = [
        scored("b0", "Base", [1] * 10 + [0] * 22, seed=0),
        scored("b1", "Base", [1] * 12 + [0] * 20, seed=1),
        scored("c0", CCA, [1] * 14 + [0] * 18, seed=0),
        scored("c1", CCA, [1] * 18 + [0] * 14, seed=1),
    ]
    markdown = render_markdown({"table1": table1(made), "table2": [], "table7": []})
    # CCA: 43.75 and 56.25 (std 8.84); Δ 12.5 and 18.75 (std 4.42)
    assert "| 50.0 ± 8.8 | +15.6 ± 4.4 | std over 2 seeds, n=32 each |" in markdown
