"""The trade-off re-run: Base, CCA w/ mask (the paper's loss), CCA with the margin objective and LoRA, 3 seeds, each
sweep scored on a 48-problem selection split (the frontier), each kept model on the target test split, the offline
small-model suite and forgetting.

It starts from the medium run's stage 1 and stage 2 (results/smollm2-medium-general/seed*/: the pivots, meta,
summary and circuit each seed found), so only stage 3 and evaluation run again. Each arm is trained and then
evaluated at once (about 20 minutes an arm on 2 shared CPU cores, a few minutes per evaluation), and its sweep summary
and evaluation are copied into results/tradeoff/ as each finishes. Those JSON files are what make it resumable across
machines: an arm whose evaluation is in results/ is done, on any clone. Adapters (14 MB each) stay in the work folder,
so an arm trained but not yet evaluated when a session ends is trained again (deterministically) on the next.

    python scripts/tradeoff.py                 # every seed, then compare over all evaluations, into results/tradeoff/
    python scripts/tradeoff.py --seeds 1       # one seed's arms (and its base)
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


def stage(command: list[str], done: Path, log: Path, published: Path) -> None:
    """Run one peft-cca command unless ``done`` exists, its output to ``log``; then copy ``done`` to ``published``."""
    if done.exists():
        print(f"done already: {done}")
    else:
        print(f"running: {' '.join(command)}", flush=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
    published.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(done, published)


def evaluate(run: Path, name: str, adapter: Path | None, runs: Path, results: Path) -> None:
    out = runs / "eval" / f"{name}.json"
    command = [*PEFT_CCA, "evaluate", "--run", str(run), "--name", name.rsplit("-seed", 1)[0], "--out", str(out)]
    command += [*EVAL, *(["--adapter", str(adapter)] if adapter is not None else [])]
    stage(command, out, runs / "logs" / f"eval-{name}.log", results / "eval" / out.name)


def finish_seed(seed: int, runs: Path, results: Path) -> None:
    """The base and every arm of ``seed``, trained and evaluated; what results/ holds already is skipped."""
    run = prepare(seed, runs)
    for arm, args in {"base": None, **ARMS}.items():
        name = f"{arm}-seed{seed}"
        evaluated = results / "eval" / f"{name}.json"
        if evaluated.exists():  # compare reads the work folder's evaluations: this one joins them
            print(f"in results already: {evaluated}")
            (runs / "eval").mkdir(parents=True, exist_ok=True)
            shutil.copy(evaluated, runs / "eval" / evaluated.name)
            continue
        adapter = None
        if args is not None:
            out = runs / f"seed{seed}" / arm
            command = [*PEFT_CCA, *args, "--run", str(run), "--out", str(out), "--seed", str(seed), *COMMON]
            summary = out / SUMMARY[args[0]]
            stage(command, summary, runs / "logs" / f"{name}.log", results / f"seed{seed}" / f"{arm}.json")
            adapter = out / "adapter"
        evaluate(run, name, adapter, runs, results)


def publish(runs: Path, results: Path) -> None:
    """compare over every evaluated model, its report into ``results`` (the stages copied theirs as they finished)."""
    subprocess.run([*PEFT_CCA, "compare", "--runs", str(runs / "eval"), "--out", str(runs / "report")], check=True)
    shutil.copytree(runs / "report", results / "report", dirs_exist_ok=True)
    (results / "command.json").write_text(json.dumps({"arms": ARMS, "common": COMMON, "eval": EVAL}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "tradeoff", help="work folder (resumable)")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "tradeoff")
    args = parser.parse_args()
    for seed in args.seeds:
        finish_seed(seed, args.runs, args.results)
    publish(args.runs, args.results)


if __name__ == "__main__":
    main()
