"""Table 2: general abilities, each figure with its n and standard error, each arm's change with its own.

A run's general section (``peft-cca evaluate``) holds the retention suite (exact match per task), the
cross-entropy on held-out general text (per-document sums, so the change is paired per document, as PEFT's
method_comparison measures forgetting), KL drift, and lm-eval tasks (offline or hub) with lm-eval's stderr.

An arm's change on a benchmark is the mean over seeds of its run minus the base run of the same seed. Its
standard error combines the measurement errors of both runs of each seed (``sqrt(sum(se_arm^2 + se_base^2)) / k``;
for cross-entropy the paired per-document error of the rise instead); with several seeds the spread over seeds is
reported beside it. A change is *marked* where it is a loss larger than twice its standard error: a drop in
accuracy, a rise in cross-entropy or drift. Anything smaller is within noise and the table says so.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CROSS_ENTROPY = "cross-entropy (nats/token)"
KL = "KL drift (nats)"
LM_EVAL_METRICS = ("acc", "exact_match", "mc2", "acc_norm")


@dataclass(frozen=True)
class Measure:
    """One general figure of one run: value, standard error (None where none is known), n, and its direction."""

    value: float
    stderr: float | None
    n: int | None
    higher_is_better: bool = True
    unit: str = "%"  # "%" (a fraction shown in points) or "nats"


def _binomial(accuracy: float, n: int) -> float | None:
    return math.sqrt(accuracy * (1.0 - accuracy) / n) if n else None


def _retention(retention: Mapping[str, Any]) -> dict[str, Measure]:
    groups = retention.get("groups", {})
    out: dict[str, Measure] = {}
    errors = []
    for task, scores in groups.items():
        n = scores.get("n")
        stderr = _binomial(scores["accuracy"], n) if n else None
        errors.append(stderr)
        out[f"retention: {task}"] = Measure(scores["accuracy"], stderr, n)
    known = all(e is not None for e in errors) and errors
    macro_se = math.sqrt(sum(e * e for e in errors)) / len(errors) if known else None
    return {"retention (macro)": Measure(retention["macro"], macro_se, retention.get("n")), **out}


def _lm_eval(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, Measure]:
    out = {}
    for task, metrics in tasks.items():
        for metric in LM_EVAL_METRICS:
            if metric in metrics:
                stderr = metrics.get(f"{metric}_stderr")
                usable = isinstance(stderr, (int, float)) and math.isfinite(stderr)
                n = metrics.get("n")
                out[f"{task} {metric}"] = Measure(metrics[metric], stderr if usable else None, int(n) if n else None)
                break
    return out


def general_measures(run: Mapping[str, Any]) -> dict[str, Measure]:
    """Every general figure of a run, by the name Table 2 shows it under."""
    general = run.get("general", {})
    out: dict[str, Measure] = {}
    if general.get("retention"):
        out.update(_retention(general["retention"]))
    ce = general.get("cross_entropy")
    if ce:
        out[CROSS_ENTROPY] = Measure(ce["mean"], ce["stderr"], ce["n_tokens"], higher_is_better=False, unit="nats")
    if general.get("kl") is not None:
        out[KL] = Measure(general["kl"], None, None, higher_is_better=False, unit="nats")
    out.update(_lm_eval(general.get("lm_eval") or {}))
    return out


def _paired_rise(base: Mapping[str, Any], tuned: Mapping[str, Any]) -> tuple[float, float] | None:
    """The cross-entropy rise and its per-document paired stderr, when both runs scored the same documents."""
    b, t = base["general"].get("cross_entropy"), tuned["general"].get("cross_entropy")
    if not b or not t or list(b.get("doc_tokens", ())) != list(t.get("doc_tokens", ())) or not b.get("doc_tokens"):
        return None
    from peft_cca.evaluation.forgetting import CrossEntropy, forgetting

    fields = ("mean", "stderr", "n_tokens", "n_docs", "doc_nll", "doc_tokens")
    rise = forgetting(CrossEntropy(**{k: b[k] for k in fields}), CrossEntropy(**{k: t[k] for k in fields}))
    return rise.delta, rise.stderr


def _change(
    name: str, member: Mapping[str, Any], base: Mapping[str, Any], arm: Measure, ref: Measure
) -> tuple[float, float | None]:
    """One seed's change on ``name`` (``arm`` against ``ref``, the base run's figure) and its standard error."""
    if name == CROSS_ENTROPY:
        paired = _paired_rise(base, member)
        if paired is not None:
            return paired
    stderr = None if arm.stderr is None or ref.stderr is None else math.hypot(arm.stderr, ref.stderr)
    return arm.value - ref.value, stderr


def is_loss(measure: Measure, delta: float, stderr: float | None) -> bool:
    """A change that is a loss (drop, or rise of a lower-is-better figure) beyond twice its standard error."""
    if stderr is None or not math.isfinite(stderr):
        return False
    worse = -delta if measure.higher_is_better else delta
    return worse > 2 * stderr


def _base_for(member: Mapping[str, Any], base_runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The base run of the member's seed (demo seeds are replicates with their own splits), else the first."""
    return next((b for b in base_runs if b.get("seed") == member.get("seed")), base_runs[0])


