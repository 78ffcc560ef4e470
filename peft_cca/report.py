"""Side-by-side reports of evaluated runs: the paper's Tables 1, 2 and 7 in Markdown and JSON, and plots.

A *run* is the JSON that ``peft-cca evaluate`` writes (:func:`peft_cca.evaluate.evaluate_model` plus
provenance): ``name``, ``config`` ("Base", "CCA w/ mask", "CCA w/o mask", "LoRA"), ``method``, ``seed``,
``dataset_size``, ``mask_percent``, ``circuit_counts``, ``circuit_layers``, ``test``, ``general`` and
``curves`` (validation score by step per learning rate). Runs with the same configuration and localization
method are seeds of one row: mean and standard deviation across them.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_cca.arch import COMPONENT_KINDS

BASE = "Base"
CONFIG_ORDER = (BASE, "CCA w/ mask", "CCA w/o mask", "LoRA")


def load_runs(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Run JSONs from files, from folders holding ``eval.json``, or from folders of run JSONs (``<run>/eval/``)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
        elif (path / "eval.json").exists():
            files.append(path / "eval.json")
        else:
            found = sorted(path.glob("*.json"))
            if not found:
                raise FileNotFoundError(f"{path} holds neither eval.json nor any run JSON")
            files += found
    return [json.loads(file.read_text()) for file in files]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _key(run: Mapping[str, Any]) -> tuple[str, str]:
    return run.get("config", "?"), run.get("method") or "-"


def _order(key: tuple[str, str]) -> tuple[int, str]:
    config, method = key
    return (CONFIG_ORDER.index(config) if config in CONFIG_ORDER else len(CONFIG_ORDER), method)


def general_metrics(run: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``{benchmark: value}``: retention macro and per task, KL drift, and each lm-eval task's main metric."""
    general = run.get("general", {})
    flat: dict[str, float] = {}
    retention = general.get("retention")
    if retention:
        flat["retention (macro)"] = retention["macro"]
        for task, value in retention.get("groups", {}).items():
            flat[f"retention: {task}"] = value["accuracy"]
    if general.get("kl") is not None:
        flat["KL drift (nats)"] = general["kl"]
    for task, metrics in (general.get("lm_eval") or {}).items():
        for metric in ("acc", "exact_match", "acc_norm", "mc2"):
            if metric in metrics:
                flat[f"{task} {metric}"] = metrics[metric]
                break
    return flat


def paired_deltas(
    members: Sequence[Mapping[str, Any]], base_runs: Sequence[Mapping[str, Any]], value: Callable[[Mapping], float]
) -> list[float]:
    """Each member's value minus the base model's on the same seed.

    Demo seeds are whole replicates with their own test split, so a run is compared with the base on its own
    split; an arm run on fewer seeds than the base is then not credited with the other seeds' difficulty.
    A seed without a base run falls back to the mean over the base runs.
    """
    by_seed = {r.get("seed"): value(r) for r in base_runs}
    fallback = statistics.fmean(by_seed.values())
    return [value(m) - by_seed.get(m.get("seed"), fallback) for m in members]


