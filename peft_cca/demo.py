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
    max_fraction: float  # component budget of the lambda sweep (the paper's circuits are under 2%)
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
        max_fraction=0.02,
        dcm_epochs=10,
        dcm_lr=0.05,
        lrs=(1e-2, 1e-3),
        steps=10,
        seeds=(0,),
        val_limit=16,
        test_limit=48,
        retention_size=8,
        lora_lrs=(2e-4,),
        lora_epochs=5,  # ~40 training problems at an effective batch of 32: 2 steps an epoch
    ),
    # the paper's protocol: lambda and lr sweeps, 50 steps, 3 seeds
    "full": Preset(
        problems=400,
        n_samples=10,
        max_new_tokens=64,
        lambdas=(1e-3, 3e-3, 1e-2, 3e-2),
        max_fraction=0.02,
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


# comparison arms a run may leave out, e.g. on a model where the full-model ablation costs hours on a CPU
SKIPPABLE = ("cca-nomask", "lora")


@dataclass
class DemoSettings:
    out: Path
    model: str = "smollm2-135m-instruct"
    task: str = DEFAULT_TASK
    preset: str = "full"
    retention_tasks: tuple[str, ...] = DEFAULT_RETENTION_TASKS
    method: str = "branching"
    skip: tuple[str, ...] = ()  # comparison arms left out (SKIPPABLE), with their evaluations
    overrides: dict[str, object] = field(default_factory=dict)

    def counts(self) -> Preset:
        base = PRESETS[self.preset]
        return Preset(**{**asdict(base), **{k: v for k, v in self.overrides.items() if v is not None}})


def _csv(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def plan(settings: DemoSettings) -> list[tuple[str, list[str]]]:
    """The stage commands, in order, as ``(stage name, peft-cca argv)``.

    Each seed is a whole replicate: its own split of the problems and its own sampled counterfactuals
    (stage 1), circuit, updates and evaluations. CCA's full-batch steps from zero deltas are deterministic
    given the data, so re-running only the update with another seed would measure nothing.
    """
    c, out, model = settings.counts(), settings.out, settings.model
    # validation records only serve DCM's choice among several lambdas; each pivot costs generation time
    splits = ["train", "validation"] if len(c.lambdas) > 1 else ["train"]
    tokens = ["--max-new-tokens", str(c.max_new_tokens)]
    test_limit = [] if c.test_limit is None else ["--test-limit", str(c.test_limit)]
    stages: list[tuple[str, list[str]]] = []
    for seed in c.seeds:
        run = out / f"seed{seed}"
        loc = str(run / "localize")
        lrs = [f"{lr:g}" for lr in c.lrs]
        train = ["--run", loc, "--model", model, "--val-limit", str(c.val_limit), *tokens, "--seed", str(seed)]

        def evaluate(name: str, adapter: Path | None, loc: str = loc, seed: int = seed) -> tuple[str, list[str]]:
            argv = [
                "evaluate",
                "--run",
                loc,
                "--model",
                model,
                "--name",
                name,
                "--val-limit",
                "0",
                *tokens,
                *test_limit,
                "--retention-size",
                str(c.retention_size),
                "--retention-tasks",
                *settings.retention_tasks,
                "--out",
                str(out / "eval" / f"{name}-seed{seed}.json"),
            ]
            return f"evaluate-{name}-seed{seed}", argv + ([] if adapter is None else ["--adapter", str(adapter)])

        stages += [
            (
                f"localize-seed{seed}",
                [
                    "localize",
                    "--model",
                    model,
                    "--task",
                    settings.task,
                    "--method",
                    settings.method,
                    "--limit",
                    str(c.problems),
                    "--n-samples",
                    str(c.n_samples),
                    *tokens,
                    "--splits",
                    *splits,
                    "--seed",
                    str(seed),
                    "--out",
                    loc,
                ],
            ),
            (
                f"circuit-seed{seed}",
                [
                    "circuit",
                    "--data",
                    loc,
                    "--model",
                    model,
                    "--lambda",
                    _csv(c.lambdas),
                    "--max-fraction",
                    f"{c.max_fraction:g}",
                    "--epochs",
                    str(c.dcm_epochs),
                    "--lr",
                    f"{c.dcm_lr:g}",
                    "--seed",
                    str(seed),
                    "--resume",
                    "--out",
                    str(run / "circuit"),
                ],
            ),
            evaluate("base", None),
        ]
        # the comparison arms: each trains into <run>/<arm> and is evaluated from <run>/<arm>/adapter
        arms = {
            "cca": [
                "amplify",
                *train,
                "--lr",
                *lrs,
                "--steps",
                str(c.steps),
                "--circuit",
                str(run / "circuit" / "circuit.json"),
            ],
            "cca-nomask": ["amplify", *train, "--lr", *lrs, "--steps", str(c.steps), "--no-mask"],
            "lora": ["lora", *train, "--lr", *(f"{lr:g}" for lr in c.lora_lrs), "--epochs", str(c.lora_epochs)],
        }
        for arm, argv in arms.items():
            if arm not in settings.skip:
                stages += [
                    (f"{arm}-seed{seed}", [*argv, "--out", str(run / arm)]),
                    evaluate(arm, run / arm / "adapter"),
                ]
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
