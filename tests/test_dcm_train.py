"""DCM training behaviour: selection of helpful components, lambda extremes, clamping, early stop, resume, cache."""

from __future__ import annotations

import torch
from test_dcm_paths import random_records, tiny_model

from peft_cca.arch import COMPONENT_KINDS, describe
from peft_cca.circuit import Circuit
from peft_cca.dcm.paths import OneTokenPath
from peft_cca.dcm.sweep import SweepResult, choose, sweep
from peft_cca.dcm.train import DCMConfig, train_mask


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
    records = random_records(16)
    # authors' form: every mask starts at 1 (all selected) and needs ~100 steps at lr 5e-3 to leave the set
    config = DCMConfig(lam=0.0, form="authors", batch_size=2, epochs=10, early_stop_fraction=0.2, early_stop_after=1)
    result = train_mask(model, records, config, progress=False)
    # 8 batches per epoch -> patience ceil(1.6) = 2 steps; the count runs from the start, the check from epoch 1
    assert result.history["stopped_early"]
    assert len(result.history["steps"]) == 8 + 1
    config.early_stop_fraction = None
    assert len(train_mask(model, records, config, progress=False).history["steps"]) == 80


def test_an_empty_selection_never_stops_the_run_early():
    """Paper form: masks start at 0, so "nothing selected yet" must not count as converged."""
    model = tiny_model("llama")
    config = DCMConfig(lam=1e3, batch_size=2, epochs=3, early_stop_fraction=0.2, early_stop_after=1)
    result = train_mask(model, random_records(16), config, progress=False)
    assert not result.history.get("stopped_early")
    assert len(result.history["steps"]) == 24


def test_resume_continues_exactly(tmp_path):
    model = tiny_model("llama")
    records = random_records(8, tokens=(3, 5))
    config = DCMConfig(
        lam=0.01,
        lr=0.05,
        epochs=4,
        batch_size=4,
        early_stop_fraction=None,
        checkpoint_every=2,
        decay_every=1,
        decay_gamma=0.7,
    )
    whole = train_mask(model, records, config, progress=False)
    first = DCMConfig(**{**config.__dict__, "epochs": 2})
    train_mask(model, records, first, out_dir=tmp_path, progress=False)
    assert (tmp_path / "dcm-checkpoint.pt").exists()
    resumed = train_mask(model, records, config, out_dir=tmp_path, resume=True, progress=False)
    torch.testing.assert_close(resumed.mask.flat(), whole.mask.flat())
    assert len(resumed.history["epochs"]) == 4


def test_cache_over_budget_spills_or_recomputes_with_same_results():
    model = tiny_model("gpt_neox")
    records = random_records(8)
    with torch.no_grad():
        reference = OneTokenPath(model, records, progress=False).logit_diff(range(8))
        for overflow in ("spill", "recompute"):
            path = OneTokenPath(model, records, budget_mb=0.005, overflow=overflow, progress=False)
            summary = path.cache.summary()
            assert summary["in_memory"] < 7
            assert summary["spilled" if overflow == "spill" else "recomputed"] > 0
            torch.testing.assert_close(path.logit_diff(range(8)), reference)
            # the stored cache is never mutated by a step
            torch.testing.assert_close(path.logit_diff(range(8)), reference)


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
