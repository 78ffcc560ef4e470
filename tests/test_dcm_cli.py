"""`peft-cca circuit` end to end on a tiny model: files written, help complete."""

from __future__ import annotations

import json
import math

import pytest
from test_dcm_data import MINE
from test_dcm_paths import random_records, tiny_model

import peft_cca.runtime.loading
from peft_cca.cli import main
from peft_cca.dcm.train import DCMConfig
from peft_cca.errors import UsageError
from peft_cca.localize.records import tokenizer_fingerprint
from peft_cca.method.circuit import Circuit


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
    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", lambda name, *a, **kw: (model, MINE))
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


def _strict(path):
    """JSON as a strict parser reads it: NaN and Infinity are refused."""

    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", lambda name, *a, **kw: (model, MINE))

    def make(desired=3, undesired=5):
        data = tmp_path / f"data-{desired}-{undesired}"
        data.mkdir(exist_ok=True)
        rows = [
            {"prefix_ids": list(r.prefix_ids), "desired_token_id": desired, "undesired_token_id": undesired}
            for r in random_records(6)
        ]
        (data / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (data / "meta.json").write_text(json.dumps({"tokenizer": tokenizer_fingerprint(MINE)}))
        return data

    return make


def _circuit(data, out, *extra):
    argv = ["circuit", "--data", str(data), "--model", "tiny", "--epochs", "2", "--batch-size", "3", "--out", str(out)]
    return main([*argv, "--lr", "0.2", "--lambda", "0", *extra])  # lambda 0: a circuit, never an empty pick


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e-2,nan"])
def test_lambda_that_is_not_a_finite_non_negative_number_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["circuit", "--data", "d", "--out", "o", "--lambda", value])
    assert exit_info.value.code == 2 and "finite numbers >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--lr", "0"), ("--lr", "-1"), ("--epochs", "0"), ("--batch-size", "0")])
def test_settings_that_cannot_train_are_refused(tiny_data, tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:  # at parse time (commands/options.py), before any model loads
        _circuit(tiny_data(), tmp_path / "out", flag, value)
    assert exit_info.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    field = flag.removeprefix("--").replace("-", "_")
    with pytest.raises(UsageError, match="DCM setting"):  # the library refuses it too
        DCMConfig(**{field: float(value) if field == "lr" else int(value)})


def test_records_without_signal_are_refused(tiny_data, tmp_path, capsys):
    assert _circuit(tiny_data(4, 4), tmp_path / "out") == 2  # cli.main prints a DatasetError as one line
    assert "desired_token_id == undesired_token_id" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused_and_json_is_strict(tiny_data, tmp_path, capsys):
    data, out = tiny_data(), tmp_path / "out"
    assert _circuit(data, out, "--lr-schedule", "authors", "--checkpoint-every", "1") == 0
    history = _strict(out / "history.json")
    assert history["lr_schedule"] == {"scheduler": "StepLR", "step_size": 5, "gamma": 0.9, "unit": "epoch"}
    sweep = _strict(out / "sweep.json")  # no validation records: their logit differences are null, not NaN
    assert sweep["rows"][0]["base_validation_logit_diff"] is None
    assert (out / "lambda_0" / "settings.json").exists()
    assert _circuit(data, out, "--lr-schedule", "authors", "--resume") == 0  # same settings: resumes
    capsys.readouterr()
    for drift, named in (
        (["--lr", "0.3"], "lr 0.2 (recorded) vs 0.3 (now)"),
        (["--seed", "1"], "seed 0 (recorded) vs 1 (now)"),
        (["--form", "authors"], 'form "paper" (recorded) vs "authors" (now)'),
        (["--lr-schedule", "constant"], "lr_schedule"),
    ):
        before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        assert _circuit(data, out, "--lr-schedule", "authors", "--resume", *drift) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was made with other settings" in err and named in err, err
        assert "without --resume" in err
        assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before  # nothing lost
    assert not any(math.isnan(e["loss"]) for e in history["epochs"])
