"""Reports from synthetic evaluated runs: the tables' numbers, the Markdown, the JSON and the plots."""

from __future__ import annotations

import json

import pytest

from peft_cca.cli import main
from peft_cca.report import table1, table2, table7, write_report


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
    assert "| CCA w/ mask | prefix | 2 | 40 | 1.500 | 45.0 ± 7.1 | +15.0 ± 7.1 |" in markdown
    assert json.loads((out / "report.json").read_text())["table7"][0]["mlp"] == 15
    assert (out / "curves.png").stat().st_size > 0 and (out / "circuits.png").stat().st_size > 0


def test_write_report_without_a_base_leaves_deltas_empty(tmp_path):
    tables = write_report(RUNS[1:2], tmp_path)
    assert tables["table1"][0]["delta"] is None and tables["table2"] == []


def test_load_runs_reads_files_run_folders_and_folders_of_run_jsons(tmp_path):
    from peft_cca.report import load_runs

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
    assert rows["CCA w/o mask"]["delta"] == pytest.approx(0.20)
    general = {r["config"]: r["delta"] for r in table2(runs)}
    assert general["CCA w/o mask"]["retention (macro)"] == pytest.approx(-0.1)
    assert general["CCA w/ mask"]["retention (macro)"] == pytest.approx(0.05)
