"""The offline general suite, run by lm-eval's own ``simple_evaluate`` on the model object, as the hub path runs.

``run_general_suite`` wraps the in-memory model and tokenizer in lm-eval's ``HFLM`` (base, PEFT or merged), runs
each task of the suite (by default those whose data is installed) with its own ``limit`` (per subject for the
MMLU groups, as lm-eval applies it), and returns every metric with its standard error and ``n``. The MMLU groups
are aggregated as lm-eval's ``mmlu_stem``/``mmlu_humanities`` groups do (mean weighted by subject size, pooled
standard error), with lm-eval's own functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from peft_cca.evaluation.offline_tasks import (
    MMLU_CATEGORIES,
    DataFiles,
    available_tasks,
    refuse_unknown_tasks,
    task_configs,
)

logger = logging.getLogger(__name__)

# For a CPU (per subject for the MMLU groups, 19 and 13 subjects). SmolLM2-135M on two shared cores took about
# 1.5 min per MMLU group, 8 min for 100 closed-book questions, 20 min for 30 TruthfulQA MC1 questions (MC2 has about
# twice the choices) and a few minutes per GSM8K problem (5-shot prompts, up to 256 generated tokens).
CPU_LIMITS: dict[str, int] = {
    "cca_mmlu_stem": 5,
    "cca_mmlu_humanities": 5,
    "cca_truthfulqa_mc1_bigbench": 30,
    "cca_truthfulqa_mc2_bigbench": 30,
    "cca_triviaqa": 100,
    "cca_closedbook_nq": 100,
    "cca_closedbook_wikidata": 100,
    "cca_gsm8k": 8,
}


def metric_table(results: Mapping[str, Any], n: int) -> dict[str, float]:
    """``{metric: value, metric_stderr: se, n: n}`` from lm-eval's ``"<metric>,<filter>"`` keys.

    The filter is kept in the name only where a task has several (GSM8K's strict-match and flexible-extract).
    A stderr lm-eval cannot give (one document) is NaN.
    """
    keys = [key for key in results if "," in key]
    filters = {key.split(",", 1)[1] for key in keys}
    out: dict[str, float] = {}
    for key in keys:
        metric, filter_name = key.split(",", 1)
        stderr = metric.endswith("_stderr")
        base = metric.removesuffix("_stderr")
        name = base if len(filters) == 1 else f"{base}_{filter_name}"
        # lm-eval writes "N/A" for the stderr of a single document
        value = results[key] if isinstance(results[key], (int, float)) else math.nan
        out[f"{name}_stderr" if stderr else name] = float(value)
    out["n"] = n
    return out


def _aggregate(per_subject: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """lm-eval's group aggregate (``weight_by_size: true``) of the subjects' ``acc``."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    sizes = [int(scores["n"]) for scores in per_subject.values()]
    accs = [scores["acc"] for scores in per_subject.values()]
    stderrs = [scores["acc_stderr"] for scores in per_subject.values()]
    return {
        "acc": float(aggregate_subtask_metrics(accs, sizes, weight_by_size=True)),
        "acc_stderr": float(pooled_sample_stderr(stderrs, sizes)),
        "n": sum(sizes),
        "subjects": len(sizes),
    }


def run_general_suite(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] | None = None,
    *,
    limits: Mapping[str, int | None] | None = None,
    batch_size: int = 8,
    max_gen_toks: int | None = None,
    files: DataFiles | None = None,
) -> dict[str, dict[str, float]]:
    """Score ``model`` on the offline tasks: ``{task: {metric: value, metric_stderr: se, n: docs}}``.

    ``tasks`` default to :func:`~peft_cca.evaluation.offline_tasks.available_tasks`. ``limits`` maps a task to its
    document limit (``None``: all); tasks it omits get :data:`CPU_LIMITS`.
    MMLU groups also give ``subjects``. ``max_gen_toks`` caps the generation tasks' answers (lm-eval's default is
    256 tokens). ``files`` points tasks at other copies of their data.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = available_tasks() if tasks is None else tasks
    refuse_unknown_tasks(tasks)
    limits = {**CPU_LIMITS, **(limits or {})}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_defaults=False)  # the configs are inline: no need to index lm-eval's ~10k YAMLs
    scores: dict[str, dict[str, float]] = {}
    for task in tasks:
        configs = task_configs(task, files)
        output = simple_evaluate(
            model=lm,
            tasks=configs,
            task_manager=manager,
            limit=limits.get(task),
            log_samples=False,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
            bootstrap_iters=1000,  # every metric here is a mean: its stderr is closed-form, nothing is resampled
        )
        per_config = {
            name: metric_table(output["results"][name], int(output["n-samples"][name]["effective"]))
            for name in (config["task"] for config in configs)
        }
        scores[task] = _aggregate(per_config) if task in MMLU_CATEGORIES else per_config[task]
        logger.info("%s: %s", task, scores[task])
    return scores
