"""DCM training behaviour: selection of helpful components, lambda extremes, clamping, early stop, resume, cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_dcm_paths import random_records, tiny_model

from peft_cca.dcm.checkpoint import CHECKPOINT
from peft_cca.dcm.paths import OneTokenPath
from peft_cca.dcm.sweep import SweepResult, choose, sweep
from peft_cca.dcm.train import DCMConfig, train_mask
from peft_cca.errors import CCAError, UsageError
from peft_cca.localize.records import Record
from peft_cca.method.arch import COMPONENT_KINDS, describe
from peft_cca.method.circuit import Circuit


def _plant_neurons(model, helpful: int, harmful: int, desired: int = 3, undesired: int = 5) -> None:
    """Make MLP neuron ``helpful`` of the last layer write logit(desired) - logit(undesired) up, ``harmful`` down.

    gate and up rows are equal, so the neuron's activation silu(u) * u is never negative.
    """
    mlp = model.model.layers[-1].mlp
    direction = model.lm_head.weight[desired] - model.lm_head.weight[undesired]
    with torch.no_grad():
        for neuron, sign in ((helpful, 1.0), (harmful, -1.0)):
            row = torch.randn(mlp.up_proj.weight.shape[1], generator=torch.Generator().manual_seed(neuron))
            mlp.up_proj.weight[neuron] = mlp.gate_proj.weight[neuron] = 0.3 * row
            mlp.down_proj.weight[:, neuron] = sign * 0.05 * direction / direction.norm()


def test_clearly_helpful_component_is_selected_and_harmful_one_is_not():
    model = tiny_model("llama")
    _plant_neurons(model, helpful=7, harmful=11)
    records = random_records(8, tokens=(3, 5))
    config = DCMConfig(lam=0.05, lr=0.05, epochs=10, batch_size=4, early_stop_fraction=None)
    mlp = train_mask(model, records, config, progress=False).circuit.masks()["mlp"]
    assert mlp[1, 7] and not mlp[1, 11]


def test_lambda_zero_keeps_helpers_lambda_large_selects_nothing():
    model = tiny_model("qwen2")
    records = random_records(8, tokens=(3, 5))
    for form in ("paper", "authors"):
        config = DCMConfig(lam=0.0, lr=0.05, epochs=15, batch_size=4, early_stop_fraction=None, form=form)
        kept = train_mask(model, records, config, progress=False).circuit
        assert len(kept) > 0
        config.lam = 1e3
        none = train_mask(model, records, config, progress=False)
        assert len(none.circuit) == 0, form
        # the penalty dominates: the paper form stays at identity, the authors' form goes to ablation
        assert float(none.mask.flat().max()) == 0.0


def test_mask_is_clamped_after_every_step():
    model = tiny_model("llama")
    records = random_records(8, tokens=(3, 5))
    result = train_mask(
        model, records, DCMConfig(lam=0.0, lr=2.0, epochs=2, batch_size=4, early_stop_fraction=None), progress=False
    )
    flat = result.mask.flat()
    assert flat.min() >= 0.0 and flat.max() <= 1.0
    assert (flat == 1.0).any()  # a 2.0 step would overshoot without the clamp


def test_early_stop_when_selection_is_unchanged_for_a_fifth_of_an_epoch():
    model = tiny_model("llama")
    records = random_records(16, tokens=(3, 5))
    # paper form at a high lr: helpful masks cross 0.5 within a few steps, then the set settles
    config = DCMConfig(lam=0.0, lr=0.3, batch_size=2, epochs=10, early_stop_fraction=0.2, early_stop_after=1)
    result = train_mask(model, records, config, progress=False)
    steps = result.history["steps"]
    assert result.history["early_stop_rule"] == "selection" and result.history["patience_steps"] == 2
    assert result.history["stopped_early"] and 8 < len(steps) < 80
    assert [s["selected"] for s in steps[-3:]] == [steps[-1]["selected"]] * 3 and steps[-1]["selected"] > 0
    config.early_stop_fraction = None
    assert len(train_mask(model, records, config, progress=False).history["steps"]) == 80


def test_authors_form_does_not_stop_at_its_initial_all_selected_state():
    """Issue 11: in the 2mh form every mask starts at 1 (everything selected) and needs ~0.5 / lr steps to leave;
    with 8 batches per epoch the old rule stopped after 9 steps with 100% of the components."""
    model = tiny_model("llama")
    records = random_records(16, tokens=(3, 5))
    config = DCMConfig(lam=0.1, form="authors", batch_size=2, epochs=16, early_stop_fraction=0.2, early_stop_after=1)
    result = train_mask(model, records, config, progress=False)
    steps, total = result.history["steps"], describe(model).shape.total_components
    assert result.history["early_stop_rule"] == "authors"
    assert all(s["selected"] == total for s in steps[:90])  # lr 5e-3: ~100 steps before any mask crosses 0.5
    assert len(steps) > 100 and steps[-1]["selected"] < total
    if result.history["stopped_early"]:  # patience counts within the last epoch only (reset every epoch)
        last = steps[-1]["epoch"]
        assert sum(s["epoch"] == last for s in steps) >= result.history["patience_steps"]


def test_authors_lr_schedule_is_steplr_5_epochs_gamma_0_9():
    model = tiny_model("llama")
    config = DCMConfig(lr=0.01, epochs=11, batch_size=8, decay_every=5, decay_gamma=0.9, early_stop_fraction=None)
    history = train_mask(model, random_records(8), config, progress=False).history
    assert history["lr_schedule"] == {"scheduler": "StepLR", "step_size": 5, "gamma": 0.9, "unit": "epoch"}
    lrs = [e["lr"] for e in history["epochs"]]  # the lr after each epoch's scheduler step
    assert lrs[3] == 0.01 and abs(lrs[4] - 0.009) < 1e-12 and abs(lrs[9] - 0.0081) < 1e-12
    assert DCMConfig().lr_schedule() == "constant"


def test_an_empty_selection_never_stops_the_run_early():
    """Paper form: masks start at 0, so "nothing selected yet" must not count as converged."""
    model = tiny_model("llama")
    config = DCMConfig(lam=1e3, batch_size=2, epochs=3, early_stop_fraction=0.2, early_stop_after=1)
    result = train_mask(model, random_records(16), config, progress=False)
    assert not result.history.get("stopped_early")
    assert len(result.history["steps"]) == 24


class _KilledError(Exception):
    pass


def _interrupted_after(path, calls: int):
    """``path`` whose ``logit_diff`` raises on call number ``calls + 1``: a run killed mid-way."""
    original, count = path.logit_diff, [0]

    def logit_diff(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise _KilledError
        return original(*args, **kwargs)

    path.logit_diff = logit_diff
    return path


RESUME = dict(lam=0.01, lr=0.05, epochs=4, batch_size=4, early_stop_fraction=None, checkpoint_every=2)


def test_resume_continues_exactly_from_a_safetensors_checkpoint(tmp_path):
    model = tiny_model("llama")
    records = random_records(8, tokens=(3, 5))
    config = DCMConfig(**RESUME, decay_every=1, decay_gamma=0.7)
    whole = train_mask(model, records, config, progress=False)
    # killed in epoch 3 (2 batches per epoch): the checkpoint after epoch 2 survives
    killed = _interrupted_after(OneTokenPath(model, records, progress=False), 5)
    with pytest.raises(_KilledError):
        train_mask(model, records, config, out_dir=tmp_path, path=killed, progress=False)
    assert (tmp_path / CHECKPOINT).exists() and not (tmp_path / "dcm-checkpoint.pt").exists()
    resumed = train_mask(model, records, config, out_dir=tmp_path, resume=True, progress=False)
    torch.testing.assert_close(resumed.mask.flat(), whole.mask.flat())
    assert len(resumed.history["epochs"]) == 4
    assert [e["lr"] for e in resumed.history["epochs"]] == [e["lr"] for e in whole.history["epochs"]]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"lr": 0.1}, "lr"),
        ({"form": "authors"}, "form"),
        ({"seed": 1}, "seed"),
        ({"lam": 0.5}, "lam"),
        ({"epochs": 6}, "epochs"),
        ({"batch_size": 2}, "batch_size"),
        ({"decay_every": 5}, "lr_schedule"),
        ({}, "records_sha256"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(tmp_path, change, key):
    model = tiny_model("llama")
    records = random_records(8, tokens=(3, 5))
    train_mask(model, records, DCMConfig(**RESUME), out_dir=tmp_path, progress=False)
    if not change:  # same settings, other records (one desired token changed)
        records = [Record(records[0].prefix_ids, 4, 5), *records[1:]]
    with pytest.raises(UsageError, match=rf"{key} .*\(recorded\) vs .*\(now\)"):
        train_mask(model, records, DCMConfig(**{**RESUME, **change}), out_dir=tmp_path, resume=True, progress=False)
    # without --resume the new settings start afresh (and the stale checkpoint is gone)
    train_mask(model, records, DCMConfig(**{**RESUME, **change, "epochs": 1}), out_dir=tmp_path, progress=False)
    assert not (tmp_path / CHECKPOINT).exists()


class _Payload:
    """Pickling this object plants code that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", [CHECKPOINT, "dcm-checkpoint.pt"])
