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
    """lm-eval's ``simple_evaluate`` on the model object (base, PEFT or merged); ``{task: {metric: value}}``.

    ``include_path`` adds a folder of task YAMLs (local tasks need no hub access).
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    output = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=0,
    )
    # lm-eval keys metrics as "<metric>,<filter>"; keep the metric name and drop the stderr entries
    return {
        task: {
            key.split(",")[0]: float(value)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and "stderr" not in key
        }
        for task, metrics in output["results"].items()
    }
