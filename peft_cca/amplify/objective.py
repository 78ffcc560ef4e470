"""Stage 3's objective: the paper's ``-(logit_d - logit_u)``, or a margin that stops pushing a won record.

The paper's loss has no floor: at a constant lr the logit difference keeps growing linearly, and so does the damage
elsewhere, long after every pivot is won. ``margin:M`` is the hinge ``max(0, M - diff)``: below the margin its
gradient is exactly the paper's, past it the record contributes nothing (beyond the paper; the default stays
``paper``). No torch here: the CLI parses ``--objective`` with it before any model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from peft_cca.errors import UsageError

OBJECTIVES_HELP = "paper: -(logit_d - logit_u), the paper's; margin:M: max(0, M - (logit_d - logit_u)), M > 0"


@dataclass(frozen=True)
class Objective:
    """Which per-record loss stage 3 minimises; ``margin`` is ``None`` for the paper's."""

    margin: float | None = None

    @classmethod
    def parse(cls, spec: str | Objective) -> Objective:
        """``"paper"`` or ``"margin:M"`` (M a finite number > 0); anything else is one line naming the forms."""
        if isinstance(spec, Objective):
            return spec
        text = str(spec).strip()
        if text == "paper":
            return cls()
        kind, _, value = text.partition(":")
        if kind == "margin":
            try:
                margin = float(value)
            except ValueError:
                margin = math.nan
            if math.isfinite(margin) and margin > 0:
                return cls(margin)
        raise UsageError(f"objective {spec!r}: give {OBJECTIVES_HELP}")

    @property
    def name(self) -> str:
        return "paper" if self.margin is None else f"margin:{self.margin:g}"

    def per_record(self, diff: Any) -> Any:
        """Each record's loss from its logit difference."""
        if self.margin is None:
            return -diff
        return (self.margin - diff).clamp(min=0)
