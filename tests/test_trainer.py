"""CCATrainer on tiny random models: what moves, the full-batch gradient, the schedule, the best step."""

from __future__ import annotations

import json
import random

import pytest
import torch
from peft import PeftModel, get_peft_model
from tiny_models import VOCAB, tiny_model
from tiny_tokenizer import tiny_tokenizer

import peft_cca  # noqa: F401 - registers the "cca" method
from peft_cca import CCAConfig, Circuit, describe
from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.records import PivotCollator
from peft_cca.amplify.settings import AmplifySettings
from peft_cca.amplify.trainer import amplify, train_one
from peft_cca.evaluation.settings import Scoring
from peft_cca.method.arch import ModelShape
from peft_cca.sweep.callbacks import BestStepCallback, eval_schedule, trainable_state
from peft_cca.sweep.runs import Readings
from peft_cca.tasks.problem import Problem

PAD = 2


def records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prefix_ids": [rng.randrange(4, VOCAB) for _ in range(rng.randrange(3, 9))],
            "desired_token_id": rng.randrange(4, VOCAB),
            "undesired_token_id": rng.randrange(4, VOCAB),
            "split": "train",
        }
        for _ in range(n)
    ]


def cca_model(seed: int = 0):
    model = tiny_model("llama", seed=seed)
    circuit = Circuit(describe(model).shape, {0: {"q": [1], "v": [0]}, 1: {"mlp": [3, 5]}})
    return get_peft_model(model, CCAConfig(circuit=circuit)), circuit


def constant(_model) -> float:
    return 0.0


def test_eval_schedule_is_the_authors():
    assert eval_schedule(50) == [2, 4, 6, 8, 10, 20, 30, 40, 50]
    assert eval_schedule(7) == [2, 4, 6]


def test_one_step_moves_only_the_circuit_rows():
    model, _ = cca_model()
    before = {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.get_base_model().named_parameters()}
    train_one(
        model,
        records(5),
        0.5,
        PAD,
        Readings(constant),
        AmplifySettings(steps=1, micro_batch=2),
        evaluate_at_start=False,
    )
    merged = model.merge_and_unload()
    changed = {}
    for name, param in merged.named_parameters():
        diff = (param.detach() - before[name]).abs()
        rows = diff.sum(dim=1).nonzero().flatten().tolist() if diff.dim() == 2 else diff.nonzero().flatten().tolist()
        if rows:
            changed[name] = rows
    head_dim = 12
    assert changed == {
        "model.layers.0.self_attn.q_proj.weight": list(range(head_dim, 2 * head_dim)),
        "model.layers.0.self_attn.v_proj.weight": list(range(head_dim)),
        "model.layers.1.mlp.up_proj.weight": [3, 5],
    }


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_full_batch_accumulation_equals_one_big_batch(batch_size):
    data = records(7, seed=3)
    reference, _ = cca_model()
    batch = PivotCollator(PAD)(data)
    loss = -logit_difference(reference, batch).mean()
    loss.backward()
    expected = {n: -p.grad for n, p in reference.named_parameters() if p.requires_grad}

    model, _ = cca_model()
    settings = AmplifySettings(steps=1, micro_batch=batch_size)
    train_one(model, data, 1.0, PAD, Readings(constant), settings, evaluate_at_start=False)
    after = trainable_state(model)  # SGD with lr 1 from zero: the deltas are minus the gradient
    assert set(after) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(after[name], value, rtol=1e-4, atol=1e-6)


def test_left_padding_does_not_change_the_pivot_logits():
    model, _ = cca_model()
    data = records(4, seed=5)
    padded = logit_difference(model, PivotCollator(PAD)(data))
    alone = torch.cat([logit_difference(model, PivotCollator(PAD)([r])) for r in data])
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


def test_schedule_fires_at_exactly_the_specified_steps():
    model, _ = cca_model()
    steps_seen = []

    def record_step(_model) -> float:
        steps_seen.append(len(steps_seen))
        return 0.0

    run = train_one(model, records(2), 1e-3, PAD, Readings(record_step), AmplifySettings(steps=50, micro_batch=2))
    assert [h["step"] for h in run.history] == [0, 2, 4, 6, 8, 10, 20, 30, 40, 50]
    assert len(steps_seen) == 10
    assert run.best_step == 2  # all scores tie: the earliest trained step is kept


def test_best_step_is_the_one_restored(tmp_path):
    model, _ = cca_model()
    scores = iter([0.1, 0.2, 0.3, 0.9, 0.5, 0.4])  # steps 0, 2, 4, 6, 8, 10: best at 6
    snapshots = []

    def scripted(m) -> float:
        snapshots.append(trainable_state(m))
        return next(scores)

    callback = BestStepCallback(scripted, eval_schedule(10), save_dir=tmp_path / "adapter")
    from peft_cca.amplify.trainer import CCATrainer, cca_training_arguments

    trainer = CCATrainer(
        model,
        cca_training_arguments(tmp_path / "out", lr=0.5, steps=10, batch_size=4),
        train_dataset=records(4),
        pad_token_id=PAD,
        callbacks=[callback],
    )
    trainer.train()
    assert callback.best_step == 6
    at_step_6, at_step_10 = snapshots[3], snapshots[5]
    now = trainable_state(model)
    for name in now:
        torch.testing.assert_close(now[name], at_step_6[name])
    assert any(not torch.equal(at_step_6[n], at_step_10[n]) for n in now)
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    for name, value in trainable_state(model).items():
        torch.testing.assert_close(dict(reloaded.named_parameters())[name], value)


