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
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft_cca.errors import CCAError
from peft_cca.runtime.runfolder import atomic_write_json, check_settings, ensure_output_dir, read_json_object
from peft_cca.tasks import DEFAULT_RETENTION_TASKS
from peft_cca.tasks.protocol import PAPER, protocol_for
from peft_cca.tasks.splits import split_counts

# recorded in demo.json so that a committed result says exactly what produced it
VERSIONED_PACKAGES = ("peft-cca", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "reasoning-gym")


@dataclass(frozen=True)
class Preset:
    """Counts that set the size of the experiment; every one has a flag on ``peft-cca demo``."""

    problems: int  # problems drawn from the task (split 26/4/20 of every 50 per group)
    n_samples: int  # sampled counterfactual traces per problem
    max_new_tokens: int  # stage 1's budget per trace
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
    eval_max_new_tokens: int | None = None  # evaluation and validation budget; None: max_new_tokens
    dcm_decay_every: int | None = None  # DCM StepLR step (epochs); None: constant lr
    dcm_decay_gamma: float = 0.5

    @property
    def eval_tokens(self) -> int:
        return self.max_new_tokens if self.eval_max_new_tokens is None else self.eval_max_new_tokens


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
    # the paper on GSM-Symbolic, for a GPU: 100 templates x 50 instances, the authors' budgets and DCM schedule
    # (tasks/protocol.py: PAPER), their lambda 1e-2 and lr 1e-4 inside the sweeps, every validation and test problem
    "paper": Preset(
        problems=5000,
        n_samples=10,
        max_new_tokens=PAPER.localize_max_new_tokens,
        eval_max_new_tokens=PAPER.eval_max_new_tokens,
        lambdas=(3e-3, 1e-2, 3e-2),
        max_fraction=0.02,
        dcm_epochs=50,
        dcm_lr=5e-3,
        dcm_decay_every=PAPER.dcm_decay_every,
        dcm_decay_gamma=PAPER.dcm_decay_gamma,
        lrs=(1e-2, 1e-3, 1e-4, 1e-5),
        steps=50,
        seeds=(0, 1, 2),
        val_limit=400,
        test_limit=None,
        retention_size=50,
        lora_lrs=(1e-4, 2e-4, 5e-4),
        lora_epochs=2,
    ),
}


# comparison arms a run may leave out, e.g. on a model where the full-model ablation costs hours on a CPU
SKIPPABLE = ("cca-nomask", "lora")


# offline general suite per preset: (tasks, all when empty; documents per task, per subject for MMLU, all when
# None; tokens of the forgetting corpus): minutes per evaluation on a CPU for quick, the whole suite for paper
GENERAL_SIZES: dict[str, tuple[tuple[str, ...], int | None, int]] = {
    "quick": (("cca_mmlu_stem", "cca_mmlu_humanities", "cca_triviaqa"), 3, 2000),
    "full": ((), 20, 5000),
    "paper": ((), None, 50000),
}


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


# Assumptions of the cost estimate, printed with it. Throughputs: a 2B model in bf16 on one H100 with batched
# Hugging Face generation (decode) and batched forward+backward (train); scale them for other models and devices.
DECODE_TOKENS_PER_S = 1500.0
TRAIN_TOKENS_PER_S = 20000.0  # forward+backward tokens; a forward alone is counted as a third of one
PROMPT_TOKENS = {"authors": 900, "fewshot": 900, "chat": 80, "auto": 80}  # 8-shot prompts are ~900 tokens
TYPICAL_TRACE = 300  # GSM8K-style chains of thought are 100-300 tokens; traces rarely fill a large budget
BRANCH_COMPLETIONS = 4  # fast branching completes a few divergent positions per pair


@dataclass(frozen=True)
class StageCost:
    """Tokens one kind of stage processes over every seed, and its time at the assumed throughputs."""

    stage: str
    decode_tokens: float
    train_tokens: float  # forward+backward tokens (a forward-only token counts 1/3)

    def hours(self) -> float:
        return (self.decode_tokens / DECODE_TOKENS_PER_S + self.train_tokens / TRAIN_TOKENS_PER_S) / 3600


