"""Reports from synthetic evaluated runs: the tables' numbers, the Markdown, the JSON and the plots."""

from __future__ import annotations

import json

import pytest

from peft_cca.cli import main
from peft_cca.reports import write_report
from peft_cca.reports.plots import lr_colors, plot_circuits, plot_curves
from peft_cca.reports.tables import NOMASK_ALL, NOMASK_SITES, table1, table2, table7, template_deltas


def run(name, config, test, seed=0, method="prefix", retention=0.5, kl=0.0, counts=None, curve=None):
    return {
        "name": name,
        "config": config,
        "method": None if config == "Base" else method,
        "seed": seed,
        "dataset_size": 40,
        "mask_percent": 1.5 if counts else None,
        "circuit_counts": counts,
        "circuit_layers": {"0": counts, "1": {"q": 0, "k": 0, "v": 0, "mlp": 1}} if counts else None,
        "num_layers": 2,
        "test": {"macro": test},
        "general": {
            "retention": {"macro": retention, "groups": {"letter_counting": {"accuracy": retention}}},
            "kl": kl,
        },
        "curves": [{"lr": 1e-3, "history": curve}] if curve else [],
    }


RUNS = [
    run("base", "Base", 0.30),
    run(
        "cca-s0",
        "CCA w/ mask",
        0.40,
        seed=0,
        retention=0.45,
        kl=0.01,
        counts={"q": 2, "k": 1, "v": 1, "mlp": 10},
        curve=[{"step": 0, "score": 0.3}, {"step": 2, "score": 0.5}],
    ),
    run(
        "cca-s1",
        "CCA w/ mask",
        0.50,
        seed=1,
        retention=0.55,
        kl=0.03,
        counts={"q": 4, "k": 1, "v": 3, "mlp": 20},
        curve=[{"step": 0, "score": 0.3}, {"step": 2, "score": 0.4}],
    ),
    run("lora", "LoRA", 0.20, retention=0.3, kl=0.2),
]