def test_amplify_sweeps_and_saves_the_best_run(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama")
    circuit = Circuit(describe(model).shape, {1: {"k": [0], "mlp": [1, 2]}})
    val = [Problem(id=f"p{i}", group_id=f"g{i % 2}", question=f"{i}+1?", answer=str(i + 1)) for i in range(4)]
    settings = AmplifySettings(lrs=(1e-2, 1e-3), steps=2, scoring=Scoring(max_new_tokens=3))
    result = amplify(model, tokenizer, records(3), circuit, val, settings, output_dir=tmp_path)
    assert [r.lr for r in result.runs] == [1e-2, 1e-3]
    assert all(r.history[0]["step"] == 0 and r.history[-1]["step"] == 2 for r in result.runs)
    saved = json.loads((tmp_path / "amplify.json").read_text())
    assert saved["best"]["lr"] == result.best.lr
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "adapter")
    for name, value in result.best.state.items():
        torch.testing.assert_close(dict(reloaded.named_parameters())[name], value)


class ModelLoadedError(Exception):
    """Raised in place of loading the model: the command got past its checks."""


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    import peft_cca.runtime.loading

    def refuse(*_args, **_kwargs):
        raise ModelLoadedError

    monkeypatch.setattr(peft_cca.runtime.loading, "load_model", refuse)
    monkeypatch.setattr(peft_cca.runtime.loading, "resolve", lambda name: name)  # "tiny" stands for a model found
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"model": "tiny"}))
    Circuit(ModelShape("llama", 2, 4, 2, 12, 80), {0: {"q": [1]}}).save(run / "circuit.json")  # read before the model
    return run


@pytest.mark.parametrize("command", ["amplify", "lora"])
def test_out_that_is_a_file_is_refused_before_the_model_loads(run_folder, command, capsys):
    from peft_cca.cli import main

    taken = run_folder / "taken.txt"
    taken.write_text("keep me")
    assert main([command, "--run", str(run_folder), "--out", str(taken)]) == 2
    assert "taken.txt" in capsys.readouterr().err and taken.read_text() == "keep me"


@pytest.mark.parametrize("command", ["amplify", "lora"])
def test_rerun_with_other_settings_is_refused_naming_them_and_overwrite_starts_afresh(run_folder, command, capsys):
    from peft_cca.cli import main

    base = [command, "--run", str(run_folder), "--out", str(run_folder / "out")]
    with pytest.raises(ModelLoadedError):
        main([*base, "--lr", "0.01"])
    assert not (run_folder / "out").exists()  # it finished nothing: its folder went with it, blocking nothing
    stale = run_folder / "out" / "adapter"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"finished work")
    with pytest.raises(ModelLoadedError):
        main([*base, "--lr", "0.01"])
    with pytest.raises(ModelLoadedError):  # the same settings: a rerun is allowed
        main([*base, "--lr", "0.01", "--micro-batch", "3"])
    assert main([*base, "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "lr [0.01] (recorded) vs [0.02] (now)" in err and "It holds adapter/" in err and "--overwrite" in err
    with pytest.raises(ModelLoadedError):
        main([*base, "--lr", "0.02", "--overwrite"])
    assert not stale.exists()  # the old run's adapter cannot pass for the new one's


@pytest.mark.parametrize(
    "argv",
    [["--steps", "0"], ["--steps", "-1"], ["--lr", "nan"], ["--lr", "-0.1"], ["--lr", "inf"], ["--micro-batch", "0"]],
)
def test_amplify_refuses_nonsense_at_parse_time(run_folder, argv, capsys):
    from peft_cca.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["amplify", "--run", str(run_folder), *argv])
    assert exit_.value.code == 2 and argv[0] in capsys.readouterr().err


def test_the_library_refuses_nonsense_too():
    from peft_cca.errors import UsageError

    model, _ = cca_model()
    for kwargs, match in (({"steps": 0}, "steps"), ({"lrs": (float("nan"),)}, "learning rate"), ({"lrs": ()}, "lr")):
        with pytest.raises(UsageError, match=match):
            amplify(model, tiny_tokenizer(), records(2), None, None, AmplifySettings(**kwargs), evaluate_fn=constant)
    with pytest.raises(UsageError, match="no_mask"):
        amplify(model, tiny_tokenizer(), records(2), None, None, AmplifySettings(no_mask="everything"))


def test_sweep_json_is_strict(tmp_path):
    model, _ = cca_model()

    def diverged(_m) -> float:
        return float("nan")

    settings = AmplifySettings(lrs=(0.1,), steps=2)
    amplify(model, tiny_tokenizer(), records(2), None, None, settings, evaluate_fn=diverged, output_dir=tmp_path)
    text = (tmp_path / "amplify.json").read_text()
    assert "NaN" not in text and json.loads(text)["runs"][0]["history"][0]["score"] is None


def test_a_run_shorter_than_the_schedule_scores_its_last_step():
    model, _ = cca_model()
    run = train_one(
        model, records(3), 0.1, PAD, Readings(lambda _m: 0.25), AmplifySettings(steps=1), evaluate_at_start=False
    )
    assert (run.best_step, run.best_score) == (1, 0.25)
    assert run.history == [{"step": 1, "score": 0.25}]