def estimate_cost(settings: DemoSettings, trace: int | None = None) -> list[StageCost]:
    """Token counts per stage with traces of ``trace`` tokens (default: the budgets capped at TYPICAL_TRACE).

    Upper bound on the work, not a forecast: every localized problem is assumed to give a record, and every
    split at the paper's 26/4/20 proportions.
    """
    from peft_cca.sweep.callbacks import eval_schedule

    c = settings.counts()
    style = protocol_for(settings.target()).prompt_style
    prompt = PROMPT_TOKENS.get(style, PROMPT_TOKENS["fewshot"])
    loc_trace = min(c.max_new_tokens, trace or TYPICAL_TRACE)
    eval_trace = min(c.eval_tokens, trace or TYPICAL_TRACE)
    train, validation, test = split_counts(c.problems)
    localized = train + (validation if len(c.lambdas) > 1 else 0)
    val = validation if c.val_limit is None else min(validation, c.val_limit)
    test = test if c.test_limit is None else min(test, c.test_limit)
    record = prompt + loc_trace / 2  # a pivot sits inside the trace
    evals = len(eval_schedule(c.steps)) + 1  # the schedule and step 0
    arms = [a for a in ("cca", "cca-nomask") if a not in settings.skip]
    evaluated = 1 + len(arms) + ("lora" not in settings.skip)  # the base model and every arm
    per_seed = [
        StageCost("localize", localized * loc_trace * (1 + c.n_samples + BRANCH_COMPLETIONS), localized * prompt / 3),
        StageCost("circuit", 0.0, len(c.lambdas) * localized * (record / 3 + c.dcm_epochs)),
        StageCost(
            "amplify",
            len(arms) * len(c.lrs) * evals * val * eval_trace,
            len(arms) * len(c.lrs) * c.steps * train * record,
        ),
        StageCost(
            "lora",
            0.0 if "lora" in settings.skip else len(c.lora_lrs) * 4 * val * eval_trace,
            0.0 if "lora" in settings.skip else len(c.lora_lrs) * c.lora_epochs * train * (prompt + eval_trace),
        ),
        StageCost(
            "evaluate",
            evaluated * (test + len(settings.retention_tasks) * c.retention_size) * eval_trace,
            0.0,
        ),
    ]
    seeds = len(c.seeds)
    return [StageCost(s.stage, s.decode_tokens * seeds, s.train_tokens * seeds) for s in per_seed]


def describe(settings: DemoSettings) -> list[str]:
    """What the demo will run and what it will cost, printed before any work starts."""
    c = settings.counts()
    protocol = protocol_for(settings.target())
    train, validation, test = split_counts(c.problems)
    stages = plan(settings)
    lines = [
        f"plan: {len(stages)} stages, model {settings.model}, task {settings.target()} "
        f"(protocol {protocol.name}: prompt {protocol.prompt_style}, top-k {protocol.top_k}, "
        f"T {protocol.temperature_when_wrong}/{protocol.temperature_when_right})",
        f"  seeds {','.join(map(str, c.seeds))}, each a whole replicate; {c.problems} problems, about "
        f"{train}/{validation}/{test} train/validation/test (26/4/20 per group; under-0.8 filter on train only)",
        f"  localize: {c.n_samples} samples per problem, {c.max_new_tokens} new tokens, {settings.method}",
        f"  circuit: lambdas {_csv(c.lambdas)} (within {100 * c.max_fraction:g}% of components), {c.dcm_epochs} "
        f"epochs, Adam {c.dcm_lr:g}"
        + ("" if c.dcm_decay_every is None else f", StepLR({c.dcm_decay_every}, {c.dcm_decay_gamma:g})"),
        f"  amplify: lrs {_csv(c.lrs)}, {c.steps} steps; arms: "
        + ", ".join(a for a in ("cca", *SKIPPABLE) if a not in settings.skip),
        f"  lora: lrs {_csv(c.lora_lrs)}, {c.lora_epochs} epochs; evaluate: {c.eval_tokens} new tokens, "
        f"{'all' if c.test_limit is None else c.test_limit} test problems, retention {c.retention_size} x "
        f"{len(settings.retention_tasks)} tasks",
        f"cost estimate (assumed, for a 2B model on one H100: {DECODE_TOKENS_PER_S:g} decoded and "
        f"{TRAIN_TOKENS_PER_S:g} trained tokens/s, "
        f"{PROMPT_TOKENS.get(protocol.prompt_style, 900)}-token prompts, traces of at most {TYPICAL_TRACE} tokens):",
    ]
    typical, full = estimate_cost(settings), estimate_cost(settings, trace=max(c.max_new_tokens, c.eval_tokens))
    for cost, bound in zip(typical, full, strict=True):
        lines.append(
            f"  {cost.stage:<9} {cost.decode_tokens / 1e6:9.2f} M decoded, {cost.train_tokens / 1e6:9.2f} M trained "
            f"tokens: {cost.hours():7.2f} device-hours (traces at the full budget: {bound.hours():.1f})"
        )
    total, bound = sum(c.hours() for c in typical), sum(c.hours() for c in full)
    lines.append(f"  total {total:.1f} device-hours (at most {bound:.1f} if every trace filled its budget)")
    return lines


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
            raise CCAError(f"stage {name} failed with exit code {code}; fix the cause and run the demo again")
        seconds = time.perf_counter() - start
        atomic_write_json(marker, {"argv": argv, "seconds": seconds})
        echo(f"[{number}/{len(stages)}] {name}: finished in {seconds:.0f} s")
    echo(f"all stages done in {time.perf_counter() - total:.0f} s")
    return out / "report"
