"""--prompt-template, --num-fewshot and --fewshot-seed through the stages: stage 1 records them, every later stage
prompts with them (or with its own flags), a resume with others is refused; and a recorded ``scorer=`` spec is
imported only when the command names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca.evaluation.exact_match as exact_match
import peft_cca.localize.run as localize_run
from peft_cca.baselines.lora import sft_dataset
from peft_cca.cli import main
from peft_cca.cli.demo_plan import DemoSettings, plan
from peft_cca.errors import UsageError
from peft_cca.localize.problems import run_task, stage_problems, stage_prompt_options
from peft_cca.tasks import answer_target, assign_splits, build_prompt, load_problems, prompt_options

TEMPLATE = "Topic {topic}: {question}\nAnswer:"
ROWS = [{"question": f"what is item {i}?", "answer": "abc"[i % 3], "topic": "xy"[i % 2]} for i in range(30)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path | str]:
    """A saved tiny model, a JSONL task of our own and a stage 1 run on it with a template and 2 drawn shots."""
    root = tmp_path_factory.mktemp("prompt-flags")
    model, tokenizer = tiny_model("llama", seed=3), tiny_tokenizer()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    data = root / "items.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return {"root": root, "model": str(root / "model"), "task": f"file:{data}?group=topic&format=string"}


def _spy(monkeypatch, module) -> list[str]:
    """Every prompt text ``module`` encodes, in order."""
    seen: list[str] = []
    original = module.encode_prompt

    def encode(tokenizer, text: str) -> list[int]:
        seen.append(text)
        return original(tokenizer, text)

    monkeypatch.setattr(module, "encode_prompt", encode)
    return seen


def _localize(world, out: Path, *extra: str) -> int:
    argv = ["localize", "--model", world["model"], "--task", world["task"], "--out", str(out), "--prompt-style"]
    argv += ["fewshot", "--max-new-tokens", "3", "--n-samples", "1", "--batch-size", "8", "--device", "cpu", *extra]
    return main(argv)


def _expected_options(world, shots: int = 2, seed: int = 1):
    problems = load_problems(world["task"])
    return problems, prompt_options(
        problems, assign_splits(problems, seed=0), template=TEMPLATE, shots=shots, seed=seed
    )


@pytest.fixture(scope="module")
def run(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "localize"
    flags = ("--prompt-template", TEMPLATE, "--num-fewshot", "2", "--fewshot-seed", "1")
    with pytest.MonkeyPatch.context() as patch:
        seen = _spy(patch, localize_run)
        assert _localize(world, out, *flags) == 0
    problems, options = _expected_options(world)
    tokenizer = tiny_tokenizer()
    assert seen == [build_prompt(tokenizer, p, "fewshot", options=options) for p in problems]
    return out


def test_stage_1_prompts_with_the_template_and_drawn_exemplars_and_records_them(world, run):
    problems, options = _expected_options(world)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["prompt_template"] == TEMPLATE and meta["num_fewshot"] == 2 and meta["fewshot_seed"] == 1
    assert meta["exemplar_ids"] == [e.id for e in options.exemplars] and len(meta["exemplar_ids"]) == 3
    first = options.exemplars_for(problems[0])[0]
    prompt = build_prompt(tiny_tokenizer(), problems[0], "fewshot", options=options)
    # the exemplar's rendered template and its answer sentence, then the problem's own, in lm-eval's fewshot shape
    assert f"Topic {first.fields['topic']}: {first.metadata['question']}\nAnswer: {answer_target(first)}" in prompt
    assert prompt.endswith(f"Topic {problems[0].fields['topic']}: what is item 0?\nAnswer:")
    assert "Q:" not in prompt  # the template replaced the built-in "Q: ...\nA:" block and its GSM8K exemplars


def test_evaluate_prompts_as_stage_1_recorded(world, run, monkeypatch, tmp_path):
    seen = _spy(monkeypatch, exact_match)
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run), "--test-limit", "3", "--val-limit", "0", "--retention-tasks"]
    assert main([*argv, "--no-kl", "--max-new-tokens", "2", "--device", "cpu", "--out", str(out)]) == 0
    _, options = _expected_options(world)
    test = stage_problems(run, "test", limit=3)
    tokenizer = tiny_tokenizer()
    assert sorted(seen) == sorted(build_prompt(tokenizer, p, "fewshot", options=options) for p in test)
    assert json.loads(out.read_text())["prompt"] == options.to_dict()


def test_a_resume_with_another_template_is_refused(world, run, capsys):
    before = (run / "settings.json").read_text()
    code = _localize(world, run, "--prompt-template", "Q {question}", "--num-fewshot", "2", "--fewshot-seed", "1")
    err = capsys.readouterr().err
    assert code == 2 and "prompt_template" in err and "other settings" in err
    code = _localize(world, run, "--prompt-template", TEMPLATE, "--num-fewshot", "1", "--fewshot-seed", "1")
    assert code == 2 and "num_fewshot" in capsys.readouterr().err
    assert (run / "settings.json").read_text() == before


def test_later_stages_default_to_meta_json_and_their_flags_override_it(world, run):
    _, recorded = _expected_options(world)
    assert stage_prompt_options(run) == recorded
    _, fewer = _expected_options(world, shots=1, seed=4)
    assert stage_prompt_options(run, shots=1, seed=4) == fewer
    assert stage_prompt_options(run, template="{question}").template.text == "{question}"


def _captured(monkeypatch, module: str, name: str) -> dict:
    """Replace a stage's training function by one that records the scoring of the settings it was given (stage 1's
    prompt) and stops the command."""
    import importlib

    calls: dict = {}

    def record(*args, **kwargs):
        scoring = next(a for a in args if hasattr(a, "scoring")).scoring
        calls.update(prompt_options=scoring.prompt_options, prompt_style=scoring.prompt_style)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(importlib.import_module(module), name, record)
    return calls


def _with_records(run: Path, tmp_path: Path) -> Path:
    """A copy of the run with one training record (the tiny model may find no pivot), for amplify to load."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = {"split": "train", "prefix_ids": [5, 6, 7], "desired_token_id": 10, "undesired_token_id": 20}
    (copy / "records.jsonl").write_text(json.dumps(record) + "\n")
    return copy


