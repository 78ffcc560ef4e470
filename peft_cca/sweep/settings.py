"""The settings every arm's sweep shares, as dataclasses whose defaults and help the CLI reads (one source): how a
validated step is scored, and what else it measures and which step a run keeps.

Torch-free, so that ``peft-cca <stage> --help`` builds its parser from them at once.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, PromptOptions

SELECT_ON = ("validation", "selection")


def described(help: str, default: Any = MISSING, **options: Any) -> Any:
    """A settings field with the help text its CLI flag shows."""
    return field(default=default, metadata={"help": help}, **options)


def help_of(settings: type, name: str) -> str:
    """The help text of field ``name`` of a settings dataclass, for its flag (``%`` escaped for argparse)."""
    found = next(f for f in fields(settings) if f.name == name)
    return found.metadata["help"].replace("%", "%%")


def default_of(settings: type, name: str) -> Any:
    """The default of field ``name`` of a settings dataclass (its factory called for a mutable one)."""
    found = next(f for f in fields(settings) if f.name == name)
    return found.default_factory() if found.default is MISSING else found.default


@dataclass(frozen=True)
class Scoring:
    """How validation and the selection split prompt and generate: stage 1's prompt, so that a step is scored on
    the prompts its pivots were found with."""

    prompt_style: str = described("prompt style (default: the one in meta.json, else auto)", DEFAULT_PROMPT_STYLE)
    max_new_tokens: int = described("generation budget (default: 1500 for GSM-Symbolic tasks, else 256)", 256)
    batch_size: int = described("problems per generation batch of validation and the selection split", 16)
    prompt_options: PromptOptions | None = field(
        default=None, metadata={"help": "stage 1's template and exemplars (None: the style's own)"}
    )


@dataclass(frozen=True)
class StepChoice:
    """What each validated step measures besides validation, and which step a run keeps."""

    forgetting_tokens: int | None = described(
        "measure forgetting (cross-entropy rise on N tokens of held-out Wikipedia, PEFT's measure) at every "
        "validation step and record it in the curve (default: off; 5000 with --max-forgetting)",
        None,
    )
    max_forgetting: float | None = described(
        "keep the best-validated step whose forgetting is at most NATS per token (e.g. 0.01) instead of the "
        "paper's best-validated step; the summary records what both rules pick and what the bound cost on "
        "validation (default: off, the paper's rule)",
        None,
    )
    select_on: str = described(
        "which score picks the step: validation (the paper's) or the selection split (with --max-forgetting: "
        "the best selection gain within the bound; needs --selection-problems)",
        "validation",
    )

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on is {self.select_on!r}; choose from {', '.join(SELECT_ON)}")
