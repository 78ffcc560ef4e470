"""Calibrating the retention suite: per-task accuracy with its n and binomial stderr, and the band that keeps it."""

from __future__ import annotations

import json
import math

import pytest

from peft_cca.cli import main
from peft_cca.evaluation import calibration
from peft_cca.evaluation.retention import retention_problems


def test_binomial_stderr_by_hand():
    assert calibration.binomial_stderr(0.5, 25) == pytest.approx(0.1)
    assert calibration.binomial_stderr(0.0, 10) == 0.0
    assert math.isnan(calibration.binomial_stderr(0.5, 0))


def test_only_tasks_inside_the_band_are_chosen(monkeypatch):
    measured = {"aiw": 0.25, "gcd": 0.3, "lcm": 0.55, "count_bits": 0.7, "syllogism": 0.75}

    def fake_exact_match(model, tokenizer, problems, **kwargs):
        task = problems[0].group_id
        return {"micro": measured[task], "n": len(problems)}

    monkeypatch.setattr(calibration, "evaluate_exact_match", fake_exact_match)
    rows = calibration.calibrate(None, None, list(measured), size=4, seed=0)
    assert [r["task"] for r in rows if r["in_band"]] == ["gcd", "lcm", "count_bits"]
    assert all(r["n"] == 4 for r in rows)
    assert rows[2]["stderr"] == pytest.approx(math.sqrt(0.55 * 0.45 / 4))
    table = calibration.render_table("m", rows)
    assert "| **`lcm`** | 4 | 55.0 | 24.9 |" in table and "| `aiw` |" in table


def test_a_candidate_may_carry_its_own_config():
    problems = retention_problems(["products?max_digits=1"], size=5, seed=3)
    assert len(problems) == 5
    assert all(max(map(int, p.question.split(":")[1].split(".")[0].split("*"))) < 10 for p in problems)


def test_the_default_candidates_all_generate():
    for task in calibration.CANDIDATES:
        assert len(retention_problems([task], size=2, seed=0)) == 2, task


def test_an_inverted_band_is_refused_before_the_model_loads(tmp_path, capsys):
    assert main(["calibrate", "--low", "0.8", "--high", "0.2", "--out", str(tmp_path / "c.json")]) == 2
    assert "--low 0.8 is above --high 0.2" in capsys.readouterr().err


def test_a_stopped_calibration_resumes_from_the_rows_it_wrote(monkeypatch, tmp_path):
    import peft_cca.runtime.loading
    from peft_cca.runtime.runfolder import atomic_write_json

    measured = {"aiw": 0.5, "gcd": 0.1, "lcm": 0.4}
    evaluated, stop_at = [], ["gcd"]

    def fake_exact_match(model, tokenizer, problems, **kwargs):
        evaluated.append(problems[0].group_id)
        if problems[0].group_id in stop_at:
            raise KeyboardInterrupt  # stopped on the second task
        return {"micro": measured[problems[0].group_id], "n": len(problems)}

    monkeypatch.setattr(calibration, "evaluate_exact_match", fake_exact_match)
    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", lambda *a, **k: (None, None))
    monkeypatch.setattr(peft_cca.runtime.loading, "resolve", lambda name: name)
    out = tmp_path / "c.json"
    argv = ["calibrate", "--model", "m", "--size", "4", "--candidates", *measured, "--out", str(out)]
    assert main(argv) == 130  # "interrupted; run the same command again to resume"
    written = json.loads(out.read_text())
    assert [r["task"] for r in written["rows"]] == ["aiw"] and written["complete"] is False
    evaluated.clear()
    stop_at.clear()
    assert main(argv) == 0
    assert evaluated == ["gcd", "lcm"]  # aiw was not measured again
    final = json.loads(out.read_text())
    assert final["complete"] is True and final["chosen"] == ["aiw", "lcm"]
    atomic_write_json(out, {**final, "settings": {**final["settings"], "size": 99}})
    assert main(argv) == 2  # another measuring setting: refused, not mixed


def test_an_offline_model_gets_its_calibrated_retention_suite_and_others_the_default():
    from peft_cca.defaults import CALIBRATED_RETENTION_TASKS
    from peft_cca.tasks import DEFAULT_RETENTION_TASKS, retention_tasks_for

    assert retention_tasks_for("smollm2-135m-instruct") == CALIBRATED_RETENTION_TASKS["smollm2-135m-instruct"]
    assert retention_tasks_for("someone/else") == retention_tasks_for(None) == DEFAULT_RETENTION_TASKS
    for model, tasks in CALIBRATED_RETENTION_TASKS.items():
        assert set(tasks) <= set(calibration.CANDIDATES), model  # chosen among the candidates calibrate measures
        for task in tasks:
            assert len(retention_problems([task], size=2, seed=0)) == 2, (model, task)


def test_the_defaults_are_the_committed_calibration_tables():
    import json
    from pathlib import Path

    from peft_cca.defaults import CALIBRATED_RETENTION_TASKS

    tables = Path(__file__).parent.parent / "results" / "retention-calibration"
    for model, tasks in CALIBRATED_RETENTION_TASKS.items():
        table = json.loads((tables / f"{model}.json").read_text())
        assert table["complete"] and table["model"] == model
        assert tuple(table["chosen"]) == tasks
        assert all(0.3 <= row["accuracy"] <= 0.7 for row in table["rows"] if row["task"] in tasks)


def test_a_demo_resume_keeps_the_retention_suite_it_recorded(tmp_path):
    from peft_cca.cli.demo_runner import recorded_retention_tasks
    from peft_cca.runtime.runfolder import atomic_write_json

    assert recorded_retention_tasks(tmp_path / "new") is None
    atomic_write_json(tmp_path / "settings.json", {"model": "m", "retention_tasks": ["aiw", "gcd"]})
    assert recorded_retention_tasks(tmp_path) == ["aiw", "gcd"]


def test_two_configs_of_one_generator_are_two_retention_tasks_with_distinct_ids():
    problems = retention_problems(["products?max_digits=1", "products?max_digits=2", "gcd"], size=3, seed=0)
    assert [p.group_id for p in problems] == ["products?max_digits=1"] * 3 + ["products?max_digits=2"] * 3 + ["gcd"] * 3
    assert len({p.id for p in problems}) == 9
    assert problems[-1].id == "rg:gcd:0:2"  # a task without a config keeps its ids and group
