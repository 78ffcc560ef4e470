"""The stage 1 pipeline on a tiny random model: dataset schema, summary, and exact resume after a kill."""

import json

import pytest
from tiny_models import VOCAB, tiny_model
from tiny_tokenizer import CHARS, tiny_tokenizer

from peft_cca.localize import records as records_module
from peft_cca.localize.dataset import load_dataset, load_error_localization
from peft_cca.localize.folder import FORMAT_VERSION, read_meta
from peft_cca.localize.records import DatasetError, load_records
from peft_cca.localize.run import LocalizeConfig, localize
from peft_cca.tasks.problem import Problem

CONFIG = LocalizeConfig(
    task="test",
    max_new_tokens=12,
    n_samples=6,
    batch_size=3,
    splits=("train", "validation", "test"),
    max_group_accuracy=1.01,
)


def _problems() -> list[Problem]:
    return [
        Problem(
            id=f"p{i}",
            group_id=f"g{i % 2}",
            question=f"question {i}?",
            answer="0",
            scorer=lambda text: sum(map(ord, text)) % 2 == 0,
        )
        for i in range(7)
    ]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=3), tiny_tokenizer()


@pytest.fixture(scope="module")
def full_run(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    summary = localize(*lm, _problems(), CONFIG, out, model_name="tiny")
    return out, summary


def test_dataset_schema_and_summary(full_run, lm):
    out, summary = full_run
    tokenizer = lm[1]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert records and summary["records"] == len(records) == summary["pivots"]
    assert summary["problems"] == 7 and set(summary["accuracy_by_group"]) == {"g0", "g1"}
    assert summary["counterfactuals_found"] + summary["no_counterfactual"] == summary["localized_problems"] == 7
    assert summary["tokens_processed"]["total"] > 0
    for record in records:
        assert tokenizer.decode(record["prefix_ids"]) == record["prefix_text"]
        assert record["desired_token_id"] != record["undesired_token_id"]
        assert record["desired_token"] == tokenizer.decode([record["desired_token_id"]])
        assert record["method"] == "branching" and record["correct_trace"] in ("greedy", "sample")
        assert record["split"] in ("train", "validation", "test")
    assert len(load_dataset(out)) == len(records)
    meta = read_meta(out)
    assert meta.model == "tiny" and meta.tokenizer["vocab_size"] == len(tokenizer)
    assert meta.format_version == FORMAT_VERSION and meta.split_seed == CONFIG.seed


def test_a_real_run_records_the_vocabulary_that_a_doctored_one_fails(full_run, lm):
    """Stage 1 writes the vocabulary's sha256 and stage 2's loader compares it: a tokenizer of the same size whose
    ids mean other characters is refused, where the size check alone would pass it."""
    out, _ = full_run
    assert len(read_meta(out).tokenizer["sha256"]) == 64
    assert load_records(out, vocab_size=VOCAB, tokenizer=lm[1])
    doctored = tiny_tokenizer(CHARS[1] + CHARS[0] + CHARS[2:])  # "0" and "1" trade ids
    assert len(doctored) == len(lm[1])
    with pytest.raises(DatasetError, match="vocabulary differs"):
        load_records(out, vocab_size=VOCAB, tokenizer=doctored)


def test_zero_records_say_why_with_counts(lm, tmp_path):
    """Every group above the accuracy cap: localize writes no record, and the summary, the Python loader and the
    records reader all name the reason with its count."""
    from dataclasses import replace

    summary = localize(*lm, _problems(), replace(CONFIG, max_group_accuracy=-1.0), tmp_path, model_name="tiny")
    assert summary["records"] == 0 and summary["kept_groups"] == []
    with pytest.raises(DatasetError, match=r"2 of 2 groups above --max-group-accuracy -1"):
        load_records(tmp_path)
    with pytest.raises(Exception, match=r"2 of 2 groups above --max-group-accuracy -1"):
        load_error_localization(tmp_path)


def test_killed_run_resumes_to_the_same_dataset(full_run, lm, tmp_path, monkeypatch):
    out, summary = full_run
    original = records_module.DatasetWriter.finish
    calls = {"n": 0}

    def dying_finish(self, problem_id, status, record):
        if calls["n"] == 3:  # killed after writing its record, before its progress line
            if record is not None:
                self._append("records.jsonl", record)
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, problem_id, status, record)

    monkeypatch.setattr(records_module.DatasetWriter, "finish", dying_finish)
    with pytest.raises(KeyboardInterrupt):
        localize(*lm, _problems(), CONFIG, tmp_path, model_name="tiny")
    with (tmp_path / "records.jsonl").open("a") as handle:
        handle.write('{"problem_id": "torn')  # a line cut by the kill
    monkeypatch.setattr(records_module.DatasetWriter, "finish", original)
    resumed = localize(*lm, _problems(), CONFIG, tmp_path, model_name="tiny")
    assert (tmp_path / "records.jsonl").read_text() == (out / "records.jsonl").read_text()
    assert resumed == summary


def test_prefix_method_runs(lm, tmp_path):
    config = LocalizeConfig(**{**CONFIG.__dict__, "method": "prefix"})
    summary = localize(*lm, _problems()[:3], config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert all(r["method"] == "prefix" for r in records) and summary["records"] == len(records)


def test_the_pivot_bar_moves_inside_a_chunk_in_tokens(lm, tmp_path, capsys, monkeypatch):
    """One chunk holds every problem here (batch 8 > 4 problems): the bar still reports tokens while it runs."""
    from dataclasses import replace

    from peft_cca.localize import run as run_module

    ticks = iter(range(0, 10_000, 5))  # every reading of the clock is 5 s later: every call redraws
    monkeypatch.setattr(run_module.time, "monotonic", lambda: float(next(ticks)))
    localize(*lm, _problems()[:4], replace(CONFIG, batch_size=8), tmp_path, model_name="tiny")
    frames = capsys.readouterr().err.replace("\n", "\r").split("\r")
    assert any("pivots (branching)" in f and "0/4" in f and " tokens]" in f for f in frames)  # before any finished
