"""The DCM circuit figure: structure (panels, scales, title), not pixels."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from peft_cca.dcm.plot import layer_fractions, plot_circuit
from peft_cca.method.arch import ModelShape
from peft_cca.method.circuit import Circuit

SHAPE = ModelShape("llama", num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=200)


def test_circuit_figure_shows_the_fraction_per_layer_of_each_kind(tmp_path, monkeypatch):
    circuit = Circuit(SHAPE, {0: {"q": [0, 1], "mlp": [5]}, 2: {"k": [1], "v": [0, 1], "mlp": list(range(20))}})
    fractions = layer_fractions(circuit)
    # heads and neurons on one scale: the share of that kind in the layer
    expected = {"q": [0.5, 0, 0], "k": [0, 0, 0.5], "v": [0, 0, 1.0], "mlp": [0.005, 0, 0.1]}
    assert {kind: pytest.approx(values) for kind, values in expected.items()} == fractions
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert plot_circuit(circuit, tmp_path / "c.png", seed=2, lam=0.003).stat().st_size > 0
    (fig,) = figures
    assert len(fig.axes) == 4
    assert [ax.get_title().splitlines()[0] for ax in fig.axes] == [
        "query heads",
        "key heads",
        "value heads",
        "MLP neurons",
    ]
    widths = [[bar.get_width() for bar in ax.patches] for ax in fig.axes]
    assert widths[0] == pytest.approx([50, 0, 0]) and widths[3] == pytest.approx([0.5, 0, 10])
    assert "2 of 12" in fig.axes[0].get_title() and "21 of 600" in fig.axes[3].get_title()
    # every panel has its own x range, so that 0.5% of neurons does not vanish beside 50% of heads
    assert fig.axes[3].get_xlim()[1] < fig.axes[0].get_xlim()[1]
    title = fig._suptitle.get_text()
    assert "seed 2" in title and "lambda 0.003" in title
