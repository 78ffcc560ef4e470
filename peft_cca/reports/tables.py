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
import math
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


def scored_n(run: Mapping[str, Any]) -> int | None:
    """How many test problems a run was scored on (its groups' sum where ``n`` is missing); None when unknown."""
    test = run["test"]
    if test.get("n"):
        return int(test["n"])
    sizes = [g.get("n") for g in test.get("groups", {}).values()]
    return sum(sizes) if sizes and all(sizes) else None


def accuracy_stderr(run: Mapping[str, Any]) -> float | None:
    """Binomial standard error of the macro test accuracy: per group ``sqrt(a(1-a)/n)``, combined as the macro
    mean combines the groups; None when the run does not say how many problems it scored."""
    test = run["test"]
    groups = list(test.get("groups", {}).values())
    if groups and all(g.get("n") for g in groups):
        return math.sqrt(sum(g["accuracy"] * (1 - g["accuracy"]) / g["n"] for g in groups)) / len(groups)
    n = scored_n(run)
    return math.sqrt(test["macro"] * (1 - test["macro"]) / n) if n else None


def _per_problem(run: Mapping[str, Any]) -> dict[str, tuple[str, bool]] | None:
    """``{problem id: (group, correct)}`` from ``test.completions`` (``evaluate_exact_match(...,
    return_completions=True)``); None where the eval JSON keeps only per-group accuracies."""
    completions = run["test"].get("completions")
    if not completions:
        return None
    return {str(c["id"]): (c["group_id"], bool(c["correct"])) for c in completions}


def paired_stderr(run: Mapping[str, Any], base: Mapping[str, Any]) -> float | None:
    """Paired standard error of the macro change against ``base``: per group the stdev of per-problem differences
    over sqrt(n), combined as the macro mean combines groups. None unless both runs kept per-problem results on
    the same problems (two or more per group)."""
    mine, theirs = _per_problem(run), _per_problem(base)
    if mine is None or theirs is None or set(mine) != set(theirs):
        return None
    diffs: dict[str, list[float]] = defaultdict(list)
    for pid, (group, ok) in mine.items():
        diffs[group].append(float(ok) - float(theirs[pid][1]))
    if any(len(d) < 2 for d in diffs.values()):
        return None
    return math.sqrt(sum(statistics.variance(d) / len(d) for d in diffs.values())) / len(diffs)


def _delta_stderr(member: Mapping[str, Any], base_runs: Sequence[Mapping[str, Any]]) -> tuple[float | None, str]:
    """One run's change against the base of its seed: its standard error and which it is ("paired" per problem,
    else "unpaired" ``sqrt(se_run^2 + se_base^2)``; against the mean base where the seed has none)."""
    same = [b for b in base_runs if b.get("seed") == member.get("seed")]
    if same:
        paired = paired_stderr(member, same[0])
        if paired is not None:
            return paired, "paired"
    refs = same[:1] or base_runs
    errors = [accuracy_stderr(member), *(accuracy_stderr(b) for b in refs)]
    if any(e is None for e in errors):
        return None, "unpaired"
    base_se = math.sqrt(sum(e * e for e in errors[1:])) / len(refs)
    return math.hypot(errors[0], base_se), "unpaired"


def _mean_error(errors: Sequence[float | None]) -> float | None:
    """Standard error of a mean over seeds from each seed's own; None when any is unknown."""
    if not errors or any(e is None for e in errors):
        return None
    return math.sqrt(sum(e * e for e in errors)) / len(errors)


def _delta_fields(
    members: Sequence[Mapping[str, Any]], base_runs: Sequence[Mapping[str, Any]], is_base: bool
) -> dict[str, Any]:
    """Table 1's change columns: mean paired delta, its spread over seeds, its measurement stderr and kind."""
    if not base_runs:
        return {"delta": None, "delta_std": None, "delta_stderr": None, "delta_stderr_kind": None}
    deltas = paired_deltas(members, base_runs, lambda r: r["test"]["macro"])
    if is_base:  # each base run against itself: zero by construction, no noise to state
        errors, kind = [], "reference"
    else:
        measured = [_delta_stderr(m, base_runs) for m in members]
        errors, kinds = [e for e, _ in measured], {k for _, k in measured}
        kind = "paired" if kinds == {"paired"} else "unpaired"
    return {
        "delta": statistics.fmean(deltas),
        "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else None,
        "delta_stderr": _mean_error(errors),
        "delta_stderr_kind": kind,
    }


