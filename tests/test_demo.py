"""The demo pipeline at a tiny scale on the real offline model: every stage runs and leaves its artifacts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from peft_cca.cli import main as peft_cca
from peft_cca.cli.demo_cost import estimate_cost
from peft_cca.cli.demo_plan import DemoSettings, plan
from peft_cca.cli.demo_presets import PRESETS
from peft_cca.cli.demo_runner import run_demo
from peft_cca.errors import CCAError, UsageError
from peft_cca.tasks.protocol import PAPER

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
    with pytest.raises(CCAError, match="stage localize-seed0 failed"):
        run_demo(settings, runner=lambda argv: 1, echo=lambda _: None)
    assert not (tmp_path / "stages" / "localize-seed0.json").exists()


def test_paper_preset_follows_the_authors_protocol(tmp_path):
    settings = DemoSettings(out=tmp_path, preset="paper", model="google/gemma-2-2b-it")
    stages = dict(plan(settings))
    localize, circuit = stages["localize-seed0"], stages["circuit-seed0"]
    assert localize[localize.index("--task") + 1] == PAPER.task
    assert localize[localize.index("--max-new-tokens") + 1] == "2500"
    for name in ("evaluate-base-seed0", "cca-seed0", "cca-nomask-seed0", "lora-seed0"):
        argv = stages[name]
        assert argv[argv.index("--max-new-tokens") + 1] == "1500"
    assert circuit[circuit.index("--decay-every") + 1 :][:3] == ["5", "--decay-gamma", "0.9"]
    assert "--decay-every" not in dict(plan(DemoSettings(out=tmp_path, preset="quick")))["circuit-seed0"]
    assert sum(PAPER.split) * 100 == PRESETS["paper"].problems  # 100 templates x 50 instances


def test_the_plan_and_its_cost_are_printed_before_any_stage(tmp_path):
    lines: list[str] = []
    settings = DemoSettings(out=tmp_path, preset="paper", model="google/gemma-2-2b-it")
    with pytest.raises(CCAError):
        run_demo(settings, runner=lambda argv: 1, echo=lines.append)
    first_stage = next(i for i, line in enumerate(lines) if line.startswith("[1/"))
    head = "\n".join(lines[:first_stage])
    assert "seeds 0,1,2" in head and "2500 new tokens" in head and "StepLR(5, 0.9)" in head
    assert "device-hours" in head and "assumed" in head
    costs = {c.stage: c for c in estimate_cost(settings)}
    assert set(costs) == {"localize", "circuit", "amplify", "lora", "evaluate"}
    # a longer trace never costs less
    longest = {c.stage: c for c in estimate_cost(settings, trace=2500)}
    assert all(longest[s].hours() >= costs[s].hours() > 0 for s in costs)


def test_cost_estimate_counts_tokens_by_hand(tmp_path):
    settings = DemoSettings(out=tmp_path, preset="quick", skip=("cca-nomask",))
    costs = {c.stage: c for c in estimate_cost(settings)}
    # 80 problems: 42 train, 6 validation, 32 test; one lambda, so only train is localized; chat prompts
    assert costs["localize"].decode_tokens == 42 * 32 * (1 + 3 + 4)
    # one arm x 1 lr x 10 steps over 42 records of an 80-token prompt and half a 32-token trace
    assert costs["amplify"].train_tokens == 1 * 1 * 10 * 42 * (80 + 16)
    # base, cca and lora on 32 test problems and 8 problems of 4 retention tasks
    assert costs["evaluate"].decode_tokens == 3 * (32 + 4 * 8) * 32


def _finish(settings: DemoSettings) -> list[list[str]]:
    calls: list[list[str]] = []
    run_demo(settings, runner=lambda argv: calls.append(argv) or 0, echo=lambda _: None)
    return calls


def test_a_resume_with_other_settings_is_refused_naming_them(tmp_path):
    _finish(DemoSettings(out=tmp_path, preset="quick"))
    before = (tmp_path / "demo.json").read_text()
    changed = DemoSettings(out=tmp_path, preset="quick", overrides={"steps": 20, "lrs": (0.5,)})
    with pytest.raises(UsageError, match=r"counts .*--overwrite") as refused:
        run_demo(changed, runner=lambda argv: 0, echo=lambda _: None)
    assert '"steps": 20' in str(refused.value) and '"lrs": [0.5]' in str(refused.value)
    assert (tmp_path / "demo.json").read_text() == before  # the old run's record is left as it was


def test_overwrite_starts_afresh(tmp_path):
    _finish(DemoSettings(out=tmp_path, preset="quick"))
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "stale.txt").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    changed = DemoSettings(out=tmp_path, preset="quick", overrides={"steps": 20})
    calls: list[list[str]] = []
    run_demo(changed, runner=lambda argv: calls.append(argv) or 0, echo=lambda _: None, overwrite=True)
    assert len(calls) == len(plan(changed))  # nothing reported as done earlier
    assert not (tmp_path / "seed0" / "stale.txt").exists() and (tmp_path / "notes.txt").exists()
    assert json.loads((tmp_path / "demo.json").read_text())["counts"]["steps"] == 20
    assert json.loads((tmp_path / "settings.json").read_text())["counts"]["steps"] == 20


def test_a_demo_folder_from_before_settings_json_is_checked_against_its_demo_json(tmp_path):
    settings = DemoSettings(out=tmp_path, preset="quick")
    _finish(settings)
    (tmp_path / "settings.json").unlink()
    old = json.loads((tmp_path / "demo.json").read_text())
    for key in ("eval_max_new_tokens", "dcm_decay_every", "dcm_decay_gamma"):  # counts it did not have yet
        del old["counts"][key]
    (tmp_path / "demo.json").write_text(json.dumps(old))
    assert _finish(settings) == []  # the same settings: every stage done earlier
    (tmp_path / "settings.json").unlink()
    with pytest.raises(UsageError, match="steps"):
        run_demo(replace(settings, overrides={"steps": 20}), runner=lambda argv: 0, echo=lambda _: None)


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


@pytest.mark.parametrize(("preset", "kind", "folder"), [("paper", "all", "model"), ("quick", "sites", "adapter")])
def test_the_paper_preset_runs_the_authors_ablation_and_evaluates_its_model(tmp_path, preset, kind, folder):
    stages = dict(plan(DemoSettings(out=tmp_path, preset=preset)))
    trained = stages["cca-nomask-seed0"]
    assert trained[trained.index("--no-mask") + 1] == kind
    evaluated = stages["evaluate-cca-nomask-seed0"]
    assert evaluated[evaluated.index("--adapter") + 1].endswith(f"cca-nomask/{folder}")


def test_training_measures_forgetting_per_step_with_the_general_suite_and_takes_a_bound(tmp_path):
    quiet = dict(plan(DemoSettings(out=tmp_path, preset="quick")))
    assert "--forgetting-tokens" not in quiet["cca-seed0"] and "--max-forgetting" not in quiet["lora-seed0"]
    measured = dict(plan(DemoSettings(out=tmp_path, preset="quick", general="offline", max_forgetting=0.01)))
    for arm in ("cca-seed0", "cca-nomask-seed0", "lora-seed0"):
        argv = measured[arm]
        assert argv[argv.index("--forgetting-tokens") + 1] == "1000"  # the quick preset's corpus size
        assert argv[argv.index("--max-forgetting") + 1] == "0.01"
    assert "max_forgetting" not in DemoSettings(out=tmp_path).recorded()  # older folders resume
