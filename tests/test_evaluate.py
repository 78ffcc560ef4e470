"""Evaluation on tiny random models: exact match aggregation, KL drift, retention, lm-eval on a local task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca  # noqa: F401 - registers the "cca" method
from peft_cca import CCAConfig, Circuit, describe
from peft_cca.errors import UsageError
from peft_cca.evaluation.drift import kl_drift
from peft_cca.evaluation.exact_match import evaluate_exact_match
from peft_cca.evaluation.lm_eval_bridge import lm_eval_bridge
from peft_cca.evaluation.retention import retention
from peft_cca.tasks.problem import Problem

ROOT = Path(__file__).resolve().parents[1]
LOCAL_TASKS = ROOT / "tests" / "fixtures" / "lm_eval_local"


def perturbed_cca(seed: int = 0, scale: float = 0.5, dtype: torch.dtype = torch.float32):
    model = tiny_model("llama", dtype=dtype)
    circuit = Circuit(describe(model).shape, {0: {"q": [0, 2]}, 1: {"mlp": list(range(10))}})
    peft_model = get_peft_model(model, CCAConfig(circuit=circuit))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "cca_delta" in name:
                param.copy_(scale * torch.randn(param.shape, generator=generator))
    return peft_model.eval()


def test_exact_match_is_macro_over_groups_and_uses_the_problem_scorer():
    tokenizer = tiny_tokenizer()
    seen = []

    def right(text: str) -> bool:
        seen.append(text)
        return True

    problems = [Problem(id="a0", group_id="a", question="1+1?", answer="2", scorer=right)]
    problems += [
        Problem(id=f"b{i}", group_id="b", question=f"{i}?", answer="x", scorer=lambda _: False) for i in range(3)
    ]
    result = evaluate_exact_match(
        tiny_model("llama"), tokenizer, problems, max_new_tokens=3, batch_size=2, return_completions=True
    )
    assert result["groups"] == {"a": {"accuracy": 1.0, "n": 1}, "b": {"accuracy": 0.0, "n": 3}}
    assert result["macro"] == pytest.approx(0.5)
    assert result["micro"] == pytest.approx(0.25)
    assert len(seen) == 1 and [c["correct"] for c in result["completions"]] == [True, False, False, False]


def test_exact_match_is_the_same_in_any_batch_size():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    problems = [Problem(id=f"p{i}", group_id="g", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(5)]
    texts = [
        [
            c["completion"]
            for c in evaluate_exact_match(
                model, tokenizer, problems, max_new_tokens=6, batch_size=b, return_completions=True
            )["completions"]
        ]
        for b in (1, 5)
    ]
    assert texts[0] == texts[1]


def test_kl_drift_is_zero_for_the_base_and_positive_after_an_update():
    tokenizer = tiny_tokenizer()
    texts = ["The cat sat on the mat.", "Rivers flow to the sea, slowly."]
    untouched = perturbed_cca(scale=0.0)
    assert kl_drift(untouched, tokenizer, texts) == pytest.approx(0.0, abs=1e-7)
    updated = perturbed_cca(scale=0.5)
    drift = kl_drift(updated, tokenizer, texts)
    assert drift > 1e-4
    assert kl_drift(updated, tokenizer, texts, base_model=tiny_model("llama")) == pytest.approx(drift, rel=1e-4)


def test_retention_scores_each_non_target_task():
    result = retention(
        tiny_model("llama"), tiny_tokenizer(), ("letter_counting", "spell_backward"), size=2, max_new_tokens=2
    )
    assert set(result["groups"]) == {"letter_counting", "spell_backward"}
    assert result["n"] == 4


def _own_multiple_choice_accuracy(model, tokenizer) -> float:
    """lm-eval's multiple-choice rule computed by hand: the choice with the highest summed log-probability."""
    docs = [json.loads(line) for line in (LOCAL_TASKS / "local_qa.jsonl").read_text().splitlines()]
    right = 0
    for doc in docs:
        context = tokenizer(f"Q: {doc['question']}\nA:", add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            continuation = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
            positions = torch.arange(len(context) - 1, ids.shape[1] - 1)
            scores.append(float(logprobs[positions, torch.tensor(continuation)].sum()))
        right += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    return right / len(docs)


def test_lm_eval_runs_a_local_task_on_a_peft_model(monkeypatch):
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repository root
    model, tokenizer = perturbed_cca(scale=1.0), tiny_tokenizer()
    result = lm_eval_bridge(model, tokenizer, ["peft_cca_local_qa"], include_path=str(LOCAL_TASKS), batch_size=4)
    assert result["peft_cca_local_qa"]["acc"] == pytest.approx(_own_multiple_choice_accuracy(model, tokenizer))


def test_adapter_summary_names_each_configuration(tmp_path):
    from peft import LoraConfig, PeftModel

    from peft_cca.evaluation.model_eval import adapter_summary

    assert adapter_summary(tiny_model("llama"))["config"] == "Base"
    lora = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    assert adapter_summary(lora)["config"] == "LoRA"
    base = tiny_model("llama")
    full = get_peft_model(base, CCAConfig(circuit=Circuit.full(base)))
    assert adapter_summary(full)["config"] == "CCA w/o mask"
    base = tiny_model("llama")
    masked = get_peft_model(base, CCAConfig(circuit=Circuit(describe(base).shape, {0: {"q": [1]}})))
    masked.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)  # peft_type is the enum member here
    summary = adapter_summary(reloaded)
    assert summary["config"] == "CCA w/ mask" and summary["circuit_counts"]["q"] == 1


