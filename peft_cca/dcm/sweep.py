"""Lambda sweep: one DCM run per lambda, scored on train and validation records, and a stated pick.

Each lambda's circuit is scored "amplified": its selected components doubled (scale 2, the paper
form at m = 1), every other component untouched, whatever form it was learned with.

Selection rule (:func:`choose`): the gain of a circuit is its amplified mean logit difference minus
the unamplified model's, on validation records (train records when there are none). Among circuits
with at least one component whose gain is at least ``keep`` (default 90%) of the best gain, pick the
sparsest; ties go to the larger lambda. If no circuit selects anything, the smallest lambda wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from peft_cca.arch import describe
from peft_cca.circuit import Circuit
from peft_cca.dcm.data import Record
from peft_cca.dcm.paths import make_path
from peft_cca.dcm.train import DCMConfig, DCMResult, mean_logit_diff, train_mask

logger = logging.getLogger(__name__)


@dataclass
class SweepResult:
    lam: float
    circuit: Circuit
    history: dict[str, Any]
    train_logit_diff: float
    validation_logit_diff: float
    base_train_logit_diff: float
    base_validation_logit_diff: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """Amplified minus base mean logit difference (validation when there is any)."""
        if self.validation_logit_diff == self.validation_logit_diff:  # not NaN
            return self.validation_logit_diff - self.base_validation_logit_diff
        return self.train_logit_diff - self.base_train_logit_diff

    def row(self) -> dict[str, Any]:
        stats = self.circuit.stats()
        return {
            "lambda": self.lam,
            "fraction": stats["fraction"],
            "selected": stats["selected"],
            "counts": stats["counts"],
            "train_logit_diff": self.train_logit_diff,
            "validation_logit_diff": self.validation_logit_diff,
            "base_train_logit_diff": self.base_train_logit_diff,
            "base_validation_logit_diff": self.base_validation_logit_diff,
            "gain": self.gain,
            "stopped_early": self.history.get("stopped_early", False),
        }


def choose(results: list[SweepResult], keep: float = 0.9) -> SweepResult:
    """The sparsest non-empty circuit within ``keep`` of the best gain (see the module docstring)."""
    if not results:
        raise ValueError("empty sweep")
    non_empty = [r for r in results if len(r.circuit) > 0]
    if not non_empty:
        return min(results, key=lambda r: r.lam)
    best = max(r.gain for r in non_empty)
    good = [r for r in non_empty if r.gain >= keep * best] if best > 0 else non_empty
    return min(good, key=lambda r: (len(r.circuit), -r.lam))


def sweep(
    model: nn.Module,
    train: list[Record],
    validation: list[Record],
    lambdas: list[float],
    config: DCMConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> list[SweepResult]:
    """Train one mask per lambda, sharing one prefix cache (fast path) across all of them."""
    config = config or DCMConfig()
    spec = describe(model)
    train_path = make_path(config.path, model, train, config.cache_budget_mb, config.overflow, progress)
    val_path = (
        make_path(config.path, model, validation, config.cache_budget_mb, config.overflow, progress)
        if validation
        else None
    )
    bs = config.batch_size
    base_train = mean_logit_diff(model, train_path, batch_size=bs)
    base_val = mean_logit_diff(model, val_path, batch_size=bs) if val_path else float("nan")
    results = []
    for lam in lambdas:
        run_dir = Path(out_dir) / f"lambda_{lam:g}" if out_dir is not None else None
        result: DCMResult = train_mask(
            model, train, replace(config, lam=lam), run_dir, resume=resume, path=train_path, progress=progress
        )
        val_diff = mean_logit_diff(model, val_path, result.circuit, bs, spec) if val_path else float("nan")
        sweep_result = SweepResult(
            lam=lam,
            circuit=result.circuit,
            history=result.history,
            train_logit_diff=mean_logit_diff(model, train_path, result.circuit, bs, spec),
            validation_logit_diff=val_diff,
            base_train_logit_diff=base_train,
            base_validation_logit_diff=base_val,
        )
        logger.info("lambda=%g: %s, gain %.3f", lam, result.circuit, sweep_result.gain)
        results.append(sweep_result)
    return results