def table2(runs: Sequence[Mapping[str, Any]], row_key, row_order) -> list[dict[str, Any]]:
    """Per arm: ``base`` figures, ``delta`` (mean over seeds), ``delta_stderr``, ``delta_spread``, ``marked``."""
    base_runs = [r for r in runs if r.get("config") == "Base"]
    if not base_runs:
        return []
    measured = {id(r): general_measures(r) for r in runs}  # each run's figures, read once
    base_measures = [measured[id(r)] for r in base_runs]
    names = [n for n in base_measures[0] if all(n in m for m in base_measures)]
    base = {n: _mean_measure([m[n] for m in base_measures]) for n in names}
    # measures some base seeds lack (a suite that changed between seeds) cannot be averaged: say which, not nothing
    partial: dict[str, list[Any]] = {}
    for run, measures in zip(base_runs, base_measures, strict=True):
        for name in measures:
            if name not in base:
                partial.setdefault(name, []).append(run.get("seed"))
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        if run.get("config") != "Base":
            groups[row_key(run)].append(run)
    rows = []
    for key in sorted(groups, key=row_order):
        members = groups[key]
        delta, delta_stderr, spread, marked = {}, {}, {}, []
        for name in names:
            if not all(name in measured[id(m)] for m in members):
                continue
            pairs = [(m, _base_for(m, base_runs)) for m in members]
            changes = [_change(name, m, b, measured[id(m)][name], measured[id(b)][name]) for m, b in pairs]
            values = [c[0] for c in changes]
            errors = [c[1] for c in changes]
            delta[name] = statistics.fmean(values)
            delta_stderr[name] = (
                None if any(e is None for e in errors) else math.sqrt(sum(e * e for e in errors)) / len(errors)
            )
            spread[name] = statistics.stdev(values) if len(values) > 1 else None
            if is_loss(base[name], delta[name], delta_stderr[name]):
                marked.append(name)
        rows.append(
            {
                "config": key[0],
                "method": key[1],
                "seeds": len(members),
                "base": {n: m.value for n, m in base.items()},
                "base_stderr": {n: m.stderr for n, m in base.items()},
                "n": {n: m.n for n, m in base.items()},
                "units": {n: m.unit for n, m in base.items()},
                "delta": delta,
                "delta_stderr": delta_stderr,
                "delta_spread": spread,
                "marked": marked,
                "left_out": partial,
            }
        )
    return rows


def _mean_measure(measures: Sequence[Measure]) -> Measure:
    """The base model's figure over seeds: mean value, stderr of that mean, mean n."""
    errors = [m.stderr for m in measures]
    stderr = None if any(e is None for e in errors) else math.sqrt(sum(e * e for e in errors)) / len(errors)
    ns = [m.n for m in measures if m.n is not None]
    first = measures[0]
    return Measure(
        statistics.fmean(m.value for m in measures),
        stderr,
        round(statistics.fmean(ns)) if ns else None,
        first.higher_is_better,
        first.unit,
    )


