"""The selection split: scores and paired stderrs by hand, held-out problems by id and question, and the sweep
recording every validated step's selection score (and picking by it when asked)."""

from __future__ import annotations

import math

import pytest
from peft import get_peft_model
from test_cca_trainer import PAD, circuit_of, id_rows
from tiny_models import tiny_model

from peft_cca import CCAConfig
from peft_cca.amplify.settings import AmplifySettings
from peft_cca.amplify.trainer import train_one
from peft_cca.errors import UsageError
from peft_cca.evaluation.selection import (
    MIN_SELECTION,
    SelectionMeter,
    SelectionScore,
    held_out_problems,
    score_against,
)
from peft_cca.sweep.callbacks import BestStepCallback
from peft_cca.sweep.runs import Readings
from peft_cca.sweep.settings import StepChoice
from peft_cca.tasks.problem import Problem


def test_score_against_the_base_by_hand():
    base = [True, False, False, True, False]
    now = [True, True, False, False, True]
    score = score_against(base, now)
    assert score.n == 5 and score.accuracy == pytest.approx(0.6)
    assert score.stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    differences = [0, 1, 0, -1, 1]  # mean 0.2
    variance = sum((d - 0.2) ** 2 for d in differences) / 4
    assert score.gain == pytest.approx(0.2) and score.gain_stderr == pytest.approx(math.sqrt(variance / 5))
    assert score.fields() == {
        "selection_accuracy": score.accuracy,
        "selection_stderr": score.stderr,
        "selection_gain": score.gain,
        "selection_gain_stderr": score.gain_stderr,
        "selection_n": 5,
    }


def test_an_unchanged_model_gains_zero_with_zero_paired_stderr():
    base = [True, False, True] * 20
    score = score_against(base, base)
    assert score.gain == 0 and score.gain_stderr == 0 and score.stderr > 0


def _problem(index: int, question: str) -> Problem:
    return Problem(id=f"p{index}", group_id="g", question=question, answer="0")


def test_held_out_problems_share_no_id_or_question_with_stage_one():
    used = [_problem(0, "1 + 1"), _problem(1, "2 + 2")]
    candidates = [_problem(1, "9 + 9"), _problem(2, "1 + 1"), _problem(3, "3 + 3"), _problem(4, "3 + 3")]
    candidates += [_problem(5, "4 + 4")]
    chosen = held_out_problems(candidates, used, 2)
    assert [p.id for p in chosen] == ["p3", "p5"]  # p1: a stage-1 id; p2: a stage-1 question; p4: a repeat
    with pytest.raises(UsageError, match="only 2 problems of the selection task are new"):
        held_out_problems(candidates, used, 3)


def test_a_selection_split_below_forty_is_refused():
    problems = [_problem(i, f"{i} + 0") for i in range(MIN_SELECTION - 1)]
    with pytest.raises(UsageError, match="at least 40"):
        SelectionMeter.of_base(None, None, problems)


class ScriptedSelection:
    """A selection reading per call: accuracy rising to a peak at the third evaluated step, then falling."""

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = iter(accuracies)

    def __call__(self, _model) -> SelectionScore:
        accuracy = next(self.accuracies)
        return SelectionScore(accuracy, 0.05, accuracy - 0.5, 0.03, 48)


def _sweep(select_on: str, validation: list[float], selection: list[float], tmp_path):
    model = tiny_model("llama")
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit_of(model)))
    scores = iter(validation)
    readings = Readings(lambda _m: next(scores), selection=ScriptedSelection(selection))
    settings = AmplifySettings(steps=4, step_choice=StepChoice(select_on=select_on))
    return train_one(peft_model, id_rows(), 0.1, PAD, readings, settings, schedule=[1, 2, 3, 4], output_dir=tmp_path)


def test_every_validated_step_records_its_selection_score_and_the_paper_rule_still_reads_validation(tmp_path):
    run = _sweep("validation", [0.5, 0.9, 0.6, 0.6, 0.6], [0.5, 0.5, 0.6, 0.8, 0.7], tmp_path)
    assert [e["step"] for e in run.history] == [0, 1, 2, 3, 4]
    assert [e["selection_accuracy"] for e in run.history] == [0.5, 0.5, 0.6, 0.8, 0.7]
    assert all(e["selection_n"] == 48 for e in run.history)
    assert run.best_step == 1 and run.best_score == 0.9


def test_select_on_selection_picks_the_best_selection_step(tmp_path):
    run = _sweep("selection", [0.5, 0.9, 0.6, 0.6, 0.6], [0.5, 0.5, 0.6, 0.8, 0.7], tmp_path)
    assert run.best_step == 3 and run.best_score == 0.8
    assert run.paper_step == 1  # what the paper's rule would have kept, recorded beside


def test_select_on_selection_without_a_selection_split_is_refused():
    with pytest.raises(ValueError, match="needs a selection_fn"):
        BestStepCallback(lambda _m: 0.0, select_on="selection")


def test_the_frontier_flags_refuse_what_they_cannot_do(tmp_path, capsys):
    from peft_cca.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text('{"task": "rg:chain_sum?size=60", "model": "smollm2-135m-instruct"}')
    (run / "circuit.json").write_text("{}")
    for extra, message in (
        (["--select-on", "selection"], "needs a selection split"),
        (["--selection-problems", "12"], "at least 40"),
    ):
        assert main(["amplify", "--run", str(run), "--out", str(tmp_path / "out"), *extra]) == 2
        assert message in capsys.readouterr().err


class CountingMeter(ScriptedSelection):
    """A meter that knows the base's reading, counting the generations it is asked for."""

    calls = 0

    def __call__(self, model) -> SelectionScore:
        CountingMeter.calls += 1
        return super().__call__(model)

    def base_reading(self) -> SelectionScore:
        return SelectionScore(0.5, 0.05, 0.0, 0.0, 48)


def test_step_zero_reads_the_base_the_meter_measured_instead_of_generating_again(tmp_path):
    model = tiny_model("llama")
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit_of(model)))
    CountingMeter.calls = 0
    readings = Readings(lambda _m: 0.5, selection=CountingMeter([0.7]))
    run = train_one(
        peft_model, id_rows(), 0.1, PAD, readings, AmplifySettings(steps=2), schedule=[2], output_dir=tmp_path
    )
    assert CountingMeter.calls == 1 and [e["selection_gain"] for e in run.history] == [0.0, pytest.approx(0.2)]
