"""Circuit: file format, stats, validation and set operations."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from peft_cca import Circuit, CircuitShapeError, ModelShape

SHAPE = ModelShape("llama", num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536)


def test_percent_mask_uses_the_papers_denominator():
    circuit = Circuit(SHAPE, {0: {"q": [0, 1], "k": [2]}, 29: {"v": [0], "mlp": [5, 6, 7]}})
    assert SHAPE.total_components == 30 * (9 + 2 * 3 + 1536)
    assert circuit.counts() == {"q": 2, "k": 1, "v": 1, "mlp": 3}
    assert len(circuit) == 7
    assert circuit.fraction == pytest.approx(7 / 46530)
    assert circuit.stats()["percent"] == pytest.approx(100 * 7 / 46530)


def test_json_round_trip_is_readable_and_diffable(tmp_path):
    circuit = Circuit(SHAPE, {3: {"mlp": [9, 2], "q": [4]}, 1: {"k": [0]}})
    path = circuit.save(tmp_path / "circuit.json")
    data = json.loads(path.read_text())
    assert data["format"] == "peft-cca/circuit@1"
    assert data["model"]["head_dim"] == 64
    assert list(data["layers"]) == ["1", "3"]
    assert data["layers"]["3"] == {"q": [4], "mlp": [2, 9]}
    assert '"mlp": [2, 9]' in path.read_text()  # one line per layer and kind
    assert Circuit.load(path) == circuit


def test_full_and_empty_and_masks():
    model = tiny_model("llama")
    full = Circuit.full(model)
    assert full.fraction == 1.0
    assert len(Circuit.empty(model)) == 0
    assert Circuit.from_masks(full.shape, full.masks()) == full


def test_out_of_range_indices_and_unknown_kinds_are_refused():
    with pytest.raises(CircuitShapeError, match=r"layer 0 q: indices \[9\] outside 0..8"):
        Circuit(SHAPE, {0: {"q": [9]}})
    with pytest.raises(CircuitShapeError, match="layer 30 is outside"):
        Circuit(SHAPE, {30: {"q": [0]}})
    with pytest.raises(CircuitShapeError, match="unknown component kind 'o'"):
        Circuit(SHAPE, {0: {"o": [0]}})
    with pytest.raises(ValueError, match="not a circuit file"):
        Circuit.from_dict({"format": "something-else"})


def test_validate_names_every_difference():
    other = ModelShape("gemma2", num_layers=26, num_heads=8, num_kv_heads=4, head_dim=256, intermediate_size=9216)
    with pytest.raises(CircuitShapeError) as err:
        Circuit.empty(SHAPE).validate(other)
    for field in ("model_type", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
        assert field in str(err.value)


def test_union_and_intersection():
    a = Circuit(SHAPE, {0: {"q": [0, 1]}, 2: {"mlp": [7]}})
    b = Circuit(SHAPE, {0: {"q": [1, 2]}, 5: {"v": [0]}})
    assert (a | b) == Circuit(SHAPE, {0: {"q": [0, 1, 2]}, 2: {"mlp": [7]}, 5: {"v": [0]}})
    assert (a & b) == Circuit(SHAPE, {0: {"q": [1]}})
    other = Circuit.empty(ModelShape("llama", 2, 4, 2, 12, 80))
    with pytest.raises(CircuitShapeError):
        a.union(other)


def test_from_masks_checks_shapes():
    with pytest.raises(CircuitShapeError, match="q mask has shape"):
        Circuit.from_masks(SHAPE, {"q": torch.zeros(3, 9, dtype=torch.bool)})