def fmt_change(value: float | None, stderr: float | None, unit: str, marked: bool = False) -> str:
    """``+1.2 ± 0.8`` in points (or nats), bold with a ▼ where it is a loss beyond twice its stderr."""
    if value is None:
        return "-"
    scale, digits = (100.0, 1) if unit == "%" else (1.0, 4)
    text = f"{value * scale:+.{digits}f}" + ("" if stderr is None else f" ± {stderr * scale:.{digits}f}")
    return f"**{text}** ▼" if marked else text


def fmt_figure(value: float, stderr: float | None, n: int | None, unit: str) -> str:
    scale, digits = (100.0, 1) if unit == "%" else (1.0, 4)
    text = f"{value * scale:.{digits}f}" + ("" if stderr is None else f" ± {stderr * scale:.{digits}f}")
    return text + ("" if n is None else f" (n={n})")


def render_table2(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown parts: a heading, the base figures with n and stderr, and the table of changes."""
    names = list(rows[0]["base"])
    units = rows[0]["units"]
    header = ["Configuration", "Localization", "Seeds", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [fmt_change(r["delta"].get(n), r["delta_stderr"].get(n), units[n], n in r["marked"]) for n in names]
        lines.append("| " + " | ".join([r["config"], r["method"], str(r["seeds"]), *cells]) + " |")
    first = rows[0]
    base = "; ".join(
        f"{n} {fmt_figure(first['base'][n], first['base_stderr'][n], first['n'][n], units[n])}" for n in names
    )
    marked = any(r["marked"] for r in rows)
    left_out = first.get("left_out") or {}
    note = [
        "Left out, measured on some base seeds only: "
        + "; ".join(
            f"{n} (seed{'s' if len(seeds) > 1 else ''} {', '.join(str(seed) for seed in seeds)})"
            for n, seeds in left_out.items()
        )
    ]
    return [
        "## Table 2: change on general abilities vs the base model (points; nats for cross-entropy and KL)",
        "Each change is mean ± standard error over seeds of the run minus the base run of its seed; "
        "**bold ▼** marks a loss larger than twice its standard error"
        + ("." if marked else " (none here: every change is within noise)."),
        f"Base: {base}",
        *(note if left_out else []),
        "\n".join(lines),
    ]


LETTERS = ("A", "B", "C", "D")


def letter_share_rows(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per run and multiple-choice task that recorded them (MMLU: ``pred_A`` ... ``pred_D``), the share of each
    letter the model picked beside its accuracy: an accuracy near the share of gold answers that are one letter is
    letter bias, not knowledge."""
    rows = []
    for run in runs:
        for task, metrics in sorted(((run.get("general") or {}).get("lm_eval") or {}).items()):
            if all(f"pred_{letter}" in metrics for letter in LETTERS):
                shares = {letter: metrics[f"pred_{letter}"] for letter in LETTERS}
                rows.append(
                    {"run": run.get("name"), "task": task, "acc": metrics.get("acc"), "n": metrics.get("n"), **shares}
                )
    return rows


def render_letter_shares(rows: Sequence[Mapping[str, Any]]) -> str:
    """The letter-share table of :func:`letter_share_rows`, in markdown."""
    header = "| Run | Task | n | acc | " + " | ".join(f"picked {letter}" for letter in LETTERS) + " |"
    lines = [header, "|" + "---|" * (4 + len(LETTERS))]
    for r in rows:
        shares = " | ".join(f"{100 * r[letter]:.0f}%" for letter in LETTERS)
        acc = "-" if r["acc"] is None else f"{100 * r['acc']:.1f}%"
        lines.append(f"| {r['run']} | {r['task']} | {r['n']} | {acc} | {shares} |")
    return "\n".join(lines)
