"""What the pivots are: numbers the model gets wrong, or wording that leads it off the problem.

Stage 1's records only say which token to prefer; whether CCA can raise *arithmetic* depends on how many
pivots are about the answer's digits at all. On SmolLM2 most pivots of chain_sum are the first words of the
reply ("The" rather than "This" or "There"), so this profile is written into ``summary.json`` to make that
visible before any training.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def token_kind(text: str) -> str:
    """``number`` when the token carries a digit, ``wording`` otherwise."""
    return "number" if any(ch.isdigit() for ch in text) else "wording"


def pivot_profile(records: Sequence[Mapping[str, Any]], positions: Sequence[int], top: int = 5) -> dict[str, Any]:
    """Kinds of the pivot tokens, where in the completion pivots fall, and the most frequent token pairs."""
    kinds = Counter(
        "number" if "number" in (token_kind(r["desired_token"]), token_kind(r["undesired_token"])) else "wording"
        for r in records
    )
    pairs = Counter((r["desired_token"], r["undesired_token"]) for r in records)
    return {
        "kinds": {"number": kinds["number"], "wording": kinds["wording"]},
        "position": {
            "median": statistics.median(positions) if positions else None,
            "first_token": sum(p == 0 for p in positions),
        },
        "top_pairs": [{"desired": d, "undesired": u, "count": n} for (d, u), n in pairs.most_common(top)],
    }
