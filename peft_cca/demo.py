"""CCA end to end: localize -> circuit -> amplify (w/ and w/o mask) -> LoRA -> evaluate -> compare.

The demo runs the stage commands themselves, in-process, on one run folder, so that what it does is
exactly what a user would do by hand, and every stage leaves files a person can open. A stage that
finished writes ``<run>/stages/<name>.json`` (its arguments and wall time); running the demo again
skips finished stages, and stages that were interrupted resume from their own checkpoints (stage 1
writes its dataset incrementally, DCM checkpoints its mask).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from peft_cca.tasks import DEFAULT_RETENTION_TASKS, DEFAULT_TASK

# recorded in demo.json so that a committed result says exactly what produced it
VERSIONED_PACKAGES = ("peft-cca", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "reasoning-gym")


@dataclass(frozen=True)
class Preset:
    """Counts that set the size of the experiment; every one has a flag on ``peft-cca demo``."""

    problems: int  # problems drawn from the task (split 52/8/40 per group)
    n_samples: int  # sampled counterfactual traces per problem
    max_new_tokens: int
    lambdas: tuple[float, ...]
    dcm_epochs: int
    dcm_lr: float  # Adam moves a mask at most lr per step: it needs >= 0.5 / lr steps to select anything
    lrs: tuple[float, ...]
    steps: int
    seeds: tuple[int, ...]
    val_limit: int
    test_limit: int | None
    retention_size: int
    lora_lrs: tuple[float, ...]
    lora_epochs: int


PRESETS: dict[str, Preset] = {
    # every stage for real at small counts: ~15 minutes on 2 CPU cores
    "quick": Preset(
        problems=80,
        n_samples=3,
        max_new_tokens=32,
        lambdas=(1e-2,),
        dcm_epochs=10,
        dcm_lr=0.05,
        lrs=(1e-2, 1e-3),
        steps=10,
        seeds=(0,),
        val_limit=16,
        test_limit=48,
        retention_size=8,
        lora_lrs=(2e-4,),
        lora_epochs=1,
    ),
    # the paper's protocol: lambda and lr sweeps, 50 steps, 3 seeds
    "full": Preset(
        problems=400,
        n_samples=10,
        max_new_tokens=64,
        lambdas=(1e-3, 3e-3, 1e-2, 3e-2),
        dcm_epochs=50,
        dcm_lr=5e-3,
        lrs=(1e-2, 5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5),
        steps=50,
        seeds=(0, 1, 2),
        val_limit=32,
        test_limit=None,
        retention_size=30,
        lora_lrs=(1e-4, 2e-4, 5e-4),
        lora_epochs=2,
    ),
}


@dataclass
class DemoSettings:
    out: Path
    model: str = "smollm2-135m-instruct"
    task: str = DEFAULT_TASK
    preset: str = "quick"
    retention_tasks: tuple[str, ...] = DEFAULT_RETENTION_TASKS
    method: str = "branching"
    overrides: dict[str, object] = field(default_factory=dict)

    def counts(self) -> Preset:
        base = PRESETS[self.preset]
        return Preset(**{**asdict(base), **{k: v for k, v in self.overrides.items() if v is not None}})


def _csv(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def plan(settings: DemoSettings) -> list[tuple[str, list[str]]]:
    """The stage commands, in order, as ``(stage name, peft-cca argv)``."""
    c, out = settings.counts(), settings.out
    # validation records only serve DCM's choice among several lambdas; each pivot costs generation time
    splits = ["train", "validation"] if len(c.lambdas) > 1 else ["train"]
    loc = out / "localize"
    common_eval = [
        "--run",
        str(loc),
        "--val-limit",
        "0",
        "--retention-size",
        str(c.retention_size),
        "--max-new-tokens",
        str(c.max_new_tokens),
        "--retention-tasks",
        *settings.retention_tasks,
    ]
    if c.test_limit is not None:
        common_eval += ["--test-limit", str(c.test_limit)]
    amplify_common = [
        "--run",
        str(loc),
        "--model",
        settings.model,
        "--lr",
        *(f"{lr:g}" for lr in c.lrs),
        "--steps",
        str(c.steps),
        "--val-limit",
        str(c.val_limit),
        "--max-new-tokens",
        str(c.max_new_tokens),
    ]
    stages: list[tuple[str, list[str]]] = [
        (
            "localize",
            [
                "localize",
                "--model",
                settings.model,
                "--task",
                settings.task,
                "--method",
                settings.method,
                "--limit",
                str(c.problems),
                "--n-samples",
                str(c.n_samples),
                "--max-new-tokens",
                str(c.max_new_tokens),
                "--splits",
                *splits,
                "--out",
                str(loc),
            ],
        ),
        (
            "circuit",
            [
                "circuit",
                "--data",
                str(loc),
                "--model",
                settings.model,
                "--lambda",
                _csv(c.lambdas),
                "--epochs",
                str(c.dcm_epochs),
                "--lr",
                f"{c.dcm_lr:g}",
                "--resume",
                "--out",
                str(out / "circuit"),
            ],
        ),
        (
            "evaluate-base",
            [
                "evaluate",
                *common_eval,
                "--model",
                settings.model,
                "--name",
                "base",
                "--out",
                str(out / "eval" / "base.json"),
            ],
        ),
    ]
    for seed in c.seeds:
        for name, extra in (
            (f"cca-seed{seed}", ["--circuit", str(out / "circuit" / "circuit.json")]),
            (f"cca-nomask-seed{seed}", ["--no-mask"]),
        ):
            stages.append((name, ["amplify", *amplify_common, *extra, "--seed", str(seed), "--out", str(out / name)]))
            stages.append(
                (
                    f"evaluate-{name}",
                    [
                        "evaluate",
                        *common_eval,
                        "--model",
                        settings.model,
                        "--adapter",
                        str(out / name / "adapter"),
                        "--name",
                        name,
                        "--out",
                        str(out / "eval" / f"{name}.json"),
                    ],
                )
            )
    stages.append(
        (
            "lora",
            [
                "lora",
                "--run",
                str(loc),
                "--model",
                settings.model,
                "--lr",
                *(f"{lr:g}" for lr in c.lora_lrs),
                "--epochs",
                str(c.lora_epochs),
                "--val-limit",
                str(c.val_limit),
                "--max-new-tokens",
                str(c.max_new_tokens),
                "--out",
                str(out / "lora"),
            ],
        )
    )
    stages.append(
        (
            "evaluate-lora",
            [
                "evaluate",
                *common_eval,
                "--model",
                settings.model,
                "--adapter",
                str(out / "lora" / "adapter"),
                "--name",
                "lora",
                "--out",
                str(out / "eval" / "lora.json"),
            ],
        )
    )
    stages.append(("compare", ["compare", "--runs", str(out / "eval"), "--out", str(out / "report")]))
    return stages


def run_demo(settings: DemoSettings, runner: Callable[[list[str]], int], echo: Callable[[str], None]) -> Path:
    """Run (or resume) every stage; returns the report folder. ``runner`` executes one peft-cca argv."""
    stages_dir = settings.out / "stages"
    stages_dir.mkdir(parents=True, exist_ok=True)
    provenance = {
        "command": " ".join(["peft-cca", *sys.argv[1:]]),
        "settings": {**asdict(settings), "out": str(settings.out)},
        "counts": asdict(settings.counts()),
        "versions": {name: importlib.metadata.version(name) for name in VERSIONED_PACKAGES},
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    (settings.out / "demo.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    total = time.perf_counter()
    stages = plan(settings)
    for number, (name, argv) in enumerate(stages, start=1):
        marker = stages_dir / f"{name}.json"
        if marker.exists():
            echo(f"[{number}/{len(stages)}] {name}: done earlier ({json.loads(marker.read_text())['seconds']:.0f} s)")
            continue
        echo(f"[{number}/{len(stages)}] {name}: peft-cca {' '.join(argv)}")
        start = time.perf_counter()
        code = runner(argv)
        if code:
            raise RuntimeError(f"stage {name} failed with exit code {code}; fix the cause and run the demo again")
        seconds = time.perf_counter() - start
        marker.write_text(json.dumps({"argv": argv, "seconds": seconds}, indent=2) + "\n")
        echo(f"[{number}/{len(stages)}] {name}: finished in {seconds:.0f} s")
    echo(f"all stages done in {time.perf_counter() - total:.0f} s")
    return settings.out / "report"