def test_provenance_gives_the_localization_method_to_cca_runs_only(tmp_path):
    from peft_cca.cli.commands.evaluate import _provenance

    run = tmp_path / "localize"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"model": "m", "config": {"method": "branching"}}))
    (run / "records.jsonl").write_text('{"split": "train"}\n{"split": "validation"}\n{"split": "train"}\n')
    history = {"runs": [{"lr": 0.01, "history": [{"step": 0, "score": 0.5}]}]}
    for name, summary in (("cca", "amplify.json"), ("lora", "lora.json")):
        (tmp_path / name / "adapter").mkdir(parents=True)
        (tmp_path / name / summary).write_text(json.dumps(history))
    cca = _provenance(run, tmp_path / "cca" / "adapter")
    assert cca["method"] == "branching" and cca["dataset_size"] == 2 and cca["curves"][0]["lr"] == 0.01
    assert _provenance(run, tmp_path / "lora" / "adapter")["method"] is None
    assert _provenance(run, None)["method"] is None


def _problems(count: int = 5) -> list[Problem]:
    return [Problem(id=f"p{i}", group_id="g", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(count)]


def test_a_cached_run_resumes_from_its_finished_batches_without_generating_them_again(tmp_path, monkeypatch):
    from peft_cca.evaluation import exact_match
    from peft_cca.evaluation.exact_match import prepare_cache

    model, tokenizer, problems = tiny_model("llama"), tiny_tokenizer(), _problems()
    cache = prepare_cache(tmp_path / "parts", {"model": "tiny"})
    first = evaluate_exact_match(model, tokenizer, problems, max_new_tokens=4, batch_size=2, cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == ["settings.json", *(f"unit-0000{i}.json" for i in range(3))]
    (cache / "unit-00002.json").unlink()  # as if interrupted before the last batch
    generated = []
    plain = exact_match.generate
    monkeypatch.setattr(
        exact_match, "generate", lambda m, t, inputs, **kw: generated.append(len(inputs)) or plain(m, t, inputs, **kw)
    )
    again = evaluate_exact_match(model, tokenizer, problems, max_new_tokens=4, batch_size=2, cache=cache)
    assert again == first and generated == [1]
    assert again == evaluate_exact_match(model, tokenizer, problems, max_new_tokens=4, batch_size=2)
    with pytest.raises(UsageError, match=r"model .*tiny.* \(recorded\) vs .*other"):
        prepare_cache(tmp_path / "parts", {"model": "other"})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bases_evaluate_with_fp32_deltas(dtype):
    from peft_cca.evaluation.model_eval import evaluate_model
    from peft_cca.evaluation.settings import EvaluationSettings, Scoring

    fp32, half = perturbed_cca(scale=0.05), perturbed_cca(scale=0.05, dtype=dtype)
    assert {p.dtype for n, p in half.named_parameters() if "cca_delta" in n} == {torch.float32}
    assert {p.dtype for n, p in half.named_parameters() if "cca_delta" not in n} == {dtype}
    ids = torch.tensor([[5, 9, 17, 33, 40]])
    with torch.no_grad():
        torch.testing.assert_close(half(input_ids=ids).logits.float(), fp32(input_ids=ids).logits, atol=0.05, rtol=0)
    tokenizer, problems = tiny_tokenizer(), _problems(4)
    settings = EvaluationSettings(scoring=Scoring(max_new_tokens=4, batch_size=2), retention_tasks=())
    result = evaluate_model(half, tokenizer, problems, settings)
    assert 0.0 <= result["test"]["macro"] <= 1.0 and result["test"]["n"] == 4
    assert 0.0 < result["general"]["kl"] < 0.1


def test_training_covers_the_kept_templates_while_validation_and_test_cover_every_template(tmp_path):
    from peft_cca.localize.problems import stage_problems

    task = f"template:{ROOT / 'tests' / 'fixtures' / 'templates_sample.json'}?size=10&seed=3"
    run = tmp_path / "localize"
    run.mkdir()
    meta = {"task": task, "seed": 1, "split_seed": 1, "groups": ["template/beads"], "config": {"limit": None}}
    (run / "meta.json").write_text(json.dumps(meta))
    groups = {split: {p.group_id for p in stage_problems(run, split)} for split in ("train", "validation", "test")}
    every = {"template/beads", "template/shelves"}
    assert groups == {"train": {"template/beads"}, "validation": every, "test": every}
    assert [len(stage_problems(run, split)) for split in ("train", "validation", "test")] == [5, 2, 8]
    (run / "meta.json").write_text(json.dumps({**meta, "groups": []}))  # nothing under the threshold: no training
    assert stage_problems(run, "train") == [] and len(stage_problems(run, "test")) == 8


def test_a_damaged_meta_json_is_one_line_naming_the_file_and_line(tmp_path):
    from peft_cca.localize.problems import stage_problems

    (tmp_path / "meta.json").write_text('{"task": "rg:chain_sum",\n"seed": }')
    with pytest.raises(UsageError, match=r"meta\.json: line 2: not valid JSON"):
        stage_problems(tmp_path, "test")


def test_long_evaluations_show_progress_in_problems_and_tokens_and_training_readings_stay_quiet(capsys):
    """evaluate's exact match (test, retention) counts problems and its cross-entropy tokens; the same calls
    inside training (no ``progress``) draw nothing."""
    from peft_cca.evaluation.forgetting import cross_entropy

    tokenizer, model = tiny_tokenizer(), tiny_model("llama")
    problems = [Problem(id=f"p{i}", group_id="g", question=f"{i}?", answer="1") for i in range(5)]
    evaluate_exact_match(model, tokenizer, problems, max_new_tokens=2, batch_size=2)
    cross_entropy(model, tokenizer, max_tokens=200, max_length=64)
    assert capsys.readouterr().err == ""
    evaluate_exact_match(model, tokenizer, problems, max_new_tokens=2, batch_size=2, progress="test exact match")
    ce = cross_entropy(model, tokenizer, max_tokens=200, max_length=64, progress="cross-entropy")
    err = capsys.readouterr().err
    assert "test exact match: 100%" in err and "5/5 [" in err and "problem" in err
    assert "cross-entropy: 100%" in err and "token" in err and f"{ce.n_tokens + ce.n_docs}/" in err
