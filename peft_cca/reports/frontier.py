"""Target gain against forgetting: every validated step of every sweep as one point, and arms compared at matched gain.

Where a training sweep scored a selection split and measured forgetting at its validation steps, each trained
step is a point: its gain on the selection problems over the base (``selection_gain``, paired per problem, with
``selection_gain_stderr``) and the cross-entropy rise on held-out text (``forgetting``, nats/token, paired per
document). An arm that gains more only by training harder forgets more for it; the fair question is how much two
arms forget *at the same gain*.

Matching (:func:`matched_gain_rows`): each point of one arm is paired with the point of the other arm whose gain
is closest to it, among those within one standard error, ``|g_a - g_o| <= max(se_a, se_o)`` (with neither
stderr known, nothing matches). The larger of the
two errors makes the rule symmetric: A's point matches B's exactly when B's matches A's, so the two directions
of a comparison agree on which gains are indistinguishable, and a noisy point is not refused a partner that
its own noise cannot tell apart from it. Of equally close points, the one that forgot least (the other arm at
its best), then the first listed. The match is looked for on the same seed, whose selection problems (and base)
are the same, where the other arm has points on that seed; only where it has none, across seeds (the row says
so). A point with nothing within one standard error is a "no match" row: the arms did not reach that gain alike.

The forgetting difference of a match has the stderr ``sqrt(se_a^2 + se_o^2)``; a difference beyond twice that
is a clear one. Steps of one curve are not independent, and one point of the other arm may match several, so
the counts in :func:`matched_summary` describe the matches, not a test of the arms.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_cca.reports.tables import BASE, config_label, row_order

Point = Mapping[str, Any]  # {"arm", "seed", "lr", "step", "gain", "gain_stderr", "n", "forgetting", ...}
REFERENCE = "LoRA"  # arms whose label starts with this are the baseline every other arm is compared with
TIE_DIGITS = 9  # gains are differences of counts over n: equal distances that float arithmetic tells apart


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _point(arm: str, seed: Any, lr: float, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """A history entry as a frontier point; None without a finite gain and forgetting."""
    gain, forgetting = _number(entry.get("selection_gain")), _number(entry.get("forgetting"))
    if gain is None or forgetting is None:
        return None
    return {
        "arm": arm,
        "seed": seed,
        "lr": lr,
        "step": int(entry["step"]),
        "gain": gain,
        "gain_stderr": _number(entry.get("selection_gain_stderr")),
        "n": entry.get("selection_n"),
        "forgetting": forgetting,
        "forgetting_stderr": _number(entry.get("forgetting_stderr")),
    }


def _seed_order(seed: Any) -> tuple[int, Any]:
    return (0, seed) if isinstance(seed, (int, float)) else (1, str(seed))


def frontier_points(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per (arm, seed, lr, trained step) that has both a selection gain and forgetting, arms in
    Table 1's order, then by seed, the sweep's lrs and steps as recorded."""
    points = []
    for run in runs:
        arm = config_label(run)
        if arm == BASE:
            continue
        for curve in run.get("curves") or []:
            for entry in curve["history"]:
                point = _point(arm, run.get("seed"), float(curve["lr"]), entry) if entry["step"] > 0 else None
                if point is not None:
                    points.append(point)
    return sorted(points, key=lambda p: (row_order((p["arm"], "")), p["arm"], _seed_order(p["seed"])))


def arms_of(points: Sequence[Point]) -> list[str]:
    """The arms with points, in the order the points list them."""
    return list(dict.fromkeys(p["arm"] for p in points))


def arm_pairs(arms: Sequence[str], reference: str = REFERENCE) -> list[tuple[str, str]]:
    """Ordered pairs to compare: each arm against every reference (LoRA) arm and back, as the report asks whether
    CCA forgets less than LoRA; every ordered pair of distinct arms when no reference arm has points."""
    refs = [a for a in arms if a.startswith(reference)]
    pairs = []
    for arm in arms:
        for other in arms:
            if arm != other and (not refs or arm in refs or other in refs):
                pairs.append((arm, other))
    return pairs


def _distance(a: Point, o: Point) -> float:
    """How far apart two gains are, rounded so that equal distances compare equal."""
    return round(abs(a["gain"] - o["gain"]), TIE_DIGITS)


