"""Lambda sweep: one DCM run per lambda, scored on train and validation records, and a stated pick.

Each lambda's circuit is scored "amplified": its selected components doubled (scale 2, the paper
form at m = 1), every other component untouched, whatever form it was learned with.

The pick (:func:`choose`) follows :data:`SELECTION_RULE`, which ``peft-cca circuit`` also writes into
``sweep.json`` so that a sweep's output states how it chose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from peft_cca.dcm.paths import make_path
from peft_cca.dcm.train import RESTART_HINT, DCMConfig, DCMResult, mean_logit_diff, run_settings, train_mask
from peft_cca.localize.records import Record
from peft_cca.method.arch import describe
from peft_cca.method.circuit import Circuit
from peft_cca.runtime.runfolder import check_settings

logger = logging.getLogger(__name__)

MIN_VALIDATION_RECORDS = 16

SELECTION_RULE = (
    "The gain of a circuit is its amplified mean logit difference minus the unamplified model's, on validation "
    f"records, or on train records when there are fewer than {MIN_VALIDATION_RECORDS} validation records (one "
    "of 5 records moves the mean by more than the gains being ranked: on SmolLM2 a 5-record validation set "
    "ranked a 5-component circuit above an 841-component one). Only non-empty circuits within the component "
    "budget max_fraction compete (when none is, the sparsest non-empty one is taken); among those whose gain "
    "is at least keep (default 90%) of the best, pick the sparsest; ties go to the larger lambda. If no "
    "circuit selects anything, the smallest lambda wins."
)


@dataclass
class SweepResult:
    lam: float
    circuit: Circuit
    history: dict[str, Any]
    train_logit_diff: float
    validation_logit_diff: float
    base_train_logit_diff: float
    base_validation_logit_diff: float
    validation_records: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """Amplified minus base mean logit difference (on validation when it has enough records)."""
        if self.validation_records >= MIN_VALIDATION_RECORDS:
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
            "gain_on": "validation" if self.validation_records >= MIN_VALIDATION_RECORDS else "train",
            "stopped_early": self.history.get("stopped_early", False),
        }


def choose(results: list[SweepResult], keep: float = 0.9, max_fraction: float | None = None) -> SweepResult:
    """The sparsest non-empty circuit within the budget and within ``keep`` of the best gain (SELECTION_RULE)."""
    if not results:
        raise ValueError("empty sweep")
    non_empty = [r for r in results if len(r.circuit) > 0]
    if not non_empty:
        return min(results, key=lambda r: r.lam)
    within = [r for r in non_empty if max_fraction is None or r.circuit.stats()["fraction"] <= max_fraction]
    if not within:
        return min(non_empty, key=lambda r: (len(r.circuit), -r.lam))
    best = max(r.gain for r in within)
    good = [r for r in within if r.gain >= keep * best] if best > 0 else within
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
    extra_settings: dict[str, Any] | None = None,
) -> list[SweepResult]:
    """Train one mask per lambda, sharing one prefix cache (fast path) across all of them.

    With ``out_dir`` each lambda's folder records its settings (:func:`run_settings` plus ``extra_settings``)
    and a resume with other ones is refused before any model work.
    """
    config = config or DCMConfig()
    folders = {lam: Path(out_dir) / f"lambda_{lam:g}" for lam in lambdas} if out_dir is not None else {}
    settings = {lam: run_settings(replace(config, lam=lam), train, **(extra_settings or {})) for lam in lambdas}
    for lam, folder in folders.items():
        check_settings(folder, settings[lam], overwrite=not resume, restart_hint=RESTART_HINT)
    spec = describe(model)
    budgets = (config.cache_budget_mb, config.overflow, progress, config.host_budget_mb)
    train_path = make_path(config.path, model, train, *budgets)
    val_path = make_path(config.path, model, validation, *budgets) if validation else None
    bs = config.batch_size
    base_train = mean_logit_diff(model, train_path, batch_size=bs)
    base_val = mean_logit_diff(model, val_path, batch_size=bs) if val_path else float("nan")
    results = []
    for lam in lambdas:
        result: DCMResult = train_mask(
            model,
            train,
            replace(config, lam=lam),
            folders.get(lam),
            resume=resume,
            path=train_path,
            progress=progress,
            settings=settings[lam],
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
            validation_records=len(validation),
        )
        logger.info("lambda=%g: %s, gain %.3f", lam, result.circuit, sweep_result.gain)
        results.append(sweep_result)
    return results
