"""Where `make demo`'s time goes: the wall time of every stage, and inside them of evaluation's sections and of the
readings a sweep takes besides training (validation, forgetting, the selection split).

Runs ``peft-cca demo`` (the quick preset unless told) into a fresh folder and reads what it wrote: the seconds of each
stage (``stages/<name>.json``), each evaluation's ``seconds`` per section, each sweep run's ``seconds``. Or, with
``--read``, only reads a finished demo folder. Usage::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/demo_stages.py --out runs/bench-demo --json results/demo-stages.json
    python benchmarks/demo_stages.py --read runs/demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def kind_of(stage: str) -> str:
    """The kind of a stage name such as ``evaluate-lora-seed0`` or ``cca-nomask-seed0``."""
    name = stage.rsplit("-seed", 1)[0]
    return "evaluate" if name.startswith("evaluate-") else name


def read_demo(out: Path) -> dict[str, Any]:
    """Seconds per stage, per kind, per evaluation section and per sweep reading, from a demo folder."""
    stages = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((out / "stages").glob("*.json"))}
    if not stages:
        raise SystemExit(f"{out} holds no finished stage (stages/*.json): run the demo first")
    by_kind: dict[str, float] = defaultdict(float)
    for stage, seconds in stages.items():
        by_kind[kind_of(stage)] += seconds
    sections: dict[str, float] = defaultdict(float)
    for path in sorted((out / "eval").glob("*.json")):
        for section, seconds in (json.loads(path.read_text()).get("seconds") or {}).items():
            sections[section] += seconds
    readings: dict[str, float] = defaultdict(float)
    for path in sorted(out.glob("seed*/*/*.json")):
        if path.name in ("amplify.json", "lora.json"):
            for run in json.loads(path.read_text()).get("runs", []):
                for reading, seconds in (run.get("seconds") or {}).items():
                    readings[f"{path.parent.name} {reading}"] += seconds
    return {
        "stages": stages,
        "by_kind": dict(by_kind),
        "evaluation_sections": dict(sections),
        "sweep_readings": dict(readings),
        "total": sum(stages.values()),
    }


def print_table(timings: dict[str, Any]) -> None:
    total = timings["total"]
    print(f"demo: {total:.0f} s in all ({total / 60:.1f} min)")
    print(f"{'stage':<28}{'seconds':>9}{'share':>8}")
    for stage, seconds in timings["stages"].items():
        print(f"{stage:<28}{seconds:>9.0f}{100 * seconds / total:>7.1f}%")
    print(f"\n{'by kind':<28}{'seconds':>9}{'share':>8}")
    for kind, seconds in sorted(timings["by_kind"].items(), key=lambda item: -item[1]):
        print(f"{kind:<28}{seconds:>9.0f}{100 * seconds / total:>7.1f}%")
    print(f"\n{'evaluation sections (all)':<28}{'seconds':>9}")
    for section, seconds in sorted(timings["evaluation_sections"].items(), key=lambda item: -item[1]):
        print(f"{section:<28}{seconds:>9.0f}")
    print(f"\n{'sweep runs and readings':<28}{'seconds':>9}")
    for reading, seconds in sorted(timings["sweep_readings"].items(), key=lambda item: -item[1]):
        print(f"{reading:<28}{seconds:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read", type=Path, help="only read this finished demo folder")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-demo"), help="demo folder (removed first)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument("demo_args", nargs="*", help="more `peft-cca demo` flags, after --")
    args = parser.parse_args()
    folder = args.read
    wall = None
    if folder is None:
        shutil.rmtree(args.out, ignore_errors=True)
        command = [sys.executable, "-m", "peft_cca.cli", "demo", "--preset", args.preset, "--out", str(args.out)]
        start = time.perf_counter()
        subprocess.run([*command, *args.demo_args], check=True)
        wall, folder = time.perf_counter() - start, args.out
    timings = read_demo(folder)
    print_table(timings)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **timings,
            "wall": wall,  # the whole command, model loads and the report included
            "folder": str(folder),
            "preset": args.preset,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
