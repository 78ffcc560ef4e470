"""lm-eval's own harness on the model object (base, PEFT or merged), for hub tasks or any local task folder."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from peft_cca.defaults import LM_EVAL_TASKS


def lm_eval_bridge(
    model: nn.Module,
    tokenizer,
    tasks: Sequence[str] = LM_EVAL_TASKS,
    *,
    include_path: str | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, float]]:
    """lm-eval's ``simple_evaluate`` on the model object (base, PEFT or merged).

    Returns ``{task: {metric: value, metric_stderr: se, n: docs}}``, the offline suite's shape, so Table 2 shows
    each figure with its n and standard error. ``include_path`` adds a folder of task YAMLs (no hub access needed).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from peft_cca.evaluation.general_suite import metric_table

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    output = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=1000,  # the means' stderr is closed-form; only other metrics are resampled
    )
    samples = output.get("n-samples", {})
    return {
        task: metric_table(metrics, int(samples.get(task, {}).get("effective", 0)))
        for task, metrics in output["results"].items()
    }
