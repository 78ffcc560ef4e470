"""The demo pipeline at a tiny scale on the real offline model: every stage runs and leaves its artifacts."""

from __future__ import annotations

import json

import pytest

from peft_cca.cli import main as peft_cca
from peft_cca.demo import PRESETS, DemoSettings, plan, run_demo

TINY = dict(
    problems=24,
    n_samples=4,
    max_new_tokens=32,
    lambdas=(1e-2,),
    dcm_epochs=6,
    dcm_lr=0.2,
    lrs=(1e-3,),
    steps=2,
    seeds=(0,),
    val_limit=3,
    test_limit=4,
    retention_size=2,
    lora_lrs=(2e-4,),
    lora_epochs=1,
)


def test_plan_covers_every_stage_for_every_seed(tmp_path):
    settings = DemoSettings(out=tmp_path, preset="quick", overrides={"seeds": (0, 1)})
    stages = plan(settings)
    names = [name for name, _ in stages]
    for seed in (0, 1):
        # each seed is a whole replicate: its own split and pivots, circuit, updates and evaluations
        expected = [
            "localize",
            "circuit",
            "evaluate-base",
            "cca",
            "evaluate-cca",
            "cca-nomask",
            "evaluate-cca-nomask",
            "lora",
            "evaluate-lora",
        ]
        assert [n for n in names if n.endswith(f"-seed{seed}")] == [f"{n}-seed{seed}" for n in expected]
        localize = dict(stages)[f"localize-seed{seed}"]
        assert localize[localize.index("--seed") + 1] == str(seed)
    assert names[-1] == "compare"
    assert settings.counts().seeds == (0, 1)
    assert settings.counts().steps == PRESETS["quick"].steps


def test_count_flags_reach_the_stage_commands(tmp_path):
    overrides = {"max_fraction": 0.05, "lora_lrs": (1e-3, 2e-4), "lora_epochs": 7, "lambdas": (1e-2, 3e-2)}
    stages = dict(plan(DemoSettings(out=tmp_path, overrides=overrides)))
    circuit, lora = stages["circuit-seed0"], stages["lora-seed0"]
    assert circuit[circuit.index("--max-fraction") + 1] == "0.05"
    assert circuit[circuit.index("--lambda") + 1] == "0.01,0.03"
    assert lora[lora.index("--lr") + 1 : lora.index("--lr") + 3] == ["0.001", "0.0002"]
    assert lora[lora.index("--epochs") + 1] == "7"
    # several lambdas: stage 1 also localizes the validation split, which the sweep may score on
    localize = stages["localize-seed0"]
    assert localize[localize.index("--splits") + 1 : localize.index("--splits") + 3] == ["train", "validation"]


def test_skipped_arms_leave_out_their_training_and_evaluation(tmp_path):
    names = [name for name, _ in plan(DemoSettings(out=tmp_path, preset="quick", skip=("cca-nomask",)))]
    assert "cca-nomask-seed0" not in names and "evaluate-cca-nomask-seed0" not in names
    assert {"cca-seed0", "evaluate-cca-seed0", "lora-seed0", "evaluate-lora-seed0", "compare"} <= set(names)


def test_finished_stages_are_skipped_on_a_second_run(tmp_path):
    calls: list[list[str]] = []
    settings = DemoSettings(out=tmp_path, preset="quick")
    run_demo(settings, runner=lambda argv: calls.append(argv) or 0, echo=lambda _: None)
    first = len(calls)
    assert first == len(plan(settings))
    run_demo(settings, runner=lambda argv: calls.append(argv) or 0, echo=lambda _: None)
    assert len(calls) == first


def test_a_failing_stage_stops_the_demo_and_is_retried_next_time(tmp_path):
    settings = DemoSettings(out=tmp_path, preset="quick")
    with pytest.raises(RuntimeError, match="stage localize-seed0 failed"):
        run_demo(settings, runner=lambda argv: 1, echo=lambda _: None)
    assert not (tmp_path / "stages" / "localize-seed0.json").exists()


@pytest.mark.integration
def test_tiny_end_to_end_run_on_smollm2(tmp_path):
    settings = DemoSettings(out=tmp_path, method="prefix", retention_tasks=("letter_counting",), overrides=TINY)
    report = run_demo(settings, runner=peft_cca, echo=lambda _: None)
    run = tmp_path / "seed0"
    records = (run / "localize" / "records.jsonl").read_text().splitlines()
    assert records and all(
        {"prefix_ids", "desired_token_id", "undesired_token_id"} <= json.loads(r).keys() for r in records
    )
    circuit = json.loads((run / "circuit" / "circuit.json").read_text())
    assert circuit["format"] == "peft-cca/circuit@1"
    for name in ("cca", "cca-nomask", "lora"):
        assert (run / name / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    for name in ("base", "cca", "cca-nomask", "lora"):
        result = json.loads((tmp_path / "eval" / f"{name}-seed0.json").read_text())
        assert 0.0 <= result["test"]["macro"] <= 1.0
    table = (report / "report.md").read_text()
    for row in ("Base", "CCA w/ mask", "CCA w/o mask", "LoRA"):
        assert row in table
    assert json.loads((report / "report.json").read_text())
    assert list(report.glob("*.png"))