def _within(a: Point, o: Point) -> bool:
    """Whether two gains are within one standard error, the larger of the two (neither known: not)."""
    errors = [e for e in (a["gain_stderr"], o["gain_stderr"]) if e is not None]
    return bool(errors) and _distance(a, o) <= round(max(errors), TIE_DIGITS)


def _closest(point: Point, candidates: Sequence[Point]) -> Point | None:
    """The candidate within one stderr of ``point``'s gain and closest to it; of equals, the one forgetting least."""
    within = [o for o in candidates if _within(point, o)]
    return min(within, key=lambda o: (_distance(point, o), o["forgetting"])) if within else None


def _row(point: Point, match: Point | None, pairing: str, other: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "arm": point["arm"],
        "other": other,
        "match": pairing if match is not None else "no match",
        **{k: point[k] for k in ("seed", "lr", "step", "gain", "gain_stderr", "n", "forgetting", "forgetting_stderr")},
    }
    for key in ("seed", "lr", "step", "gain", "gain_stderr", "forgetting", "forgetting_stderr"):
        row[f"other_{key}"] = None if match is None else match[key]
    row["diff"] = row["diff_stderr"] = row["clear"] = None
    if match is not None:
        row["diff"] = point["forgetting"] - match["forgetting"]
        errors = (point["forgetting_stderr"], match["forgetting_stderr"])
        if None not in errors:
            row["diff_stderr"] = math.hypot(*errors)
            row["clear"] = abs(row["diff"]) > 2 * row["diff_stderr"]
    return row


def matched_gain_rows(points: Sequence[Point], arm: str, other: str) -> list[dict[str, Any]]:
    """For each point of ``arm``, the point of ``other`` at matched gain (see the module's rule) and the
    difference in forgetting, ``arm - other``, with its stderr and whether it is beyond twice that."""
    by_seed: dict[Any, list[Point]] = defaultdict(list)
    for p in points:
        if p["arm"] == other:
            by_seed[p["seed"]].append(p)
    everyone = [p for ps in by_seed.values() for p in ps]
    rows = []
    for point in (p for p in points if p["arm"] == arm):
        same = point["seed"] in by_seed
        candidates = by_seed[point["seed"]] if same else everyone
        rows.append(_row(point, _closest(point, candidates), "same seed" if same else "across seeds", other))
    return rows


def _points_text(gain: float | None, stderr: float | None) -> str:
    if gain is None:
        return "-"
    return f"{100 * gain:+.1f}" + ("" if stderr is None else f" ± {100 * stderr:.1f}")


