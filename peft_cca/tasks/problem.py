"""The one record type every problem source produces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peft_cca.tasks.answers import score_numeric


@dataclass(frozen=True)
class Problem:
    """A question with its gold answer and the scorer that decides whether a completion is right.

    ``group_id`` is the unit of splitting and of the accuracy filter: the GSM-Symbolic template id, or the
    reasoning-gym task (and generator) name. ``solution`` is the worked reasoning where the source has one
    (GSM-Symbolic's text before ``####``, a template's ``answer_annotated``), the target LoRA's SFT learns from;
    None for generated tasks without one. ``scorer`` takes the raw completion text; sources set it so that
    each task is scored the way its authors score it (generic sources: the spec's answer checker).
    ``metadata`` holds what else a source knows: for ``hf:``/``file:`` rows, the row (``fields``), the question
    field's text before any choice listing (``question``) and the choices (``choices``).
    """

    id: str
    group_id: str
    question: str
    answer: str
    source: str = ""
    solution: str | None = None
    scorer: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fields(self) -> dict[str, Any]:
        """The source row (``hf:``/``file:`` sources keep it in ``metadata["fields"]``), for prompt templates."""
        return self.metadata.get("fields", {})

    @property
    def choices(self) -> tuple[str, ...]:
        """The answer choices of a multiple-choice problem (its question lists them), else empty."""
        return tuple(self.metadata.get("choices", ()))

    def score(self, completion: str) -> bool:
        """Whether ``completion`` is right; unparseable or odd output is wrong, never an exception."""
        try:
            if self.scorer is not None:
                return bool(self.scorer(completion))
            return score_numeric(completion, self.answer)
        except Exception:
            return False


def score(problem: Problem, completion: str) -> bool:
    """Functional form of :meth:`Problem.score` for callers that map over problems."""
    return problem.score(completion)