def test_a_planted_pickle_checkpoint_is_never_executed(tmp_path, name):
    model = tiny_model("llama")
    records = random_records(8, tokens=(3, 5))
    run = tmp_path / "run"
    train_mask(model, records, DCMConfig(**{**RESUME, "checkpoint_every": 5}), out_dir=run, progress=False)
    marker = tmp_path / "pwned"
    torch.save({"mask": _Payload(marker)}, run / name)  # torch.save pickles: loading it would run the payload
    with pytest.raises(CCAError, match="not loaded"):
        train_mask(model, records, DCMConfig(**RESUME), out_dir=run, resume=True, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"lam": float("nan")},
        {"lam": float("inf")},
        {"lam": -1e-3},
        {"lr": 0.0},
        {"lr": -1.0},
        {"lr": float("nan")},
        {"epochs": 0},
        {"batch_size": 0},
    ],
)
def test_settings_that_cannot_train_are_refused(bad):
    key = next(iter(bad)).replace("lam", "lambda").replace("_", " ")
    with pytest.raises(UsageError, match=key):
        DCMConfig(**bad)


def test_cache_over_budget_spills_or_recomputes_with_same_results(tmp_path):
    model = tiny_model("gpt_neox")
    records = random_records(8)
    with torch.no_grad():
        reference = OneTokenPath(model, records, progress=False).logit_diff(range(8))
        for overflow in ("spill", "recompute"):
            path = OneTokenPath(model, records, budget_mb=0.005, overflow=overflow, progress=False)
            summary = path.cache.summary()
            assert summary["device_mb"] <= 0.005 and summary["host_mb"] == 0
            assert summary["spilled_blocks" if overflow == "spill" else "recomputed_blocks"] > 0
            torch.testing.assert_close(path.logit_diff(range(8)), reference)
            # the stored cache is never mutated by a step
            torch.testing.assert_close(path.logit_diff(range(8)), reference)
    assert OneTokenPath(model, records, progress=False).cache.summary()["recomputed_blocks"] == 0


