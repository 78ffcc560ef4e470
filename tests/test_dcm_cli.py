"""`peft-cca circuit` end to end on a tiny model: files written, help complete."""

from __future__ import annotations

import json

import pytest
from test_dcm_data import MINE
from test_dcm_paths import random_records, tiny_model

import peft_cca.models
from peft_cca.circuit import Circuit
from peft_cca.cli import main
from peft_cca.dcm.data import tokenizer_fingerprint


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["circuit", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--data",
        "--model",
        "--lambda",
        "--form",
        "--epochs",
        "--batch-size",
        "--lr",
        "--path",
        "--cache-budget-mb",
        "--overflow",
        "--resume",
        "--out",
    ):
        assert option in text


def test_circuit_command_writes_outputs(tmp_path, monkeypatch, capsys):
    model = tiny_model("llama")
    monkeypatch.setattr(peft_cca.models, "load_model", lambda name, **kw: (model, MINE))
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {
            "prefix_ids": list(r.prefix_ids),
            "desired_token_id": 3,
            "undesired_token_id": 5,
            "split": "validation" if i >= 6 else "train",
        }
        for i, r in enumerate(random_records(8))
    ]
    (data / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "meta.json").write_text(json.dumps({"tokenizer": tokenizer_fingerprint(MINE)}))
    out = tmp_path / "out"
    code = main(
        [
            "circuit",
            "--data",
            str(data),
            "--model",
            "tiny",
            "--lambda",
            "0,1000",
            "--epochs",
            "3",
            "--lr",
            "0.2",
            "--batch-size",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in (
        "circuit.json",
        "history.json",
        "sweep.json",
        "circuit.png",
        "history.png",
        "lambda_0/circuit.json",
        "lambda_1000/circuit.json",
    ):
        assert (out / name).exists(), name
    assert len(Circuit.load(out / "lambda_1000" / "circuit.json")) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["chosen_lambda"] == 0.0 and len(sweep["rows"]) == 2
    assert sweep["rule"].startswith("The gain of a circuit") and sweep["max_fraction"] is None
    assert "chosen" in capsys.readouterr().out
