"""`peft-cca evaluate --general offline`: the packaged suite and forgetting land in the eval JSON with n and stderr."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from peft_cca.cli import main
from peft_cca.cli.commands.evaluate import default_general
from peft_cca.evaluation import general_data
from peft_cca.reports import table2


@pytest.fixture
def run_folder(tmp_path):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    run = tmp_path / "run"
    run.mkdir()
    meta = {"model": str(tmp_path / "base"), "task": "rg:chain_sum?size=20&seed=0", "seed": 0, "prompt_style": "chat"}
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def test_the_offline_suite_and_the_cross_entropy_are_recorded_with_n_and_stderr(run_folder, tmp_path):
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run_folder), "--retention-tasks", "--no-kl", "--max-new-tokens", "2"]
    argv += ["--test-limit", "2", "--val-limit", "0", "--general", "offline", "--general-limit", "2"]
    argv += ["--general-tasks", "cca_mmlu_humanities", "--forgetting-tokens", "600", "--out", str(out)]
    assert main(argv) == 0
    general = json.loads(out.read_text())["general"]
    humanities = general["lm_eval"]["cca_mmlu_humanities"]
    assert humanities["n"] == 26 and 0.0 <= humanities["acc"] <= 1.0 and "acc_stderr" in humanities
    ce = general["cross_entropy"]
    assert ce["n_tokens"] >= 600 and ce["n_docs"] >= 2 and len(ce["doc_nll"]) == ce["n_docs"] and ce["stderr"] > 0
    # the same model as base and arm: Table 2 shows no change, and marks nothing
    base, arm = {"config": "Base", "general": general}, {"config": "LoRA", "method": None, "general": general}
    row = table2([base, arm])[0]
    assert row["delta"]["cross-entropy (nats/token)"] == 0.0 and not row["marked"]
    assert row["n"]["cca_mmlu_humanities acc"] == 26


def test_none_skips_the_suite_and_the_forgetting(run_folder, tmp_path):
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run_folder), "--retention-tasks", "--no-kl", "--max-new-tokens", "2"]
    assert main([*argv, "--test-limit", "2", "--val-limit", "0", "--general", "none", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["general"] == {}


def test_the_default_follows_the_environment_then_the_installed_data(monkeypatch):
    monkeypatch.setenv("PEFT_CCA_GENERAL", "hub")
    assert default_general() == "hub"
    monkeypatch.delenv("PEFT_CCA_GENERAL")
    monkeypatch.setenv("PEFT_CCA_BIGBENCH", "/nonexistent")  # BIG-bench's optional files: not needed
    assert default_general() == "offline"  # scripts/setup.sh installs the data
    real = importlib.metadata.distribution

    def distribution(name):
        if name == general_data.WIKIPEDIA.distribution:  # no forgetting corpus: nothing to measure forgetting on
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    assert default_general() == "none"


def test_missing_data_is_one_line_before_the_model_loads(run_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PEFT_CCA_BIGBENCH", str(tmp_path / "no-checkout"))
    argv = ["evaluate", "--run", str(run_folder), "--general", "offline", "--out", str(tmp_path / "e.json")]
    assert main([*argv, "--general-tasks", "cca_truthfulqa_mc1_bigbench"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BIG-bench task file" in err[0] and "git clone" in err[0]
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.json.parts").exists()


def test_the_default_suite_is_the_standard_benchmarks_and_general_limit_reaches_each(run_folder, tmp_path, monkeypatch):
    from peft_cca.evaluation import general_suite
    from peft_cca.evaluation.offline_tasks import STANDARD_TASKS

    calls = []

    def suite(model, tokenizer, tasks, *, limits=None, batch_size=8):
        calls.append((list(tasks), limits))
        return {task: {"acc": 0.5, "acc_stderr": 0.1, "n": 3} for task in tasks}

    monkeypatch.setattr(general_suite, "run_general_suite", suite)
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run_folder), "--retention-tasks", "--no-kl", "--max-new-tokens", "2"]
    argv += ["--test-limit", "2", "--val-limit", "0", "--general", "offline", "--general-limit", "3"]
    assert main([*argv, "--forgetting-tokens", "0", "--out", str(out)]) == 0
    assert calls == [(list(STANDARD_TASKS), dict.fromkeys(STANDARD_TASKS, 3))]
    assert list(json.loads(out.read_text())["general"]["lm_eval"]) == list(STANDARD_TASKS)


def test_standard_tasks_run_through_evaluate_with_the_general_limit(run_folder, tmp_path):
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--run", str(run_folder), "--retention-tasks", "--no-kl", "--max-new-tokens", "2"]
    argv += ["--test-limit", "2", "--val-limit", "0", "--general", "offline", "--general-limit", "2"]
    argv += ["--general-tasks", "cca_arc_easy_val", "cca_lambada_openai_test", "--forgetting-tokens", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    scores = json.loads(out.read_text())["general"]["lm_eval"]
    assert scores["cca_arc_easy_val"]["n"] == 2 and 0.0 <= scores["cca_arc_easy_val"]["acc_norm"] <= 1.0
    assert scores["cca_lambada_openai_test"]["n"] == 2 and scores["cca_lambada_openai_test"]["bits_per_byte"] > 0