def test_sweep_reports_and_chooses():
    model = tiny_model("llama")
    train, val = random_records(8, tokens=(3, 5)), random_records(4, seed=7, tokens=(3, 5))
    config = DCMConfig(lr=0.05, epochs=15, batch_size=4, early_stop_fraction=None)
    results = sweep(model, train, val, [0.0, 1e3], config, progress=False)
    rows = [r.row() for r in results]
    assert rows[1]["selected"] == 0 and rows[0]["selected"] > 0
    assert rows[0]["train_logit_diff"] > rows[0]["base_train_logit_diff"]
    assert set(rows[0]["counts"]) == set(COMPONENT_KINDS)
    assert choose(results).lam == 0.0


def test_choose_respects_the_component_budget_and_small_validation_sets():
    model = tiny_model("llama")
    spec = describe(model)

    shape = spec.shape

    def result(lam: float, selected: int, train_gain: float, val_gain: float, val_records: int) -> SweepResult:
        """A circuit of the first ``selected`` MLP neurons."""
        masks = {kind: torch.zeros(shape.num_layers, shape.count(kind), dtype=torch.bool) for kind in COMPONENT_KINDS}
        masks["mlp"].view(-1)[:selected] = True
        circuit = Circuit.from_masks(shape, masks)
        return SweepResult(lam, circuit, {}, train_gain, val_gain, 0.0, 0.0, validation_records=val_records)

    total = shape.total_components
    big, small, tiny = total // 2, total // 50, 1
    # 5 validation records: too few to rank, so the train gain decides
    few = [result(1e-3, big, 9.0, 0.1, 5), result(1e-2, small, 5.0, 0.2, 5), result(1e-1, tiny, 0.5, 0.9, 5)]
    assert choose(few).lam == 1e-3
    assert choose(few, max_fraction=0.05).lam == 1e-2
    # enough validation records: the validation gain decides
    many = [result(r.lam, len(r.circuit), r.train_logit_diff, r.validation_logit_diff, 16) for r in few]
    assert choose(many, max_fraction=0.05).lam == 1e-1
    # nothing within budget: the sparsest non-empty circuit
    assert choose(few[:1], max_fraction=1e-6).lam == 1e-3