def test_table1_means_stds_and_deltas():
    rows = {r["config"]: r for r in table1(RUNS)}
    assert list(rows) == ["Base", "CCA w/ mask", "LoRA"]
    cca = rows["CCA w/ mask"]
    assert cca["seeds"] == 2
    assert cca["test_mean"] == pytest.approx(0.45)
    assert cca["test_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert cca["delta"] == pytest.approx(0.15)
    assert rows["LoRA"]["delta"] == pytest.approx(-0.10)
    assert rows["Base"]["delta"] == pytest.approx(0.0)


def test_table2_is_the_change_on_each_general_benchmark():
    rows = {r["config"]: r["delta"] for r in table2(RUNS)}
    assert rows["CCA w/ mask"]["retention (macro)"] == pytest.approx(0.0)
    assert rows["CCA w/ mask"]["KL drift (nats)"] == pytest.approx(0.02)
    assert rows["LoRA"]["retention: letter_counting"] == pytest.approx(-0.2)


def test_table7_counts_components_per_kind():
    (row,) = table7(RUNS)
    assert row == {"config": "CCA w/ mask", "method": "prefix", "q": 3, "k": 1, "v": 2, "mlp": 15}


def test_compare_command_writes_markdown_json_and_plots(tmp_path):
    paths = []
    for r in RUNS:
        path = tmp_path / f"{r['name']}.json"
        path.write_text(json.dumps(r))
        paths.append(str(path))
    assert main(["compare", "--runs", *paths, "--out", str(tmp_path / "report")]) == 0
    out = tmp_path / "report"
    markdown = (out / "report.md").read_text()
    assert "| CCA w/ mask | prefix | 2 | 40 pivots | 1.500 | 45.0 ± 7.1 | +15.0 ± 7.1 |" in markdown
    assert json.loads((out / "report.json").read_text())["table7"][0]["mlp"] == 15
    assert (out / "curves.png").stat().st_size > 0 and (out / "circuits.png").stat().st_size > 0


def test_write_report_without_a_base_leaves_deltas_empty(tmp_path):
    tables = write_report(RUNS[1:2], tmp_path)
    assert tables["table1"][0]["delta"] is None and tables["table2"] == []


def test_load_runs_reads_files_run_folders_and_folders_of_run_jsons(tmp_path):
    from peft_cca.reports import load_runs

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "base.json").write_text('{"name": "base"}')
    (tmp_path / "eval" / "cca.json").write_text('{"name": "cca"}')
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "eval.json").write_text('{"name": "lora"}')
    names = [r["name"] for r in load_runs([tmp_path / "eval", tmp_path / "lora", tmp_path / "eval" / "cca.json"])]
    assert names == ["base", "cca", "lora", "cca"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither eval\.json"):
        load_runs([tmp_path / "empty"])


def test_deltas_pair_each_run_with_the_base_on_its_own_seed():
    runs = [
        run("base-s0", "Base", 0.30, seed=0, retention=0.2),
        run("base-s1", "Base", 0.60, seed=1, retention=0.4),
        run("cca-s0", "CCA w/ mask", 0.40, seed=0, retention=0.3),
        run("cca-s1", "CCA w/ mask", 0.80, seed=1, retention=0.4),
        run("nomask-s0", "CCA w/o mask", 0.50, seed=0, retention=0.1),  # one seed only
    ]
    rows = {r["config"]: r for r in table1(runs)}
    assert rows["CCA w/ mask"]["delta"] == pytest.approx(0.15)  # (0.10 + 0.20) / 2
    assert rows["CCA w/ mask"]["delta_std"] == pytest.approx(0.0707107, rel=1e-5)
    # against seed 0's base (0.30), not the mean base over both seeds (0.45)
    assert rows[NOMASK_SITES]["delta"] == pytest.approx(0.20)
    general = {r["config"]: r["delta"] for r in table2(runs)}
    assert general[NOMASK_SITES]["retention (macro)"] == pytest.approx(-0.1)
    assert general["CCA w/ mask"]["retention (macro)"] == pytest.approx(0.05)


def with_groups(r, **accuracies):
    return {**r, "test": {"macro": r["test"]["macro"], "groups": {g: {"accuracy": a} for g, a in accuracies.items()}}}


def test_both_ablations_are_labelled_and_the_old_meaning_is_circuit_sites():
    runs = [
        run("base", "Base", 0.3),
        run("old", "CCA w/o mask", 0.4),
        {**run("authors", "CCA w/o mask", 0.5), "label": "w/o mask (all parameters)"},
    ]
    assert [r["config"] for r in table1(runs)] == ["Base", NOMASK_ALL, NOMASK_SITES]


def test_trained_on_counts_pivots_for_cca_problems_for_lora_and_nothing_for_the_base(tmp_path):
    runs = [
        run("base", "Base", 0.3),
        run("cca", "CCA w/ mask", 0.4),
        {**run("lora", "LoRA", 0.5), "train_problems": 52},
    ]
    rows = {r["config"]: r for r in table1(runs)}
    assert rows["Base"]["dataset_size"] is None
    assert (rows["CCA w/ mask"]["dataset_size"], rows["CCA w/ mask"]["dataset_unit"]) == (40, "pivots")
    assert (rows["LoRA"]["dataset_size"], rows["LoRA"]["dataset_unit"]) == (52, "problems")
    markdown = write_report(runs, tmp_path)["markdown"]
    assert "| LoRA | prefix | 1 | 52 problems |" in markdown and "| Base | - | 1 | - |" in markdown


def test_template_deltas_count_gains_and_harms_paired_per_seed(tmp_path):
    runs = [
        with_groups(run("base0", "Base", 0.5, seed=0), t1=0.5, t2=0.5, t3=0.5, t4=0.5),
        with_groups(run("base1", "Base", 0.5, seed=1), t1=0.1, t2=0.5, t3=0.5, t4=0.5),
        with_groups(run("cca0", "CCA w/ mask", 0.5, seed=0), t1=0.9, t2=0.3, t3=0.5, t4=0.6),
        with_groups(run("cca1", "CCA w/ mask", 0.5, seed=1), t1=0.1, t2=0.5, t3=0.5, t4=0.6),
    ]
    (row,) = template_deltas(runs)
    assert row["changes"] == pytest.approx({"t1": 0.2, "t2": -0.1, "t3": 0.0, "t4": 0.1})
    assert (row["groups"], row["improved"], row["worsened"], row["unchanged"]) == (4, 2, 1, 1)
    assert [g for g, _ in row["gains"]] == ["t1", "t4"] and [g for g, _ in row["harms"]] == ["t2"]
    markdown = write_report(runs, tmp_path)["markdown"]
    assert "| CCA w/ mask | prefix | 4 | 2 | 1 | 1 | t1 +20.0, t4 +10.0 | t2 -10.0 |" in markdown


def curve_runs():
    history = [{"step": s, "score": 0.1 * s / 10 + 0.2} for s in (0, 2, 4, 10)]
    made = []
    for seed in (0, 1, 2):
        for config in ("CCA w/ mask", "CCA w/o mask"):
            curves = [{"lr": lr, "history": history} for lr in (1e-2, 1e-3, 1e-4)]
            made.append({**run(f"{config}-{seed}", config, 0.4, seed=seed), "curves": curves})
    made[0]["kept"] = {"lr": 1e-3, "step": 4}
    return made


def test_curves_have_a_panel_per_arm_a_colour_per_lr_and_the_kept_step(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert plot_curves(curve_runs(), tmp_path / "curves.png").stat().st_size > 0
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().splitlines()[0] for ax in panels] == ["CCA w/ mask", NOMASK_SITES]
    assert all("3 seeds" in ax.get_title() for ax in panels)
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:3] == ["lr 0.01", "lr 0.001", "lr 0.0001"] and "kept step" in labels
    colours = [h.get_color() for h in legend.legend_handles[:3]]
    assert len({tuple(c) for c in colours}) == 3
    stars = [line for line in panels[0].get_lines() if line.get_marker() == "*"]
    assert len(stars) == 3  # one kept step per seed
    assert (stars[0].get_xdata()[0], stars[0].get_color()) == (4, colours[1])  # the recorded kept step
    # per lr: one thin line per seed and one thick mean
    assert len([line for line in panels[0].get_lines() if line.get_linewidth() > 2]) == 3