def table1(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Configuration, method, dataset size, % mask, test accuracy (mean, std over seeds), paired delta vs the base."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[_key(run)].append(run)
    base_runs = [r for r in runs if r.get("config") == BASE]
    rows = []
    for key in sorted(groups, key=_order):
        members = groups[key]
        mean, std = _mean_std([r["test"]["macro"] for r in members])
        masks = [r["mask_percent"] for r in members if r.get("mask_percent") is not None]
        sizes = [r["dataset_size"] for r in members if r.get("dataset_size") is not None]
        deltas = paired_deltas(members, base_runs, lambda r: r["test"]["macro"]) if base_runs else None
        rows.append(
            {
                "config": key[0],
                "method": key[1],
                "seeds": len(members),
                "dataset_size": statistics.fmean(sizes) if sizes else None,
                "mask_percent": statistics.fmean(masks) if masks else None,
                "test_mean": mean,
                "test_std": std,
                "delta": None if deltas is None else statistics.fmean(deltas),
                "delta_std": None if deltas is None else _mean_std(deltas)[1],
            }
        )
    return rows


def table2(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, the change of every general benchmark against the base model (mean over seeds)."""
    base_runs = [r for r in runs if r.get("config") == BASE]
    if not base_runs:
        return []
    base = _average([general_metrics(r) for r in base_runs])
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.get("config") != BASE:
            groups[_key(run)].append(run)
    rows = []
    for key in sorted(groups, key=_order):
        members = groups[key]
        measured = _average([general_metrics(r) for r in members])
        deltas = {
            name: statistics.fmean(paired_deltas(members, base_runs, lambda r, n=name: general_metrics(r)[n]))
            for name in base
            if name in measured
        }
        rows.append({"config": key[0], "method": key[1], "base": base, "delta": deltas})
    return rows


def _average(dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    names = set.intersection(*(set(d) for d in dicts)) if dicts else set()
    return {name: statistics.fmean(d[name] for d in dicts) for name in sorted(names)}


def table7(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Components per kind of each CCA configuration's circuit (mean over seeds)."""
    groups: dict[tuple[str, str], list[Mapping[str, int]]] = defaultdict(list)
    for run in runs:
        if run.get("circuit_counts"):
            groups[_key(run)].append(run["circuit_counts"])
    return [
        {
            "config": key[0],
            "method": key[1],
            **{kind: statistics.fmean(c.get(kind, 0) for c in counts) for kind in COMPONENT_KINDS},
        }
        for key, counts in sorted(groups.items(), key=lambda item: _order(item[0]))
    ]


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(tables: Mapping[str, list[dict[str, Any]]]) -> str:
    t1 = _markdown(
        ["Configuration", "Localization", "Seeds", "Dataset size", "% Mask", "Test accuracy (%)", "Δ (paired)"],
        (
            [
                r["config"],
                r["method"],
                str(r["seeds"]),
                _fmt(r["dataset_size"], digits=0),
                _fmt(r["mask_percent"], digits=3),
                f"{_fmt(r['test_mean'], 100)} ± {_fmt(r['test_std'], 100)}",
                f"{_fmt(r['delta'], 100, signed=True)} ± {_fmt(r['delta_std'], 100)}",
            ]
            for r in tables["table1"]
        ),
    )
    parts = [
        "## Table 1: target task (test split, macro exact match)",
        "Mean ± std over seeds; Δ is each seed's run minus the base model on that seed's own test split.",
        t1,
    ]
    if tables["table2"]:
        names = list(tables["table2"][0]["base"])
        t2 = _markdown(
            ["Configuration", "Localization", *names],
            (
                [
                    r["config"],
                    r["method"],
                    *(
                        _fmt(r["delta"].get(n), 100, 2, True) if "KL" not in n else _fmt(r["delta"].get(n), 1, 4, True)
                        for n in names
                    ),
                ]
                for r in tables["table2"]
            ),
        )
        base = tables["table2"][0]["base"]
        base_line = ", ".join(f"{n} {_fmt(v, 1, 4) if 'KL' in n else _fmt(v, 100)}" for n, v in base.items())
        parts += [
            "## Table 2: change on general abilities vs the base model (points; KL in nats)",
            f"Base: {base_line}",
            t2,
        ]
    if tables["table7"]:
        t7 = _markdown(
            ["Configuration", "Localization", "Query heads", "Key heads", "Value heads", "MLP neurons"],
            ([r["config"], r["method"], *(_fmt(r[k], digits=1) for k in COMPONENT_KINDS)] for r in tables["table7"]),
        )
        parts += ["## Table 7: circuit components per kind", t7]
    return "\n\n".join(parts) + "\n"


def plot_curves(runs: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Validation score by step: one line per (run, learning rate)."""
    curves = [(run, curve) for run in runs for curve in run.get("curves", [])]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run, curve in curves:
        steps = [h["step"] for h in curve["history"]]
        scores = [100 * h["score"] for h in curve["history"]]
        label = f"{run.get('name', run.get('config'))} lr={curve['lr']:g}"
        ax.plot(steps, scores, marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("validation exact match (%, macro)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_circuits(runs: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Selected components per layer and kind, one panel per run with a circuit."""
    with_circuit = [r for r in runs if r.get("circuit_layers") and r.get("config") != "CCA w/o mask"]
    if not with_circuit:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(with_circuit), figsize=(3 * len(with_circuit), 4), squeeze=False)
    for ax, run in zip(axes[0], with_circuit, strict=True):
        layers = run["circuit_layers"]
        num_layers = int(run.get("num_layers") or (max(map(int, layers)) + 1))
        grid = [[layers.get(str(layer), {}).get(kind, 0) for kind in COMPONENT_KINDS] for layer in range(num_layers)]
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(COMPONENT_KINDS)), COMPONENT_KINDS)
        ax.set_ylabel("layer")
        ax.set_title(run.get("name", run.get("config")), fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(runs: Sequence[Mapping[str, Any]], out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.json``, ``curves.png`` and ``circuits.png``; returns the tables."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"table1": table1(runs), "table2": table2(runs), "table7": table7(runs)}
    markdown = render_markdown(tables)
    figures = {"curves": plot_curves(runs, out / "curves.png"), "circuits": plot_circuits(runs, out / "circuits.png")}
    for name, figure in figures.items():
        if figure is not None:
            markdown += f"\n![{name}]({figure.name})\n"
    (out / "report.md").write_text(markdown)
    (out / "report.json").write_text(json.dumps(tables, indent=2) + "\n")
    return {**tables, "markdown": markdown, "figures": {k: str(v) for k, v in figures.items() if v is not None}}
