"""The report's figures: validation curves per arm (seeds thin, their mean thick, the kept step marked) and circuits."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_cca.method.arch import COMPONENT_KINDS
from peft_cca.reports.tables import config_label, row_key, row_order


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lr_colors(lrs: Iterable[float]) -> dict[float, Any]:
    """A distinct colour per learning rate (largest first): tab10, tab20, then evenly spaced viridis."""
    import matplotlib

    ordered = sorted(set(lrs), reverse=True)
    if len(ordered) <= 10:
        palette = [matplotlib.colormaps["tab10"](i) for i in range(len(ordered))]
    elif len(ordered) <= 20:
        palette = [matplotlib.colormaps["tab20"](i) for i in range(len(ordered))]
    else:
        palette = [matplotlib.colormaps["viridis"](i / (len(ordered) - 1)) for i in range(len(ordered))]
    return dict(zip(ordered, palette, strict=True))


def kept_step(run: Mapping[str, Any]) -> tuple[float, int] | None:
    """The (lr, step) whose weights the run's adapter holds: ``kept`` when recorded, else the best score's
    first step (first lr on ties), as the trainers choose it."""
    if run.get("kept"):
        return float(run["kept"]["lr"]), int(run["kept"]["step"])
    best: tuple[float, float, int] | None = None
    for curve in run.get("curves", []):
        for point in curve["history"]:
            if best is None or point["score"] > best[0]:
                best = (point["score"], curve["lr"], point["step"])
    return None if best is None else (best[1], best[2])


def plot_curves(runs: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Validation score by step, one panel per arm: a thin line per seed, the mean over seeds thick, one colour
    per learning rate (the legend lists each once), a star where the kept adapter was taken."""
    arms: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.get("curves"):
            arms[config_label(run)].append(run)
    if not arms:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    names = sorted(arms, key=lambda name: row_order((name, "")))
    colors = lr_colors(curve["lr"] for members in arms.values() for run in members for curve in run["curves"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        by_lr: dict[float, list[dict[int, float]]] = defaultdict(list)
        for run in arms[name]:
            kept = kept_step(run)
            for curve in run["curves"]:
                points = {h["step"]: 100 * h["score"] for h in curve["history"]}
                by_lr[curve["lr"]].append(points)
                ax.plot(list(points), list(points.values()), color=colors[curve["lr"]], linewidth=0.7, alpha=0.45)
                if kept is not None and kept[0] == curve["lr"] and kept[1] in points:
                    ax.plot(
                        kept[1],
                        points[kept[1]],
                        marker="*",
                        markersize=13,
                        color=colors[curve["lr"]],
                        markeredgecolor="black",
                        zorder=5,
                        linestyle="none",
                    )
        for lr, seeds in by_lr.items():
            steps = sorted({step for points in seeds for step in points})
            mean = [statistics.fmean(p[s] for p in seeds if s in p) for s in steps]
            ax.plot(steps, mean, color=colors[lr], linewidth=2.2, marker="o", markersize=3)
        seeds = sorted({str(r.get("seed")) for r in arms[name]})
        ax.set_title(f"{name}\n{len(seeds)} seed{'s' * (len(seeds) > 1)} ({', '.join(seeds)})", fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation exact match (%, macro)")
    handles = [Line2D([], [], color=colors[lr], linewidth=2.2, label=f"lr {lr:g}") for lr in colors]
    handles += [
        Line2D([], [], color="gray", linewidth=0.7, label="one seed"),
        Line2D([], [], color="gray", linewidth=2.2, label="mean over seeds"),
        Line2D(
            [],
            [],
            color="gray",
            marker="*",
            markersize=11,
            markeredgecolor="black",
            linestyle="none",
            label="kept step",
        ),
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _layer_fractions(run: Mapping[str, Any]) -> dict[str, list[float]]:
    """Fraction selected per layer and kind: counts over the kind's size per layer (``kind_sizes``); without
    sizes (older eval files) each kind relative to its own busiest layer."""
    layers = run["circuit_layers"]
    num_layers = int(run.get("num_layers") or (max(map(int, layers)) + 1))
    counts = {k: [layers.get(str(layer), {}).get(k, 0) for layer in range(num_layers)] for k in COMPONENT_KINDS}
    sizes = run.get("kind_sizes") or {k: max(1, max(v)) for k, v in counts.items()}
    return {k: [c / sizes[k] for c in counts[k]] for k in COMPONENT_KINDS}


def plot_circuits(runs: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """One row per circuit (configuration and seed): the fraction selected per layer for q, k, v and MLP."""
    from peft_cca.dcm.plot import draw_fractions

    with_circuit = [r for r in runs if r.get("circuit_layers") and r.get("config") == "CCA w/ mask"]
    if not with_circuit:
        return None
    plt = _pyplot()
    with_circuit.sort(key=lambda r: (row_order(row_key(r)), str(r.get("seed"))))
    num_layers = max(len(_layer_fractions(r)["q"]) for r in with_circuit)
    height = max(2.6, 0.13 * num_layers + 1.4)
    fig, axes = plt.subplots(
        len(with_circuit), len(COMPONENT_KINDS), figsize=(10, height * len(with_circuit)), squeeze=False
    )
    for row, run in zip(axes, with_circuit, strict=True):
        fractions = _layer_fractions(run)
        layers = len(fractions["q"])
        sizes = {k: (run.get("kind_sizes") or {}).get(k, 0) * layers for k in COMPONENT_KINDS}
        draw_fractions(row, fractions, run.get("circuit_counts") or {}, sizes)
        made = [f"seed {run.get('seed')}"] + ([f"lambda {run['lambda']:g}"] if run.get("lambda") is not None else [])
        row[0].set_ylabel(f"{run.get('name', config_label(run))}\n{', '.join(made)}\nlayer", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_general(table2_rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """One panel per general benchmark: each arm's change vs the base with ±2 stderr bars (a loss beyond them red)."""
    if not table2_rows:
        return None
    names = [n for n in table2_rows[0]["base"] if any(n in r["delta"] for r in table2_rows)]
    if not names:
        return None
    plt = _pyplot()
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 0.5 * len(table2_rows) * rows + 1.6 * rows))
    flat = list(getattr(axes, "flat", [axes]))
    labels = [f"{r['config']} ({r['method']})" if r["method"] != "-" else r["config"] for r in table2_rows]
    for ax, name in zip(flat, names, strict=False):
        scale = 100.0 if table2_rows[0]["units"][name] == "%" else 1.0
        for y, row in enumerate(table2_rows):
            if name not in row["delta"]:
                continue
            stderr = row["delta_stderr"].get(name)
            color = "tab:red" if name in row["marked"] else "tab:blue"
            ax.errorbar(
                row["delta"][name] * scale,
                y,
                xerr=None if stderr is None else 2 * stderr * scale,
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(range(len(table2_rows)), labels, fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("change vs base (points)" if scale == 100.0 else "change vs base (nats)", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    for ax in flat[len(names) :]:
        ax.axis("off")
    fig.suptitle("General abilities: change vs the base model, bars ±2 stderr", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