def table1(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Configuration, method, dataset size, % mask, test accuracy, paired delta vs the base, and their noise.

    Several seeds: mean and std over seeds (``test_std``, ``delta_std``). One seed: no spread is known
    (``test_std``/``delta_std`` None), so its noise is the measurement's own: ``test_stderr`` (binomial over the
    ``n_problems`` scored) and ``delta_stderr`` (paired per problem where the eval JSON kept per-problem results,
    else unpaired, ``delta_stderr_kind`` says which). Both stderrs are also given, over seeds, for several seeds.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[row_key(run)].append(run)
    base_runs = [r for r in runs if r.get("config") == BASE]
    rows = []
    for key in sorted(groups, key=row_order):
        members = groups[key]
        scores = [r["test"]["macro"] for r in members]
        masks = [r["mask_percent"] for r in members if r.get("mask_percent") is not None]
        sizes = [trained_on(r)[0] for r in members if trained_on(r)[0] is not None]
        rows.append(
            {
                "config": key[0],
                "method": key[1],
                "seeds": len(members),
                "dataset_size": statistics.fmean(sizes) if sizes else None,
                "dataset_unit": trained_on(members[0])[1],
                "mask_percent": statistics.fmean(masks) if masks else None,
                "n_problems": sorted({n for n in map(scored_n, members) if n is not None}),
                "test_mean": statistics.fmean(scores),
                "test_std": statistics.stdev(scores) if len(scores) > 1 else None,
                "test_stderr": _mean_error([accuracy_stderr(r) for r in members]),
                **_delta_fields(members, base_runs, key[0] == BASE),
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


def _n_text(sizes: Sequence[int]) -> str:
    if not sizes:
        return "n unknown"
    return f"n={sizes[0]}" if len(sizes) == 1 else f"n={sizes[0]}–{sizes[-1]}"


def _plus_minus(value: str, spread: float | None) -> str:
    return value if spread is None else f"{value} ± {_fmt(spread, 100)}"


def noise_note(row: Mapping[str, Any]) -> str:
    """What a Table 1 row's ± is: the spread over its seeds, or (one seed) the binomial and paired/unpaired
    stderr, with the number of test problems each seed scored."""
    n = _n_text(row["n_problems"])
    if row["seeds"] > 1:
        return f"std over {row['seeds']} seeds, {n} each"
    text = f"binomial stderr, {n}" if row["test_stderr"] is not None else f"stderr unknown ({n})"
    kind = row.get("delta_stderr_kind")
    if row["delta_stderr"] is not None and kind in ("paired", "unpaired"):
        text += f"; Δ: {kind} stderr"
    return text


def _table1_cells(r: Mapping[str, Any]) -> list[str]:
    several = r["seeds"] > 1
    test = _plus_minus(_fmt(r["test_mean"], 100), r["test_std"] if several else r["test_stderr"])
    if r["delta_stderr_kind"] == "reference":
        delta = "0 (reference)"
    else:
        delta = _plus_minus(_fmt(r["delta"], 100, signed=True), r["delta_std"] if several else r["delta_stderr"])
    return [
        r["config"],
        r["method"],
        str(r["seeds"]),
        "-" if r["dataset_size"] is None else f"{r['dataset_size']:.0f} {r['dataset_unit']}",
        _fmt(r["mask_percent"], digits=3),
        test,
        delta,
        noise_note(r),
    ]


TABLE1_NOTE = (
    "Δ is each seed's run minus the base model on that seed's own test split. ± is the std over seeds where a "
    "row has several; with one seed no spread is known, so ± is the measurement's standard error: binomial for "
    "the accuracy, and for Δ paired per problem where the eval JSON keeps per-problem results "
    "(`test.completions`), else unpaired, sqrt(se_run² + se_base²), which overstates the noise when both models "
    "tend to solve the same problems. The last column says which, with the test problems per seed. "
    "CCA trains on pivots (one record per localized error), LoRA on the training problems."
)


def render_markdown(tables: Mapping[str, list[dict[str, Any]]]) -> str:
    t1 = _markdown(
        [
            "Configuration",
            "Localization",
            "Seeds",
            "Trained on",
            "% Mask",
            "Test accuracy (%)",
            "Δ vs base (points)",
            "± is",
        ],
        map(_table1_cells, tables["table1"]),
    )
    parts = ["## Table 1: target task (test split, macro exact match)", TABLE1_NOTE, t1]
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
