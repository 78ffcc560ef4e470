"""The public stage functions on a tiny random model: localize_errors returns what load_error_localization reads
back, find_circuit takes that DatasetDict and refuses an empty pick in one line, and the CLI warns instead."""

from __future__ import annotations

import json

import pytest
from test_localize_run import CONFIG, _problems
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca
import peft_cca.runtime.loading
from peft_cca.cli import main
from peft_cca.dcm.find import empty_circuit_advice
from peft_cca.errors import UsageError

DCM = peft_cca.DCMConfig(epochs=3, lr=0.2, batch_size=3)


@pytest.fixture(scope="module")
def localized(tmp_path_factory):
    model, tokenizer = tiny_model("llama", seed=3), tiny_tokenizer()
    out = tmp_path_factory.mktemp("localize")
    data = peft_cca.localize_errors(model, tokenizer, _problems(), out, CONFIG, model_name="tiny")
    return model, tokenizer, out, data


def test_localize_errors_returns_the_folder_as_a_dataset_dict(localized):
    _, tokenizer, out, data = localized
    again = peft_cca.load_error_localization(out)
    assert set(data) == set(again) and set(data) <= {"train", "validation", "test"} and "train" in data
    for split in data:
        assert data[split].to_list() == again[split].to_list()
        for row in data[split]:
            assert row["prompt"] == tokenizer.decode(row["prefix_ids"])
            assert row["desired"] == tokenizer.decode([row["desired_token_id"]])
            assert row["undesired"] == tokenizer.decode([row["undesired_token_id"]])
    meta = json.loads(data["train"].info.description)
    assert meta["model"] == "tiny" and meta["tokenizer"]["vocab_size"] == len(tokenizer)


def test_load_error_localization_says_what_is_missing(tmp_path):
    with pytest.raises(UsageError, match="holds no Error-Localization run"):
        peft_cca.load_error_localization(tmp_path)
    (tmp_path / "records.jsonl").write_text("")
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(UsageError, match=r"holds no records: .*no summary\.json yet"):
        peft_cca.load_error_localization(tmp_path)


def test_find_circuit_takes_the_dataset_dict(localized, tmp_path):
    model, tokenizer, _, data = localized
    circuit = peft_cca.find_circuit(model, data, lambdas=[0.0], config=DCM, tokenizer=tokenizer, out_dir=tmp_path)
    assert len(circuit) > 0
    assert peft_cca.Circuit.load(tmp_path / "circuit.json").to_dict() == circuit.to_dict()


def test_an_empty_pick_is_refused_by_find_circuit_and_written_by_search(localized, tmp_path):
    model, tokenizer, _, data = localized
    with pytest.raises(UsageError, match=r"selected no component at lambda 1000 after 3 epochs: lower lambda"):
        peft_cca.find_circuit(model, data, lambdas=[1000.0], config=DCM, tokenizer=tokenizer)
    search = peft_cca.search_circuits(model, data, [1000.0], DCM, tokenizer=tokenizer, out_dir=tmp_path)
    assert len(search.circuit) == 0 and (tmp_path / "sweep.json").exists()
    assert "--lambda 1e-3,1e-4" in empty_circuit_advice(search)
    some = peft_cca.search_circuits(model, data, [0.0], DCM, tokenizer=tokenizer)
    assert empty_circuit_advice(some) is None


def test_circuit_command_refuses_an_empty_pick_in_one_line(localized, tmp_path, monkeypatch, capsys):
    """Exit 2 and one line naming what to change; no circuit.json, so amplify says stage 2 has none to give."""
    model, tokenizer, out, _ = localized
    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", lambda name, *a, **kw: (model, tokenizer))
    argv = ["circuit", "--data", str(out), "--model", "tiny", "--lambda", "1000", "--epochs", "3", "--lr", "0.2"]
    assert main([*argv, "--batch-size", "3", "--out", str(tmp_path / "circuit")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # tqdm's bars aside
    assert len(errors) == 1 and "selected no component" in errors[0] and "lower lambda" in errors[0]
    assert (tmp_path / "circuit" / "sweep.json").exists() and not (tmp_path / "circuit" / "circuit.json").exists()
