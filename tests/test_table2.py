"""Table 2 says what is noise: every figure with n and stderr, each change with its own, a mark past 2 sigma."""

from __future__ import annotations

import math

import pytest

from peft_cca.evaluation.forgetting import CrossEntropy, forgetting
from peft_cca.reports import plot_general, render_markdown, table2


def run(config, accuracy, doc_nll, *, seed=0, lm_acc=0.40, lm_se=0.02):
    return {
        "name": f"{config}-{seed}",
        "config": config,
        "method": None if config == "Base" else "prefix",
        "seed": seed,
        "test": {"macro": 0.5},
        "general": {
            "retention": {"macro": accuracy, "n": 100, "groups": {"aiw": {"accuracy": accuracy, "n": 100}}},
            "cross_entropy": {
                "mean": sum(doc_nll) / 30,
                "stderr": 0.01,
                "n_tokens": 30,
                "n_docs": 3,
                "doc_nll": list(doc_nll),
                "doc_tokens": [5, 10, 15],
            },
            "lm_eval": {"cca_mmlu_stem": {"acc": lm_acc, "acc_stderr": lm_se, "n": 600}},
        },
    }


BASE = run("Base", 0.50, [10.0, 20.0, 30.0])
DAMAGED = run("CCA w/ mask", 0.35, [11.0, 22.0, 33.0], lm_acc=0.39)  # every document 10% worse
KEPT = run("LoRA", 0.45, [10.0, 20.1, 29.9], lm_acc=0.41)


def test_each_change_has_the_stderr_of_both_runs_and_a_mark_past_twice_it():
    rows = {r["config"]: r for r in table2([BASE, DAMAGED, KEPT])}
    damaged, kept = rows["CCA w/ mask"], rows["LoRA"]
    se = math.hypot(math.sqrt(0.5 * 0.5 / 100), math.sqrt(0.35 * 0.65 / 100))  # 0.0691
    assert damaged["delta"]["retention: aiw"] == pytest.approx(-0.15)
    assert damaged["delta_stderr"]["retention: aiw"] == pytest.approx(se)
    assert "retention: aiw" in damaged["marked"]  # -0.15 is past 2 x 0.069
    kept_se = math.hypot(0.05, math.sqrt(0.45 * 0.55 / 100))
    assert kept["delta_stderr"]["retention: aiw"] == pytest.approx(kept_se)
    assert "retention: aiw" not in kept["marked"]  # -0.05 is within noise
    assert damaged["delta"]["cca_mmlu_stem acc"] == pytest.approx(-0.01)
    assert damaged["delta_stderr"]["cca_mmlu_stem acc"] == pytest.approx(math.hypot(0.02, 0.02))
    assert damaged["n"]["cca_mmlu_stem acc"] == 600 and damaged["n"]["retention: aiw"] == 100


def test_the_cross_entropy_rise_is_paired_per_document():
    rows = {r["config"]: r for r in table2([BASE, DAMAGED, KEPT])}
    fields = ("mean", "stderr", "n_tokens", "n_docs", "doc_nll", "doc_tokens")
    base_ce = CrossEntropy(**{k: BASE["general"]["cross_entropy"][k] for k in fields})
    tuned_ce = CrossEntropy(**{k: DAMAGED["general"]["cross_entropy"][k] for k in fields})
    expected = forgetting(base_ce, tuned_ce)
    name = "cross-entropy (nats/token)"
    assert rows["CCA w/ mask"]["delta"][name] == pytest.approx(6.0 / 30) == pytest.approx(expected.delta)
    assert rows["CCA w/ mask"]["delta_stderr"][name] == pytest.approx(expected.stderr)
    assert name in rows["CCA w/ mask"]["marked"]  # a rise of 0.2 nats in every document is no noise
    assert name not in rows["LoRA"]["marked"]


def test_several_seeds_average_and_combine_their_errors():
    runs = [
        BASE,
        run("Base", 0.50, [10.0, 20.0, 30.0], seed=1),
        DAMAGED,
        run("CCA w/ mask", 0.45, [10, 20, 30], seed=1),
    ]
    row = table2(runs)[0]
    assert row["seeds"] == 2
    assert row["delta"]["retention: aiw"] == pytest.approx((-0.15 - 0.05) / 2)
    errors = [math.hypot(0.05, math.sqrt(a * (1 - a) / 100)) for a in (0.35, 0.45)]
    assert row["delta_stderr"]["retention: aiw"] == pytest.approx(math.sqrt(sum(e * e for e in errors)) / 2)
    assert row["delta_spread"]["retention: aiw"] == pytest.approx(math.sqrt(0.005))


def test_the_markdown_shows_n_stderr_and_the_mark(tmp_path):
    tables = {"table1": [], "table2": table2([BASE, DAMAGED, KEPT]), "table7": []}
    text = render_markdown(tables)
    assert "retention: aiw 50.0 ± 5.0 (n=100)" in text
    assert "**-15.0 ± 6.9** ▼" in text and "-5.0 ± 7.1 |" in text
    assert plot_general(tables["table2"], tmp_path / "general.png").stat().st_size > 0


def test_a_measure_some_base_seeds_lack_is_named_not_averaged():
    later = run("Base", 0.50, [10.0, 20.0, 30.0], seed=1)
    later["general"]["lm_eval"] = {"cca_triviaqa": {"exact_match": 0.1, "exact_match_stderr": 0.05, "n": 20}}
    tuned = [{**DAMAGED, "seed": seed} for seed in (0, 1)]
    [row] = table2([BASE, later, *tuned])
    assert "cca_mmlu_stem acc" not in row["base"] and "cca_triviaqa exact_match" not in row["base"]
    assert row["left_out"] == {"cca_mmlu_stem acc": [0], "cca_triviaqa exact_match": [1]}
    report = render_markdown({"table1": [], "table2": [row], "table7": []})
    assert "Left out, measured on some base seeds only: cca_mmlu_stem acc (seed 0); cca_triviaqa exact_match" in report