@pytest.mark.parametrize(
    ("command", "module", "name"),
    [("amplify", "peft_cca.amplify.trainer", "amplify"), ("lora", "peft_cca.baselines.lora", "lora_sft")],
)
def test_amplify_and_lora_take_meta_json_defaults(world, run, command, module, name, monkeypatch, tmp_path, capsys):
    folder = _with_records(run, tmp_path)
    calls = _captured(monkeypatch, module, name)
    extra = ["--no-mask", "sites"] if command == "amplify" else []
    assert main([command, "--run", str(folder), *extra, "--device", "cpu", "--out", str(tmp_path / "a")]) == 2
    _, recorded = _expected_options(world)
    assert calls["prompt_options"] == recorded and calls["prompt_style"] == "fewshot"
    assert main([command, "--run", str(folder), *extra, "--num-fewshot", "1", "--out", str(tmp_path / "b")]) == 2
    assert calls["prompt_options"].shots == 1 and calls["prompt_options"].template.text == TEMPLATE


def test_lora_trains_on_the_template_prompts_and_answer_targets(world):
    problems, options = _expected_options(world)
    rows = sft_dataset(problems[:2], tiny_tokenizer(), "fewshot", options)
    assert rows[0]["prompt"] == build_prompt(tiny_tokenizer(), problems[0], "fewshot", options=options)
    assert rows[0]["completion"] == answer_target(problems[0]) == "The answer is a."


@pytest.fixture
def scorer_run(world, tmp_path) -> tuple[Path, str, Path]:
    """A run folder whose recorded spec names a scorer module, which leaves a mark when it is imported."""
    mark = tmp_path / "imported"
    module = tmp_path / "my_scorer.py"
    module.write_text(f"open({str(mark)!r}, 'w').close()\n\ndef judge(completion, answer, row):\n    return True\n")
    spec = world["task"].replace("format=string", f"scorer={module}:judge")
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"model": world["model"], "task": spec, "seed": 0}))
    return run, spec, mark


def test_a_recorded_scorer_is_refused_unless_the_command_names_the_spec(scorer_run, capsys):
    run, spec, mark = scorer_run
    code = main(["evaluate", "--run", str(run), "--retention-tasks", "--no-kl", "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "scorer=" in err and f"--task '{spec}'" in err
    assert not mark.exists()  # refused before anything imported the module
    with pytest.raises(UsageError, match="scorer="):
        stage_problems(run, "test")
    assert run_task(run, task=spec).own  # the same spec, named: the run's own problems
    assert len(stage_problems(run, "test", task=spec)) > 0 and mark.exists()


def test_the_demo_names_a_scorer_spec_to_every_later_stage_and_gives_the_prompt_to_stage_1(tmp_path, scorer_run):
    _, spec, _ = scorer_run
    prompt = ("--prompt-template", TEMPLATE, "--num-fewshot", "2")
    stages = plan(DemoSettings(out=tmp_path, task=spec, preset="quick", prompt=prompt))
    for name, argv in stages:  # circuit and compare read no problems
        if argv[0] in ("localize", "amplify", "lora", "evaluate"):
            assert argv[argv.index("--task") + 1] == spec, name
        assert (TEMPLATE in argv) == (argv[0] == "localize"), name
    plain = plan(DemoSettings(out=tmp_path, task="rg:chain_sum?size=10", preset="quick"))
    assert [argv.count("--task") for _, argv in plain] == [1] + [0] * (len(plain) - 1)
