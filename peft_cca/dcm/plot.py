"""Pictures of a DCM run: the circuit (layers x component kinds) and the training history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt

from peft_cca.method.arch import COMPONENT_KINDS
from peft_cca.method.circuit import Circuit

LABELS = {"q": "query heads", "k": "key heads", "v": "value heads", "mlp": "MLP neurons"}
COLORS = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "mlp": "tab:red"}


def layer_fractions(circuit: Circuit) -> dict[str, list[float]]:
    """Fraction of each kind's components selected, per layer: heads and neurons on one scale."""
    masks = circuit.masks()
    return {kind: masks[kind].float().mean(dim=1).tolist() for kind in COMPONENT_KINDS}


def draw_fractions(axes, fractions: dict[str, list[float]], counts: dict[str, int], sizes: dict[str, int]) -> None:
    """One bar panel per kind on ``axes`` (a row of four): % selected per layer, the kind's total in the title
    (``sizes``: components of each kind in the whole model; 0 when unknown).

    Panels share the layer axis and the unit (% of that kind in the layer); each has its own x range, because
    one head of eight is 12% while a busy MLP layer may select 1% of its neurons.
    """
    for ax, kind in zip(axes, COMPONENT_KINDS, strict=True):
        values = [100 * f for f in fractions[kind]]
        ax.barh(range(len(values)), values, color=COLORS[kind], height=0.8)
        ax.set_xlim(0, max(1e-3, max(values, default=0.0)) * 1.1)
        count, size = counts.get(kind, 0), sizes.get(kind, 0)
        total = f"{count} of {size} ({100 * count / size:.2g}%)" if size else f"{count} selected"
        ax.set_title(f"{LABELS[kind]}\n{total}", fontsize=8)
        ax.set_xlabel(f"% of the layer's {LABELS[kind].split()[-1]}" if size else "% of the busiest layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(len(values) - 0.5, -0.5)  # layer 0 at the top, as a model is read
        if ax is not axes[0]:
            ax.tick_params(labelleft=False)
    axes[0].set_ylabel("layer")


def plot_circuit(
    circuit: Circuit, path: str | Path, title: str = "", seed: int | None = None, lam: float | None = None
) -> Path:
    """The fraction selected per layer for q, k, v and MLP, titled with the seed and lambda that made it."""
    shape = circuit.shape
    counts = circuit.counts()
    sizes = {kind: shape.count(kind) * shape.num_layers for kind in COMPONENT_KINDS}
    fig, axes = plt.subplots(1, len(COMPONENT_KINDS), figsize=(10, max(3.0, 0.2 * shape.num_layers + 1.8)), sharey=True)
    draw_fractions(axes, layer_fractions(circuit), counts, sizes)
    made = ", ".join(part for part in (_seed(seed), _lambda(lam)) if part)
    fig.suptitle(
        title
        or f"{shape.model_type}: {len(circuit)}/{shape.total_components} components ({100 * circuit.fraction:.2f}%)"
        + (f"; {made}" if made else ""),
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _seed(seed: int | None) -> str:
    return "" if seed is None else f"seed {seed}"


def _lambda(lam: float | None) -> str:
    return "" if lam is None else f"lambda {lam:g}"


def plot_history(history: dict[str, Any], path: str | Path) -> Path:
    """Loss, mean logit difference and number selected per step."""
    steps = history.get("steps", [])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(
        axes, ("loss", "logit_diff", "selected"), ("loss", "mean logit diff", "selected"), strict=True
    ):
        ax.plot([s[key] for s in steps])
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
