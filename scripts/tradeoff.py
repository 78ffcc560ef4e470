"""The trade-off re-run: Base, CCA w/ mask (the paper's loss), CCA with the margin objective and LoRA, 3 seeds, each
sweep scored on a 64-problem selection split (the frontier), each kept model on the target test split, the offline
small-model suite and forgetting. Resumable: every finished stage's file is kept and skipped on a rerun.

It starts from the medium run's stage 1 and stage 2 (results/smollm2-medium-general/seed*/: the pivots, meta,
summary and circuit each seed found), so only stage 3 and evaluation run again:

    python scripts/tradeoff.py --phase train      # the sweeps (about 40 min per seed on 2 shared CPU cores)
    python scripts/tradeoff.py --phase eval       # every kept model evaluated
    python scripts/tradeoff.py                    # both, then compare, then copy to results/tradeoff/
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "results" / "smollm2-medium-general"
PEFT_CCA = [sys.executable, "-m", "peft_cca.cli"]
TASK = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"
# the run's spec had size=200 and stage 1 took its first 120 problems; 1000 items leave 106 new questions
SELECTION = ["--selection-problems", "48", "--selection-task", f"{TASK}&size=1000"]
COMMON = ["--val-limit", "16", "--max-new-tokens", "32", "--forgetting-tokens", "2000", "--eval-batch-size", "24"]
COMMON += SELECTION
ARMS = {
    "cca": ["amplify", "--lr", "1e-2", "3e-3", "--steps", "10"],
    "cca-margin3": ["amplify", "--lr", "1e-2", "3e-3", "--steps", "10", "--objective", "margin:3"],
    "lora": ["lora", "--lr", "5e-5", "2e-4", "1e-3", "--epochs", "5"],
}
SUMMARY = {"amplify": "amplify.json", "lora": "lora.json"}
EVAL = ["--max-new-tokens", "32", "--retention-size", "16", "--forgetting-tokens", "5000", "--general-limit", "200"]


def prepare(seed: int, runs: Path) -> Path:
    """A stage 1 + 2 run folder rebuilt from the committed medium run of ``seed``."""
    run = runs / f"seed{seed}" / "run"
    if (run / "records.jsonl").exists():
        return run
    run.mkdir(parents=True, exist_ok=True)
    source = SOURCE / f"seed{seed}"
    shutil.copy(source / "pivots.jsonl", run / "records.jsonl")
    shutil.copy(source / "localize-meta.json", run / "meta.json")
    shutil.copy(source / "localize-summary.json", run / "summary.json")
    shutil.copy(source / "circuit.json", run / "circuit.json")
    return run


def stage(command: list[str], done: Path, log: Path) -> None:
    """Run one peft-cca command unless ``done`` exists; its output goes to ``log``."""
    if done.exists():
        print(f"done already: {done}")
        return
    print(f"running: {' '.join(command)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)


def train(seed: int, runs: Path) -> None:
    run = prepare(seed, runs)
    for arm, args in ARMS.items():
        out = runs / f"seed{seed}" / arm
        command = [*PEFT_CCA, *args, "--run", str(run), "--out", str(out), "--seed", str(seed), *COMMON]
        stage(command, out / SUMMARY[args[0]], runs / "logs" / f"{arm}-seed{seed}.log")


def evaluate(seed: int, runs: Path) -> None:
    run = prepare(seed, runs)
    evals = runs / "eval"
    models = {"base": None, **{arm: runs / f"seed{seed}" / arm / "adapter" for arm in ARMS}}
    for name, adapter in models.items():
        out = evals / f"{name}-seed{seed}.json"
        command = [*PEFT_CCA, "evaluate", "--run", str(run), "--name", name, "--out", str(out), *EVAL]
        command += ["--adapter", str(adapter)] if adapter is not None else []
        stage(command, out, runs / "logs" / f"eval-{name}-seed{seed}.log")


def publish(runs: Path, results: Path) -> None:
    """compare over every evaluated model, then the summaries, evaluations and report into ``results``."""
    subprocess.run([*PEFT_CCA, "compare", "--runs", str(runs / "eval"), "--out", str(runs / "report")], check=True)
    results.mkdir(parents=True, exist_ok=True)
    shutil.copytree(runs / "eval", results / "eval", dirs_exist_ok=True)
    shutil.copytree(runs / "report", results / "report", dirs_exist_ok=True)
    for summary in sorted(runs.glob("seed*/*/*.json")):
        if summary.name in SUMMARY.values():
            target = results / summary.parent.parent.name / f"{summary.parent.name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(summary, target)
    (results / "command.json").write_text(json.dumps({"arms": ARMS, "common": COMMON, "eval": EVAL}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["train", "eval", "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "tradeoff", help="work folder (resumable)")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "tradeoff")
    args = parser.parse_args()
    for seed in args.seeds:
        if args.phase in ("train", "all"):
            train(seed, args.runs)
    for seed in args.seeds:
        if args.phase in ("eval", "all"):
            evaluate(seed, args.runs)
    if args.phase == "all":
        publish(args.runs, args.results)


if __name__ == "__main__":
    main()
