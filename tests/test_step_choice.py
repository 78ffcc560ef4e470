"""Choosing the step that sees its cost: forgetting measured at each validation step and ``--max-forgetting``.

The live rule (``BestStepCallback``) and its replay over recorded curves (``reports.step_choice.replay``) are
pinned together on random curves; the meter reads zero on an untouched adapter and a rise once it trains.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca  # noqa: F401 - registers the "cca" method
from peft_cca import CCAConfig, Circuit, describe
from peft_cca.amplify.settings import AmplifySettings
from peft_cca.amplify.trainer import amplify
from peft_cca.evaluation.forgetting import ForgettingMeter
from peft_cca.reports.step_choice import describe_selection, replay, step_choice_rows, step_choice_table
from peft_cca.sweep.callbacks import BestStepCallback
from peft_cca.sweep.runs import RunResult, best_run, selection_summary
from peft_cca.sweep.settings import StepChoice

PAD = 2
CORPUS = [
    "The river runs through the old town and past the mill.",
    "A violin has four strings tuned in perfect fifths.",
    "Granite forms when magma cools slowly deep underground.",
    "The library opens at nine and closes at six on weekdays.",
]


def cca_model():
    model = tiny_model("llama")
    circuit = Circuit(describe(model).shape, {0: {"q": [1], "v": [0]}, 1: {"mlp": [3, 5]}})
    return get_peft_model(model, CCAConfig(circuit=circuit)), circuit


def scripted_callback(scores, forgettings, bound, evaluate_at_start=True):
    """A callback fed ``scores``/``forgettings`` per evaluation, driven through steps 1..len as a Trainer would."""
    model, _ = cca_model()
    score_iter, forget_iter = iter(scores), iter(forgettings)
    reading = lambda _m: SimpleNamespace(delta=next(forget_iter), stderr=0.001)  # noqa: E731
    steps = len(scores) - (1 if evaluate_at_start else 0)
    callback = BestStepCallback(
        lambda _m: next(score_iter),
        range(1, steps + 1),
        evaluate_at_start=evaluate_at_start,
        forgetting_fn=reading,
        max_forgetting=bound,
    )
    state = SimpleNamespace(global_step=0, max_steps=steps, is_world_process_zero=True)
    callback.on_train_begin(None, state, None, model=model)
    for step in range(1, steps + 1):
        state.global_step = step
        with torch.no_grad():  # each step moves the deltas, so each kept state is distinct
            for param in (p for p in model.parameters() if p.requires_grad):
                param.fill_(float(step))
        callback.on_step_end(None, state, None, model=model)
    callback.on_train_end(None, state, None, model=model)
    return callback, model


def test_the_bound_keeps_the_best_step_within_it_and_records_the_papers_pick():
    #        step: 0     1     2     3     4
    scores = [0.1, 0.3, 0.6, 0.9, 0.8]
    forgets = [0.0, 0.004, 0.008, 0.03, 0.009]
    callback, model = scripted_callback(scores, forgets, bound=0.01)
    assert (callback.best_step, callback.best_score) == (4, 0.8)
    assert (callback.paper_step, callback.paper_score) == (3, 0.9)
    assert callback.bound_met is True
    assert all(p.detach().eq(4.0).all() for p in model.parameters() if p.requires_grad)  # step 4's weights
    assert [e["forgetting"] for e in callback.history] == forgets


def test_without_a_bound_the_paper_rule_is_unchanged():
    callback, _ = scripted_callback([0.1, 0.3, 0.9, 0.9], [0.0, 0.1, 0.2, 0.3], bound=None)
    assert callback.best_step == callback.paper_step == 2  # ties keep the earlier step
    assert callback.bound_met is None


def test_a_bound_no_step_meets_keeps_the_step_that_forgot_least():
    callback, model = scripted_callback([0.0, 0.5, 0.7, 0.6], [0.0, 0.05, 0.02, 0.04], bound=0.01)
    assert (callback.best_step, callback.bound_met) == (2, False)
    assert all(p.detach().eq(2.0).all() for p in model.parameters() if p.requires_grad)


def test_a_bound_needs_a_meter():
    with pytest.raises(ValueError, match="forgetting_fn"):
        BestStepCallback(lambda _m: 0.0, [2], max_forgetting=0.01)


@pytest.mark.parametrize("seed", range(40))
def test_replay_over_the_curves_keeps_what_the_live_rule_kept(seed):
    rng = random.Random(seed)
    bound = rng.choice([None, 0.01, 0.02, 0.05])
    runs = []
    for lr_index in range(rng.randint(1, 3)):
        steps = rng.randint(1, 5)
        scores = [round(rng.random(), 1) for _ in range(steps + 1)]  # rounded: ties happen
        forgets = [0.0] + [round(rng.random() * 0.06, 2) for _ in range(steps)]
        callback, _ = scripted_callback(scores, forgets, bound)
        runs.append(
            RunResult(
                lr=10.0 ** -(lr_index + 1),
                best_step=callback.best_step,
                best_score=callback.best_score,
                history=callback.history,
                losses=[],
                paper_step=callback.paper_step,
                paper_score=callback.paper_score,
                bound_met=callback.bound_met,
            )
        )
    live = best_run(runs)
    replayed = replay([{"lr": r.lr, "history": r.history} for r in runs], bound)
    assert (replayed["lr"], replayed["step"], replayed["score"]) == (live.lr, live.best_step, live.best_score)
    assert replayed["bound_met"] == live.bound_met
    summary = selection_summary(runs, bound)
    paper = replay([{"lr": r.lr, "history": r.history} for r in runs], None)
    assert (summary["paper"]["lr"], summary["paper"]["step"]) == (paper["lr"], paper["step"])
    assert summary["cost"] == pytest.approx(paper["score"] - live.best_score)


def test_the_meter_reads_zero_on_an_untouched_adapter_and_a_rise_once_it_moves():
    model, _ = cca_model()
    tokenizer = tiny_tokenizer()
    meter = ForgettingMeter.of_base(model, tokenizer, CORPUS, max_tokens=None, max_length=64)
    assert meter(model).delta == 0.0
    with torch.no_grad():
        for param in (p for p in model.parameters() if p.requires_grad):
            param.normal_(0.0, 2.0)
    model.train()
    moved = meter(model)
    assert moved.delta != 0.0 and moved.n_docs == len(CORPUS)
    assert model.training  # the meter scores in eval mode and restores the mode it found


def test_amplify_records_forgetting_per_step_and_the_selection(tmp_path):
    tokenizer = tiny_tokenizer()
    base = tiny_model("llama")
    circuit = Circuit(describe(base).shape, {0: {"q": [1], "v": [0]}, 1: {"mlp": [3, 5]}})
    records = [
        {"prefix_ids": [5 + i, 9, 11 + i], "desired_token_id": 20 + i, "undesired_token_id": 30, "split": "train"}
        for i in range(3)
    ]
    settings = AmplifySettings(
        lrs=(0.5, 0.05), steps=4, step_choice=StepChoice(forgetting_tokens=200, max_forgetting=1e9)
    )
    result = amplify(base, tokenizer, records, circuit, None, settings, evaluate_fn=lambda _m: 0.0, output_dir=tmp_path)
    assert all("forgetting" in e for r in result.runs for e in r.history if e["step"] > 0)
    assert result.runs[0].history[0]["forgetting"] == 0.0  # step 0 is the base itself
    saved = json.loads((tmp_path / "amplify.json").read_text())
    assert saved["selection"]["rule"] == "max-forgetting" and saved["selection"]["bound_met"] is True
    assert saved["forgetting_tokens"] > 0
    assert "--max-forgetting 1e+09: kept lr" in describe_selection(saved["selection"])


def test_the_report_table_replays_each_bound_and_marks_one_not_met():
    history = [
        {"step": 0, "score": 0.2, "forgetting": 0.0, "forgetting_stderr": 0.0},
        {"step": 2, "score": 0.5, "forgetting": 0.008, "forgetting_stderr": 0.001},
        {"step": 4, "score": 0.7, "forgetting": 0.03, "forgetting_stderr": 0.002},
    ]
    runs = [{"config": "CCA w/ mask", "seed": 0, "curves": [{"lr": 0.01, "history": history}]}]
    rows = step_choice_rows(runs, bounds=(0.005, 0.01, 0.05))
    assert [(r["rule"], r["step"], r["bound_met"]) for r in rows] == [
        ("paper", 4, None),
        ("<= 0.005", 2, False),
        ("<= 0.01", 2, True),
        ("<= 0.05", 4, True),
    ]
    assert [round(r["cost"], 6) for r in rows] == [0.0, 0.2, 0.2, 0.0]
    table = step_choice_table(rows)
    assert "<= 0.005 (not met)" in table and "+0.0080 ± 0.0010" in table
    assert step_choice_rows([{"config": "Base", "curves": []}]) == []


def test_lora_measures_forgetting_on_the_same_rule(tmp_path):
    from peft_cca.baselines.lora import lora_sft
    from peft_cca.baselines.settings import LoraSettings
    from peft_cca.tasks.problem import Problem

    problems = [Problem(id=f"p{i}", group_id="g", question=f"What is {i} + 2?", answer=str(i + 2)) for i in range(4)]
    choice = StepChoice(forgetting_tokens=200, max_forgetting=0.0)
    settings = LoraSettings(
        lrs=(1e-2,), per_device_batch=2, effective_batch=4, max_steps=2, eval_every=1, step_choice=choice
    )
    result = lora_sft(
        tiny_model("llama"), tiny_tokenizer(), problems, None, settings, evaluate_fn=lambda _m: 0.0, output_dir=tmp_path
    )
    history = result.runs[0].history
    assert history[0]["forgetting"] == 0.0  # LoRA's B starts at zero: the fresh adapter is the base
    saved = json.loads((tmp_path / "lora.json").read_text())
    assert saved["selection"]["max_forgetting"] == 0.0
    # lr 1e-2 moves the model: no trained step stays at zero forgetting unless one rose by nothing
    assert saved["selection"]["bound_met"] == any(e["forgetting"] <= 0.0 for e in history[1:])


def test_a_sweep_keeps_the_state_of_the_run_within_the_bound_over_a_better_scoring_one_outside_it():
    from peft_cca.sweep.runs import add_run

    def run(lr: float, score: float, met: bool) -> RunResult:
        history = [{"step": 0, "score": 0.5, "forgetting": 0.0}, {"step": 10, "score": score, "forgetting": 0.1}]
        state = {"w": torch.full((1,), lr)}
        return RunResult(lr=lr, best_step=10, best_score=score, history=history, losses=[], bound_met=met, state=state)

    runs: list[RunResult] = []
    base = add_run(runs, run(2e-4, 0.7, met=True), None)
    add_run(runs, run(1e-3, 0.8, met=False), base)  # scores higher, but only its least-forgetting fallback
    kept = best_run(runs)
    assert kept.lr == 2e-4 and kept.state is not None  # its weights were not dropped for the higher score
    assert runs[1].state is None


def test_the_shared_sweep_scores_the_base_once_and_its_result_names_the_arm():
    from peft_cca.sweep.runs import SweepResult, sweep_lrs

    starts = []

    def train_at(lr: float, evaluate_at_start: bool) -> RunResult:
        starts.append(evaluate_at_start)
        history = [{"step": 0, "score": 0.25}] if evaluate_at_start else []
        history.append({"step": 10, "score": lr * 100})
        base = 0.25 if evaluate_at_start else None  # as RunResult.from_training reads it
        return RunResult(lr=lr, best_step=10, best_score=lr * 100, history=history, losses=[], base_score=base)

    runs = sweep_lrs([1e-3, 5e-3], train_at, "test")
    assert starts == [True, False]
    assert [r.base_score for r in runs] == [0.25, 0.25] and runs[1].history[0] == {"step": 0, "score": 0.25}
    result = SweepResult("lora", model=torch.nn.Linear(1, 1), best=best_run(runs), runs=runs)
    assert result.best.lr == 5e-3 and result.to_dict()["arm"] == "lora"
