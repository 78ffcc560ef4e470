"""Side-by-side reports of evaluated runs: the paper's Tables 1, 2 and 7 in Markdown and JSON, and plots.

A *run* is the JSON that ``peft-cca evaluate`` writes (:func:`peft_cca.evaluation.model_eval.evaluate_model` plus
provenance): ``name``, ``config`` ("Base", "CCA w/ mask", "CCA w/o mask", "LoRA"), ``label`` (which "w/o
mask" ablation, from amplify.json), ``method``, ``seed``, ``dataset_size`` (pivots), ``train_problems``
(LoRA), ``mask_percent``, ``circuit_counts``, ``circuit_layers``, ``kind_sizes``, ``test``, ``general``,
``curves`` (validation score by step per learning rate) and ``kept`` (the lr and step of the saved adapter).
Runs with the same configuration and localization method are seeds of one row: mean and standard deviation
across them.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.method.arch import COMPONENT_KINDS
from peft_cca.reports.general import general_measures, render_table2
from peft_cca.reports.general import table2 as general_table2

BASE = "Base"
# The two "w/o mask" ablations: the authors update every parameter of the model; ours before the label
# existed updated every component site a circuit can hold (all q/k/v head rows and MLP neurons).
NOMASK_ALL = "CCA w/o mask (all parameters)"
NOMASK_SITES = "CCA w/o mask (circuit sites)"
CONFIG_ORDER = (BASE, "CCA w/ mask", NOMASK_ALL, NOMASK_SITES, "LoRA")


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
    return [_read_run(file) for file in files]


def _read_run(file: Path) -> dict[str, Any]:
    """One run JSON; a damaged or foreign file is one line naming it, not a JSON traceback."""
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{file} is not valid JSON ({err}): run `peft-cca evaluate` again to rewrite it") from err
    if not isinstance(data, dict):
        raise UsageError(f"{file} holds a {type(data).__name__}, not a run written by `peft-cca evaluate`: drop it")
    return data


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def config_label(run: Mapping[str, Any]) -> str:
    """The row label of a run: its configuration, with the "w/o mask" ablation named (amplify.json's label)."""
    config = run.get("config", "?")
    if config != "CCA w/o mask":
        return config
    label = run.get("label")
    if not label:
        return NOMASK_SITES
    return label if label.startswith("CCA") else f"CCA {label}"


def row_key(run: Mapping[str, Any]) -> tuple[str, str]:
    return config_label(run), run.get("method") or "-"


def trained_on(run: Mapping[str, Any]) -> tuple[float | None, str]:
    """How much the run trained on and in what: CCA on pivots (records), LoRA on training problems, Base on nothing."""
    config = run.get("config")
    if config == BASE:
        return None, "-"
    if config == "LoRA":
        return run.get("train_problems"), "problems"
    return run.get("dataset_size"), "pivots"


def row_order(key: tuple[str, str]) -> tuple[int, str]:
    config, method = key
    return (CONFIG_ORDER.index(config) if config in CONFIG_ORDER else len(CONFIG_ORDER), method)


def general_metrics(run: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``{benchmark: value}`` of a run's general figures (see :mod:`peft_cca.reports.general`)."""
    return {name: measure.value for name, measure in general_measures(run).items()}


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
        groups[row_key(run)].append(run)
    base_runs = [r for r in runs if r.get("config") == BASE]
    rows = []
    for key in sorted(groups, key=row_order):
        members = groups[key]
        mean, std = _mean_std([r["test"]["macro"] for r in members])
        masks = [r["mask_percent"] for r in members if r.get("mask_percent") is not None]
        sizes = [trained_on(r)[0] for r in members if trained_on(r)[0] is not None]
        deltas = paired_deltas(members, base_runs, lambda r: r["test"]["macro"]) if base_runs else None
        rows.append(
            {
                "config": key[0],
                "method": key[1],
                "seeds": len(members),
                "dataset_size": statistics.fmean(sizes) if sizes else None,
                "dataset_unit": trained_on(members[0])[1],
                "mask_percent": statistics.fmean(masks) if masks else None,
                "test_mean": mean,
                "test_std": std,
                "delta": None if deltas is None else statistics.fmean(deltas),
                "delta_std": None if deltas is None else _mean_std(deltas)[1],
            }
        )
    return rows


def table2(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration, the change of every general benchmark against the base model, with its stderr."""
    return general_table2(runs, row_key, row_order)


def table7(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Components per kind of each CCA configuration's circuit (mean over seeds)."""
    groups: dict[tuple[str, str], list[Mapping[str, int]]] = defaultdict(list)
    for run in runs:
        if run.get("circuit_counts"):
            groups[row_key(run)].append(run["circuit_counts"])
    return [
        {
            "config": key[0],
            "method": key[1],
            **{kind: statistics.fmean(c.get(kind, 0) for c in counts) for kind in COMPONENT_KINDS},
        }
        for key, counts in sorted(groups.items(), key=lambda item: row_order(item[0]))
    ]


def template_deltas(runs: Sequence[Mapping[str, Any]], largest: int = 3) -> list[dict[str, Any]]:
    """Per configuration, the change of every test group (GSM-Symbolic template) against the base model.

    Each run is paired with the base on its own seed (as in Table 1) and the change of a group averaged over
    seeds; a group counts as improved or worsened when that mean is above or below zero. Gains and harms are
    the ``largest`` changes each way, ``(group, change)``.
    """
    base_by_seed = {r.get("seed"): r["test"].get("groups", {}) for r in runs if r.get("config") == BASE}
    if not base_by_seed:
        return []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.get("config") != BASE and run["test"].get("groups"):
            groups[row_key(run)].append(run)
    rows = []
    for key in sorted(groups, key=row_order):
        changes: dict[str, list[float]] = defaultdict(list)
        for run in groups[key]:
            base = base_by_seed.get(run.get("seed")) or next(iter(base_by_seed.values()))
            for group, value in run["test"]["groups"].items():
                if group in base:
                    changes[group].append(value["accuracy"] - base[group]["accuracy"])
        mean = {group: statistics.fmean(values) for group, values in changes.items()}
        ranked = sorted(mean.items(), key=lambda item: (item[1], item[0]))
        rows.append(
            {
                "config": key[0],
                "method": key[1],
                "groups": len(mean),
                "improved": sum(v > 0 for v in mean.values()),
                "worsened": sum(v < 0 for v in mean.values()),
                "unchanged": sum(v == 0 for v in mean.values()),
                "gains": [(g, v) for g, v in reversed(ranked[-largest:]) if v > 0],
                "harms": [(g, v) for g, v in ranked[:largest] if v < 0],
                "changes": mean,
            }
        )
    return rows


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * scale:{'+' if signed else ''}.{digits}f}"


def _changes(pairs: Sequence[tuple[str, float]]) -> str:
    return ", ".join(f"{group} {100 * value:+.1f}" for group, value in pairs) or "-"


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(tables: Mapping[str, list[dict[str, Any]]]) -> str:
    t1 = _markdown(
        ["Configuration", "Localization", "Seeds", "Trained on", "% Mask", "Test accuracy (%)", "Δ (paired)"],
        (
            [
                r["config"],
                r["method"],
                str(r["seeds"]),
                "-" if r["dataset_size"] is None else f"{r['dataset_size']:.0f} {r['dataset_unit']}",
                _fmt(r["mask_percent"], digits=3),
                f"{_fmt(r['test_mean'], 100)} ± {_fmt(r['test_std'], 100)}",
                f"{_fmt(r['delta'], 100, signed=True)} ± {_fmt(r['delta_std'], 100)}",
            ]
            for r in tables["table1"]
        ),
    )
    parts = [
        "## Table 1: target task (test split, macro exact match)",
        "Mean ± std over seeds; Δ is each seed's run minus the base model on that seed's own test split. "
        "CCA trains on pivots (one record per localized error), LoRA on the training problems.",
        t1,
    ]
    if any(row["groups"] > 1 for row in tables.get("templates", [])):  # one group: Table 1 says it all
        shown = _markdown(
            [
                "Configuration",
                "Localization",
                "Groups",
                "Improved",
                "Worsened",
                "Unchanged",
                "Largest gains",
                "Largest harms",
            ],
            (
                [
                    r["config"],
                    r["method"],
                    str(r["groups"]),
                    str(r["improved"]),
                    str(r["worsened"]),
                    str(r["unchanged"]),
                    _changes(r["gains"]),
                    _changes(r["harms"]),
                ]
                for r in tables["templates"]
            ),
        )
        parts += [
            "### Per template (test group): change vs the base model",
            "Mean over seeds of each group's paired change; gains and harms in points.",
            shown,
        ]
    if tables["table2"]:
        parts += render_table2(tables["table2"])
    if tables["table7"]:
        t7 = _markdown(
            ["Configuration", "Localization", "Query heads", "Key heads", "Value heads", "MLP neurons"],
            ([r["config"], r["method"], *(_fmt(r[k], digits=1) for k in COMPONENT_KINDS)] for r in tables["table7"]),
        )
        parts += ["## Table 7: circuit components per kind", t7]
    return "\n\n".join(parts) + "\n"
