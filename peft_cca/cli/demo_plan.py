"""CCA end to end as a plan: localize -> circuit -> amplify (w/ and w/o mask) -> LoRA -> evaluate -> compare.

The demo runs the stage commands themselves, in-process, on one run folder, so that what it does is exactly what a
user would do by hand, and every stage leaves files a person can open. This module turns the demo's settings into
those commands (:func:`plan`); the presets are :mod:`~peft_cca.cli.demo_presets`, the cost estimate
:mod:`~peft_cca.cli.demo_cost` and the resumable runner :mod:`~peft_cca.cli.demo_runner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft_cca.cli.demo_presets import GENERAL_SIZES, PRESETS, Preset
from peft_cca.tasks import DEFAULT_RETENTION_TASKS
from peft_cca.tasks.protocol import PAPER, protocol_for


@dataclass
class DemoSettings:
    out: Path
    model: str = "smollm2-135m-instruct"
    task: str | None = None  # None: the preset's protocol task (GSM-Symbolic templates for "paper")
    preset: str = "full"
    retention_tasks: tuple[str, ...] = DEFAULT_RETENTION_TASKS
    method: str = "branching"
    skip: tuple[str, ...] = ()  # comparison arms left out (SKIPPABLE), with their evaluations
    overrides: dict[str, object] = field(default_factory=dict)
    runtime: tuple[str, ...] = ()  # placement flags (runtime.runtime_argv) for every stage that loads the model
    # stage 1's --prompt-style/--prompt-template/--num-fewshot/--fewshot-seed; later stages read its meta.json
    prompt: tuple[str, ...] = ()
    # general abilities in every evaluation (evaluate --general); not in recorded(): it only adds measures, and each
    # evaluation's own settings check keeps a resumed one consistent
    general: str = "none"
    max_forgetting: float | None = None  # amplify's and lora's --max-forgetting (None: the paper's rule)

    def step_choice_argv(self) -> list[str]:
        """amplify's and lora's forgetting flags: measured at every validation step whenever general abilities
        are (the report's step-choice table replays bounds over those curves), bounded with ``max_forgetting``."""
        argv = [] if self.general == "none" else ["--forgetting-tokens", str(GENERAL_SIZES[self.preset][2])]
        return argv + ([] if self.max_forgetting is None else ["--max-forgetting", f"{self.max_forgetting:g}"])

    def general_argv(self) -> list[str]:
        """The evaluate flags of the general suite at the preset's size (GENERAL_SIZES)."""
        if self.general == "none":
            return ["--general", "none"]
        tasks, limit, tokens = GENERAL_SIZES[self.preset]
        argv = ["--general", self.general, "--forgetting-tokens", str(tokens)]
        if self.general == "offline":
            argv += (["--general-tasks", *tasks] if tasks else []) + (
                [] if limit is None else ["--general-limit", str(limit)]
            )
        return argv

    def counts(self) -> Preset:
        base = PRESETS[self.preset]
        return Preset(**{**asdict(base), **{k: v for k, v in self.overrides.items() if v is not None}})

    def target(self) -> str:
        """The task spec: the user's, else the paper's GSM-Symbolic for the paper preset, else the offline one."""
        if self.task:
            return self.task
        return PAPER.task if self.preset == "paper" else protocol_for(None).task

    def recorded(self) -> dict[str, Any]:
        """What the demo's files depend on, checked on every resume (``--skip`` is not: arms only add up)."""
        return {
            "model": self.model,
            "task": self.target(),
            "method": self.method,
            "retention_tasks": list(self.retention_tasks),
            "counts": asdict(self.counts()),
            **({"prompt": list(self.prompt)} if self.prompt else {}),  # absent when unset: older folders resume
            **({"max_forgetting": self.max_forgetting} if self.max_forgetting is not None else {}),
        }


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
    tokens = ["--max-new-tokens", str(c.eval_tokens)]
    decay = [] if c.dcm_decay_every is None else ["--decay-every", str(c.dcm_decay_every)]
    decay += [] if c.dcm_decay_every is None else ["--decay-gamma", f"{c.dcm_decay_gamma:g}"]
    test_limit = [] if c.test_limit is None else ["--test-limit", str(c.test_limit)]
    from peft_cca.localize.problems import names_code

    # a spec with scorer= imports code, which later stages run only when the command names it (never from meta.json)
    trusted = ["--task", settings.target()] if names_code(settings.target()) else []
    stages: list[tuple[str, list[str]]] = []
    for seed in c.seeds:
        run = out / f"seed{seed}"
        loc = str(run / "localize")
        lrs = [f"{lr:g}" for lr in c.lrs]
        train = [
            "--run",
            loc,
            "--model",
            model,
            *trusted,
            "--val-limit",
            str(c.val_limit),
            *tokens,
            "--seed",
            str(seed),
            *settings.step_choice_argv(),
        ]

        def evaluate(name: str, adapter: Path | None, loc: str = loc, seed: int = seed) -> tuple[str, list[str]]:
            argv = [
                "evaluate",
                "--run",
                loc,
                "--model",
                model,
                "--name",
                name,
                *trusted,
                "--val-limit",
                "0",
                *tokens,
                *test_limit,
                "--retention-size",
                str(c.retention_size),
                "--retention-tasks",
                *settings.retention_tasks,
                *settings.general_argv(),
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
                    settings.target(),
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
                    "--seed",
                    str(seed),
                    *settings.prompt,
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
                    *decay,
                    "--seed",
                    str(seed),
                    "--resume",
                    "--out",
                    str(run / "circuit"),
                ],
            ),
            evaluate("base", None),
        ]
        # the comparison arms: each trains into <run>/<arm> and is evaluated from <run>/<arm>/adapter (model/ for
        # the authors' "w/o mask", which trains every parameter: the paper preset runs it, the CPU presets the
        # circuit-sites ablation, whose adapter is small)
        nomask = "all" if settings.preset == "paper" else "sites"
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
            "cca-nomask": ["amplify", *train, "--lr", *lrs, "--steps", str(c.steps), "--no-mask", nomask],
            "lora": ["lora", *train, "--lr", *(f"{lr:g}" for lr in c.lora_lrs), "--epochs", str(c.lora_epochs)],
        }
        for arm, argv in arms.items():
            if arm not in settings.skip:
                stages += [
                    (f"{arm}-seed{seed}", [*argv, "--out", str(run / arm)]),
                    evaluate(arm, run / arm / ("model" if arm == "cca-nomask" and nomask == "all" else "adapter")),
                ]
    # placement flags reach every stage that loads the model; checkpointing only the two that train with backward
    trains = ("amplify", "lora")
    flags = [f for f in settings.runtime if f != "--gradient-checkpointing"]
    checkpointing = [f for f in settings.runtime if f == "--gradient-checkpointing"]
    stages = [(name, [*argv, *flags, *(checkpointing if argv[0] in trains else [])]) for name, argv in stages]
    # quiet: the demo prints the report once, at its end, whether compare ran now or earlier
    stages.append(("compare", ["compare", "--runs", str(out / "eval"), "--out", str(out / "report"), "--quiet"]))
    return stages
