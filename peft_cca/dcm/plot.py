"""Pictures of a DCM run: the circuit (layers x component kinds) and the training history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt

from peft_cca.arch import COMPONENT_KINDS
from peft_cca.circuit import Circuit

LABELS = {"q": "query heads", "k": "key heads", "v": "value heads", "mlp": "MLP neurons"}


def plot_circuit(circuit: Circuit, path: str | Path, title: str = "") -> Path:
    """Heat map: one row per layer, one column per kind, colour = fraction selected, text = count."""
    shape = circuit.shape
    masks = circuit.masks()
    fractions = [[masks[k][layer].float().mean().item() for k in COMPONENT_KINDS] for layer in range(shape.num_layers)]
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.28 * shape.num_layers + 1.5)))
    image = ax.imshow(fractions, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-9, max(map(max, fractions))))
    for layer in range(shape.num_layers):
        for col, kind in enumerate(COMPONENT_KINDS):
            count = int(masks[kind][layer].sum())
            if count:
                ax.text(col, layer, f"{count}/{shape.count(kind)}", ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(COMPONENT_KINDS)), [LABELS[k] for k in COMPONENT_KINDS])
    ax.set_ylabel("layer")
    counts = circuit.counts()
    ax.set_title(
        title
        or f"{shape.model_type}: {len(circuit)}/{shape.total_components} components "
        f"({100 * circuit.fraction:.2f}%)\nq={counts['q']} k={counts['k']} v={counts['v']} mlp={counts['mlp']}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label="fraction selected")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
