"""Running the demo: every stage of the plan in order, resumable (a finished stage leaves
``<run>/stages/<name>.json`` with its arguments and wall time and is skipped on a rerun; an interrupted one resumes
from its own checkpoints), with the settings check of a resume and the provenance of ``demo.json``."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from peft_cca.cli import demo_plan
from peft_cca.cli.demo_cost import describe
from peft_cca.cli.demo_plan import DemoSettings
from peft_cca.errors import CCAError
from peft_cca.runtime.runfolder import atomic_write_json, check_settings, ensure_output_dir, read_json_object

# recorded in demo.json so that a committed result says exactly what produced it
VERSIONED_PACKAGES = ("peft-cca", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "reasoning-gym")


STAGE_FOLDERS = re.compile(r"seed\d+|stages|eval|report")


def _start_afresh(out: Path) -> None:
    """Remove what earlier demo runs wrote into ``out`` (only the demo's own folders), for ``--overwrite``."""
    for path in out.iterdir():
        if path.is_dir() and STAGE_FOLDERS.fullmatch(path.name):
            shutil.rmtree(path)


def _legacy_settings(out: Path) -> dict[str, Any] | None:
    """The recorded settings of a demo folder written before settings.json existed (from its demo.json)."""
    path = out / "demo.json"
    if (out / "settings.json").exists() or not path.exists():
        return None
    old = json.loads(path.read_text())
    recorded = old.get("settings", {})
    keys = ("model", "task", "method", "retention_tasks")
    # counts added since then have the meaning they had before they existed
    later = {"eval_max_new_tokens": None, "dcm_decay_every": None, "dcm_decay_gamma": 0.5}
    return {**{k: recorded.get(k) for k in keys}, "counts": {**later, **(old.get("counts") or {})}}


def recorded_retention_tasks(out: Path) -> list[str] | None:
    """The retention suite an earlier run into ``out`` recorded, so a resume without ``--retention-tasks`` keeps
    it (a default that changed between versions must not block a resume)."""
    path = out / "settings.json"
    if path.is_file():
        return read_json_object(path).get("retention_tasks")
    legacy = _legacy_settings(out) if out.is_dir() else None
    return legacy.get("retention_tasks") if legacy else None


def run_demo(
    settings: DemoSettings,
    runner: Callable[[list[str]], int],
    echo: Callable[[str], None],
    overwrite: bool = False,
) -> Path:
    """Run (or resume) every stage; returns the report folder. ``runner`` executes one peft-cca argv.

    A resume must have the settings of the first run (``settings.json``); different ones are refused, naming
    them, before any work, and ``overwrite`` starts afresh instead.
    """
    out = ensure_output_dir(settings.out)
    legacy = _legacy_settings(out)
    if legacy is not None and not overwrite:
        atomic_write_json(out / "settings.json", legacy)
    resumed = check_settings(out, settings.recorded(), overwrite=overwrite)
    if overwrite:
        _start_afresh(out)
    import torch  # here, not at the top: the CLI builds its parser from this module without torch

    stages_dir = out / "stages"
    stages_dir.mkdir(parents=True, exist_ok=True)
    provenance = {
        "command": " ".join(["peft-cca", *sys.argv[1:]]),
        "settings": {**asdict(settings), "out": str(out), "task": settings.target()},
        "counts": asdict(settings.counts()),
        "versions": {name: importlib.metadata.version(name) for name in VERSIONED_PACKAGES},
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    atomic_write_json(out / "demo.json", provenance)
    for line in describe(settings):
        echo(line)
    if resumed:
        echo(f"resuming {out}: same settings as its first run")
    total = time.perf_counter()
    stages = demo_plan.plan(settings)
    for number, (name, argv) in enumerate(stages, start=1):
        marker = stages_dir / f"{name}.json"
        if marker.exists():
            echo(f"[{number}/{len(stages)}] {name}: done earlier ({json.loads(marker.read_text())['seconds']:.0f} s)")
            continue
        echo(f"[{number}/{len(stages)}] {name}: peft-cca {' '.join(argv)}")
        start = time.perf_counter()
        code = runner(argv)
        if code:
            raise CCAError(f"stage {name} failed with exit code {code}; fix the cause and run the demo again")
        seconds = time.perf_counter() - start
        atomic_write_json(marker, {"argv": argv, "seconds": seconds})
        echo(f"[{number}/{len(stages)}] {name}: finished in {seconds:.0f} s")
    echo(f"all stages done in {time.perf_counter() - total:.0f} s")
    return out / "report"
