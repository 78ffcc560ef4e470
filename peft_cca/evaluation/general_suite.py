"""The offline general suite, run by lm-eval's own ``simple_evaluate`` on the model object, as the hub path runs.

``run_general_suite`` wraps the in-memory model and tokenizer in lm-eval's ``HFLM`` (base, PEFT or merged), runs
each task of the suite (by default those whose data is installed) with its own ``limit`` (per subject for the
MMLU groups, as lm-eval applies it), and returns every metric with its standard error and ``n``. The MMLU groups
are aggregated as lm-eval's ``mmlu_stem``/``mmlu_humanities`` groups do (mean weighted by subject size, pooled
standard error), with lm-eval's own functions, and report how often each letter was picked (a letter bias is
invisible in the accuracy alone).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any
from unittest.mock import patch

from torch import nn
from tqdm.auto import tqdm

from peft_cca.evaluation.offline_tasks import (
    MMLU_CATEGORIES,
    STANDARD,
    DataFiles,
    available_tasks,
    refuse_unknown_tasks,
    task_configs,
)

logger = logging.getLogger(__name__)

LOGITS_BUDGET = 4 * 2**30  # bytes of logits one batch of a standard task may hold (see task_batch_size)
# Documents per task for a CPU. The standard tasks (the default suite) get about the same time each: SmolLM2-135M (fp32,
# batch 16, OMP_WAIT_POLICY=PASSIVE) spent, in CPU seconds per document over 100 documents of each, HellaSwag 0.53,
# ARC-Easy 0.38, ARC-Challenge 0.47, PIQA 0.24, Winogrande 0.14, BoolQ 0.81, SciQ 0.98 (its support paragraphs),
# OpenBookQA 0.16, CommonsenseQA 0.24, SocialIQA 0.27, LAMBADA 0.22. With these limits the whole default suite took 168
# s wall, 148 CPU seconds, on the two cores (another job on them part of the time; 535 documents). Gemma-3-270M costs
# 1-2x as much a document. The paper's tasks (per subject for the MMLU groups, 19 and 13 subjects): SmolLM2-135M on two
# shared cores took about 1.5 min per MMLU group, 8 min for 100 closed-book questions, 20 min for 30 TruthfulQA MC1
# questions (MC2 has about twice the choices) and a few minutes per GSM8K problem (up to 256 generated tokens); those
# were measured with other jobs on the cores and without OMP_WAIT_POLICY=PASSIVE, under which two spinning OpenMP
# threads beside another job run a forward pass 4-8x slower than one thread.
CPU_LIMITS: dict[str, int] = {
    "cca_hellaswag_val": 30,
    "cca_arc_easy_val": 40,
    "cca_arc_challenge_val": 30,
    "cca_piqa_val": 50,
    "cca_winogrande_val": 80,
    "cca_boolq_val": 20,
    "cca_sciq_val": 15,
    "cca_openbookqa_val": 80,
    "cca_csqa_val": 50,
    "cca_socialiqa_val": 50,
    "cca_lambada_openai_test": 60,
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
    # one document per subject (--general-limit 1) has no spread to pool: lm-eval's formula divides by zero
    pooled = pooled_sample_stderr(stderrs, sizes) if sum(sizes) > len(sizes) else math.nan
    return {
        "acc": float(aggregate_subtask_metrics(accs, sizes, weight_by_size=True)),
        "acc_stderr": float(pooled),
        "n": sum(sizes),
        "subjects": len(sizes),
    }


def letter_shares(samples: Sequence[Mapping[str, Any]], letters: Sequence[str] = "ABCD") -> dict[str, float]:
    """``{pred_A: share, ...}``: how often each letter is the model's pick (its answer's highest loglikelihood).

    A model that answers "A" to nearly everything scores about a quarter on MMLU, as one that knows a quarter does;
    the shares tell the two apart (a uniform pick gives 0.25 each)."""
    counts = dict.fromkeys(letters, 0)
    for sample in samples:
        loglikelihoods = [response[0] for response in sample["filtered_resps"]]
        counts[letters[loglikelihoods.index(max(loglikelihoods))]] += 1
    total = sum(counts.values())
    return {f"pred_{letter}": count / total if total else math.nan for letter, count in counts.items()}


def _vocab_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "vocab_size", None)


def task_batch_size(task: str, batch_size: int, vocab_size: int | None) -> int:
    """``batch_size``, made smaller where a batch of the task's longest documents would hold more than
    :data:`LOGITS_BUDGET` bytes of logits: lm-eval keeps the logits and their log-softmax over every position, so
    Gemma-3-270M (262,144 a token) at 16 BoolQ passages of up to 1,300 tokens wants 44 GB (it was killed)."""
    if task not in STANDARD or not vocab_size:
        return batch_size
    per_document = STANDARD[task].tokens * vocab_size * 4 * 2  # fp32 logits and their log-softmax
    return max(1, min(batch_size, LOGITS_BUDGET // per_document))


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
    MMLU groups also give ``subjects`` and the share of each picked letter (``pred_A`` ... ``pred_D``, see
    :func:`letter_shares`). ``max_gen_toks`` caps the generation tasks' answers (lm-eval's default is
    256 tokens). ``files`` points tasks at other copies of their data.
    """
    import lm_eval.evaluator
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    tasks = available_tasks() if tasks is None else tasks
    refuse_unknown_tasks(tasks)
    limits = {**CPU_LIMITS, **(limits or {})}
    harnesses: dict[int, HFLM] = {}  # one wrapper of the model per batch size
    manager = TaskManager(include_defaults=False)  # the configs are inline: no need to index lm-eval's ~10k YAMLs
    scores: dict[str, dict[str, float]] = {}
    # lm-eval draws a bar per task (its requests); this one says how far the suite is, in tasks
    for task in tqdm(tasks, desc="general suite", unit="task"):
        configs = task_configs(task, files)
        size = task_batch_size(task, batch_size, _vocab_size(model))
        if size not in harnesses:
            harnesses[size] = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=size)
        lm = harnesses[size]
        # simple_evaluate ends by describing the environment (torch's collect_env runs `pip list`: 1.5 s a call,
        # once per task here, a tenth of the default suite's CPU time); the suite keeps none of it
        with patch.object(lm_eval.evaluator, "add_env_info", lambda results: None):
            output = simple_evaluate(
                model=lm,
                tasks=configs,
                task_manager=manager,
                limit=limits.get(task),
                log_samples=task in MMLU_CATEGORIES,  # the picks, for the letter shares
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
                # the means' stderr is closed-form; only LAMBADA's perplexity is resampled
                bootstrap_iters=1000,
            )
        per_config = {
            name: metric_table(output["results"][name], int(output["n-samples"][name]["effective"]))
            for name in (config["task"] for config in configs)
        }
        if task in MMLU_CATEGORIES:
            picks = [sample for name in per_config for sample in output["samples"][name]]
            scores[task] = {**_aggregate(per_config), **letter_shares(picks)}
        else:
            scores[task] = per_config[task]
        logger.info("%s: %s", task, scores[task])
    return scores