def _nats_text(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" + ("" if stderr is None else f" ± {stderr:.4f}")


def _verdict(row: Mapping[str, Any]) -> str:
    if row["diff"] is None:
        return "-"
    if row["clear"] is None:
        return "stderr unknown"
    if not row["clear"]:
        return "within 2 se"
    return "forgot less" if row["diff"] < 0 else "forgot more"


def _table_line(row: Mapping[str, Any]) -> str:
    seed = "-" if row["seed"] is None else str(row["seed"])
    cells = [seed, f"{row['lr']:g}, {row['step']}", _points_text(row["gain"], row["gain_stderr"])]
    cells += [_nats_text(row["forgetting"], row["forgetting_stderr"]), row["match"]]
    if row["other_step"] is None:
        cells += ["-", "-", "-", "-", "-", "-"]
    else:
        cells += [
            "-" if row["other_seed"] is None else str(row["other_seed"]),
            f"{row['other_lr']:g}, {row['other_step']}",
            _points_text(row["other_gain"], row["other_gain_stderr"]),
            _nats_text(row["other_forgetting"], row["other_forgetting_stderr"]),
            _nats_text(row["diff"], row["diff_stderr"]),
            _verdict(row),
        ]
    return "| " + " | ".join(cells) + " |"


def matched_gain_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown, one table per (arm, other) in the rows: gains in points ± stderr, forgetting in nats/token ±
    stderr, the difference (arm - other) and whether it is beyond twice its stderr."""
    pairs: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        pairs[(row["arm"], row["other"])].append(row)
    tables = []
    for (arm, other), members in pairs.items():
        header = (
            f"| {arm}: seed | lr, step | gain (points) | forgetting (nats/token) | match | {other}: seed | lr, step | "
            f"gain (points) | forgetting (nats/token) | Δ forgetting ({arm} − {other}) | beyond 2 se |"
        )
        lines = [header, "|" + "---|" * 11, *map(_table_line, members)]
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + ("\n" if tables else "")


def _count(n: int, noun: str = "point") -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def matched_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """One plain sentence for one direction (arm against other): how many points found a match, and in how many
    of those the arm forgot clearly less, clearly more, or no differently; no claim where nothing matched."""
    if not rows:
        return ""
    arm, other = rows[0]["arm"], rows[0]["other"]
    matched = [r for r in rows if r["match"] != "no match"]
    if not matched:
        return f"{arm} against {other}: no match within one standard error for its {_count(len(rows))}; no claim."
    across = sum(r["match"] == "across seeds" for r in matched)
    where = f", {across} across seeds" if across else ""
    less = sum(r["clear"] is True and r["diff"] < 0 for r in matched)
    more = sum(r["clear"] is True and r["diff"] > 0 for r in matched)
    unclear = sum(r["clear"] is False for r in matched)
    unknown = len(matched) - less - more - unclear
    text = (
        f"{arm} against {other} at matched gain ({len(matched)} of {_count(len(rows))} matched{where}): "
        f"{arm} forgot less in {less} by more than 2 se, more in {more}, no clear difference in {unclear}"
    )
    return text + (f", stderr unknown in {unknown}" if unknown else "") + "."


def _n_text(points: Sequence[Point]) -> str:
    sizes = sorted({int(p["n"]) for p in points if p["n"] is not None})
    if not sizes:
        return "n not recorded"
    return f"n={sizes[0]}" if len(sizes) == 1 else f"n={sizes[0]}–{sizes[-1]}"


def frontier_section(points: Sequence[Point]) -> tuple[list[dict[str, Any]], str]:
    """The matched rows of every compared pair and the report's Markdown section for them."""
    rows: list[dict[str, Any]] = []
    parts = [
        "## Target gain against forgetting (frontier)",
        f"Every validated step of every sweep ({len(points)} points; selection problems per seed: "
        f"{_n_text(points)}): its gain over the base on the selection split (points, paired stderr) and its "
        "forgetting (cross-entropy rise on held-out text, nats/token, paired stderr). Each point of one arm is "
        "matched with the other arm's point closest in gain within one standard error (the larger of the two), on "
        "the same seed where the other arm has it, else across seeds; of equally close, the one that forgot least. "
        "Steps of one curve are not independent and a point may be matched more than once: the counts describe "
        "the matches, they are not a test.",
    ]
    for arm, other in arm_pairs(arms_of(points)):
        pair_rows = matched_gain_rows(points, arm, other)
        rows += pair_rows
        parts += [f"### {arm} against {other}", matched_summary(pair_rows), matched_gain_table(pair_rows).rstrip()]
    return rows, "\n\n".join(parts) + "\n"


def plot_frontier(points: Sequence[Point], path: Path) -> Path | None:
    """Gain (points) against forgetting (nats/token), a colour and marker per arm, ±2 stderr bars both ways,
    a thin line through the steps of each (arm, seed, lr) curve; None without points."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = arms_of(points)
    markers = "osD^vP*Xh<>"
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for index, arm in enumerate(arms):
        color = matplotlib.colormaps["tab10"](index % 10)
        curves: dict[tuple[Any, float], list[Point]] = defaultdict(list)
        for p in points:
            if p["arm"] == arm:
                curves[(p["seed"], p["lr"])].append(p)
        for members in curves.values():
            members = sorted(members, key=lambda p: p["step"])
            xs, ys = [100 * p["gain"] for p in members], [p["forgetting"] for p in members]
            ax.plot(xs, ys, color=color, linewidth=0.6, alpha=0.5)
            ax.errorbar(
                xs,
                ys,
                xerr=[2 * 100 * (p["gain_stderr"] or 0.0) for p in members],
                yerr=[2 * (p["forgetting_stderr"] or 0.0) for p in members],
                fmt=markers[index % len(markers)],
                color=color,
                markersize=4,
                elinewidth=0.6,
                capsize=2,
                alpha=0.85,
                linestyle="none",
            )
        ax.plot([], [], marker=markers[index % len(markers)], color=color, linestyle="none", label=arm)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("target gain on the selection split (points)")
    ax.set_ylabel("forgetting (nats/token)")
    ax.set_title("Target gain against forgetting, bars ±2 stderr; a line per (seed, lr) curve", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
