"""The settings every arm's sweep shares, as dataclasses whose defaults and help the CLI reads (one source): how a
validated step is scored (:class:`~peft_cca.evaluation.settings.Scoring`), and what else it measures and which step
a run keeps (:class:`StepChoice`).

Torch-free, so that ``peft-cca <stage> --help`` builds its parser from them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft_cca.documented import described

SELECT_ON = ("validation", "selection")


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
