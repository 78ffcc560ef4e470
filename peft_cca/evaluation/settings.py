"""What an evaluation measures and how, as dataclasses (the CLI reads their defaults and help): the target task's
scoring (also what validation uses during training) and one model's whole evaluation. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft_cca.documented import described
from peft_cca.tasks import DEFAULT_RETENTION_TASKS
from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, PromptOptions


@dataclass(frozen=True)
class Scoring:
    """How validation and the selection split prompt and generate: stage 1's prompt, so that a step is scored on
    the prompts its pivots were found with."""

    prompt_style: str = described("prompt style (default: the one in meta.json, else auto)", DEFAULT_PROMPT_STYLE)
    max_new_tokens: int = described("generation budget (default: 1500 for GSM-Symbolic tasks, else 256)", 256)
    batch_size: int = described("problems per generation batch when scoring exact match", 16)
    prompt_options: PromptOptions | None = field(
        default=None, metadata={"help": "stage 1's template and exemplars (None: the style's own)"}
    )

    def exact_match_options(self, *, with_prompt: bool = True) -> dict[str, Any]:
        """These settings as the keyword arguments of the exact-match scorers; ``with_prompt=False`` leaves stage
        1's prompt options out (the retention tasks are prompted in the style's own way)."""
        options = {
            "prompt_style": self.prompt_style,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
        }
        return {**options, "prompt_options": self.prompt_options} if with_prompt else options


@dataclass(frozen=True)
class EvaluationSettings:
    """One model's evaluation: the target task (``scoring``), the retention suite, KL drift, lm-eval's hub tasks,
    the offline general suite and forgetting (the cross-entropy on held-out Wikipedia)."""

    scoring: Scoring = field(default_factory=Scoring)
    retention_tasks: tuple[str, ...] = described("reasoning-gym tasks of the retention suite", DEFAULT_RETENTION_TASKS)
    retention_size: int = described("problems per retention task", 50)
    kl: bool = described("KL drift on neutral text (against the model with its adapter disabled)", True)
    lm_eval_tasks: tuple[str, ...] | None = described("lm-eval hub tasks (None: none)", None)
    lm_eval_limit: float | None = described("lm-eval examples per task", None)
    general_tasks: tuple[str, ...] | None = described("offline general-suite tasks (None: none)", None)
    general_limit: int | None = described("documents per offline task (default: per-task CPU limits)", None)
    forgetting_tokens: int | None = described(
        "tokens of held-out Wikipedia text for the cross-entropy, PEFT's forgetting measure (None: skip)", None
    )