def test_lr_colours_never_repeat():
    for n in (3, 10, 15, 25):
        colours = lr_colors(10.0**-i for i in range(n))
        assert len(set(map(tuple, colours.values()))) == n


def test_circuit_figure_shows_fractions_per_kind_with_seed(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    cca = {**RUNS[1], "kind_sizes": {"q": 4, "k": 2, "v": 2, "mlp": 100}, "lambda": 0.01}
    plot_circuits([RUNS[0], cca], tmp_path / "circuits.png")
    (fig,) = figures
    assert len(fig.axes) == 4  # one row (the only circuit), q k v mlp
    q_bars = [bar.get_width() for bar in fig.axes[0].patches]
    mlp_bars = [bar.get_width() for bar in fig.axes[3].patches]
    assert q_bars == pytest.approx([50.0, 0.0]) and mlp_bars == pytest.approx([10.0, 1.0])  # % of the layer
    assert "seed 0" in fig.axes[0].get_ylabel() and "lambda 0.01" in fig.axes[0].get_ylabel()


def test_compare_quiet_writes_without_printing(tmp_path, capsys):
    path = tmp_path / "base.json"
    path.write_text(json.dumps(RUNS[0]))
    assert main(["compare", "--runs", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "Table 1" not in capsys.readouterr().out and (tmp_path / "r" / "report.md").exists()


def test_the_report_shows_which_letters_a_model_picked_beside_its_accuracy(tmp_path):
    from peft_cca.reports import write_report

    mmlu = {"acc": 0.25, "n": 40, "pred_A": 0.975, "pred_B": 0.025, "pred_C": 0.0, "pred_D": 0.0}
    runs = [
        {
            "name": "base",
            "config": "Base",
            "test": {"macro": 0.5, "n": 4},
            "general": {"lm_eval": {"cca_mmlu_stem": mmlu}},
        }
    ]
    tables = write_report(runs, tmp_path)
    assert tables["letter_shares"] == [
        {
            "run": "base",
            "task": "cca_mmlu_stem",
            "acc": 0.25,
            "n": 40,
            **{letter: mmlu[f"pred_{letter}"] for letter in "ABCD"},
        }
    ]
    markdown = (tmp_path / "report.md").read_text()
    assert "| base | cca_mmlu_stem | 40 | 25.0% | 98% | 2% | 0% | 0% |" in markdown
