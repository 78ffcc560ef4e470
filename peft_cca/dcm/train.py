"""The DCM training loop: learn the mask, read off the circuit.

Loss per batch: ``-mean_b(logit_desired_b - logit_undesired_b) + lambda * sum(m)``; Adam, mask
clamped to [0, 1] after every step, optional step decay of the learning rate.

Early stopping waits for ``patience = ceil(early_stop_fraction x batches per epoch)`` unchanged steps and
may trigger only after ``early_stop_after`` epochs. A step whose selection is still the initial one never
counts: every mask starts on one side of the threshold (paper form: 0, nothing selected; authors' form:
1, everything selected) and needs about 0.5 / lr Adam steps to cross it, so "unchanged since the start"
would otherwise end every run before any mask has moved. Two rules (``early_stop_rule``):

* ``selection`` (default of the paper form): the selected set itself is unchanged for ``patience``
  consecutive steps, across epoch boundaries; an empty selection never counts.
* ``authors`` (default of the authors' form, as in their code): the *number* selected is unchanged for
  ``patience`` steps within one epoch; the count restarts at every epoch.

Reproducible: the mask starts from a constant and the order of epoch ``e`` is a permutation drawn
from ``seed + e``, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from peft_cca.dcm.checkpoint import CHECKPOINT, load_checkpoint, refuse_legacy, save_checkpoint
from peft_cca.dcm.interventions import FORMS, ComponentMask, FixedScales, MaskIntervention
from peft_cca.dcm.paths import FullSequencePath, OneTokenPath, make_path
from peft_cca.errors import UsageError
from peft_cca.localize.records import Record
from peft_cca.method.arch import COMPONENT_KINDS, ArchSpec, describe
from peft_cca.method.circuit import Circuit
from peft_cca.runtime.runfolder import check_settings

logger = logging.getLogger(__name__)

AUTHORS_STEP_LR = (5, 0.9)  # the authors' StepLR(step_size=5 epochs, gamma=0.9)
EARLY_STOP_RULES = ("auto", "selection", "authors")
RESTART_HINT = "run without --resume to start afresh, or choose another --out"


@dataclass
class DCMConfig:
    """Every knob of a DCM run; defaults follow the paper (Adam 5e-3, 50 epochs, batch 8)."""

    lam: float = 1e-2
    form: str = "paper"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 5e-3
    seed: int = 0
    decay_every: int | None = None  # epochs between learning-rate decays (None: constant lr)
    decay_gamma: float = 0.5
    early_stop_fraction: float | None = 0.2  # None disables early stopping
    early_stop_after: int = 1  # epochs before early stopping may trigger
    early_stop_rule: str = "auto"  # auto: "authors" for the authors' form, else "selection"
    checkpoint_every: int = 5  # epochs; only with an output directory
    path: str = "fast"
    cache_budget_mb: float | None = None  # device memory for the prefix cache; None: from the free memory
    host_budget_mb: float | None = None  # host memory past the device budget; None: from the available RAM
    overflow: str = "recompute"

    def __post_init__(self) -> None:
        checks = (
            (math.isfinite(self.lam) and self.lam >= 0, f"lambda must be a finite number >= 0, not {self.lam}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, not {self.lr}"),
            (self.epochs >= 1, f"epochs must be >= 1, not {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, not {self.batch_size}"),
            (self.form in FORMS, f"form must be one of {sorted(FORMS)}, not {self.form!r}"),
            (self.early_stop_rule in EARLY_STOP_RULES, f"early-stop rule must be one of {EARLY_STOP_RULES}"),
            (self.decay_every is None or self.decay_every >= 1, f"decay every must be >= 1, not {self.decay_every}"),
            (0 < self.decay_gamma <= 1, f"decay gamma must be in (0, 1], not {self.decay_gamma}"),
            (self.checkpoint_every >= 1, f"checkpoint every must be >= 1, not {self.checkpoint_every}"),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(f"DCM setting: {message}")

    @property
    def stop_rule(self) -> str:
        if self.early_stop_rule != "auto":
            return self.early_stop_rule
        return "authors" if self.form == "authors" else "selection"

    def lr_schedule(self) -> dict[str, Any] | str:
        """What history.json says about the learning rate over epochs."""
        if not self.decay_every:
            return "constant"
        return {"scheduler": "StepLR", "step_size": self.decay_every, "gamma": self.decay_gamma, "unit": "epoch"}


def records_digest(records: list[Record]) -> str:
    """sha256 of what DCM reads from the records (ids and tokens, in order): a resume must see the same data."""
    rows = [[list(r.prefix_ids), r.desired, r.undesired] for r in records]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def run_settings(config: DCMConfig, records: list[Record], **extra: Any) -> dict[str, Any]:
    """The settings a lambda folder's output depends on (not the path or cache budgets, which are exact)."""
    keep = ("lam", "form", "epochs", "batch_size", "lr", "seed", "early_stop_fraction", "early_stop_after")
    return {
        **{k: getattr(config, k) for k in keep},
        "early_stop_rule": config.stop_rule,
        "lr_schedule": config.lr_schedule(),
        "records": len(records),
        "records_sha256": records_digest(records),
        **extra,
    }


@dataclass
class DCMResult:
    mask: ComponentMask
    circuit: Circuit
    history: dict[str, Any] = field(default_factory=dict)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[s : s + batch_size] for s in range(0, n, batch_size)]


def _frozen(model: nn.Module) -> None:
    """DCM never updates weights: no weight gradients, and dropout off so both paths agree."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def batch_loss(
    path: FullSequencePath | OneTokenPath,
    intervention: MaskIntervention,
    mask: ComponentMask,
    indices: list[int],
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per-example logit differences)`` of one batch under the mask."""
    diff = path.logit_diff(indices, intervention)
    return -diff.mean() + lam * mask.total(), diff


@torch.no_grad()
def mean_logit_diff(
    model: nn.Module,
    path: FullSequencePath | OneTokenPath,
    circuit: Circuit | None = None,
    batch_size: int = 8,
    spec: ArchSpec | None = None,
) -> float:
    """Mean logit difference over ``path``'s records, with ``circuit`` doubled (or no intervention)."""
    n = len(path.records)
    if n == 0:
        return float("nan")
    chunks = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    if circuit is None:
        return torch.cat([path.logit_diff(c) for c in chunks]).mean().item()
    with MaskIntervention(model, spec or describe(model), FixedScales(circuit)) as intervention:
        return torch.cat([path.logit_diff(c, intervention) for c in chunks]).mean().item()


def _selection_key(mask: ComponentMask) -> torch.Tensor:
    return torch.cat([s.reshape(-1) for s in mask.selected().values()])


def _same(rule: str, current: torch.Tensor, previous: torch.Tensor, initial: torch.Tensor) -> bool:
    """Whether a step counts toward patience under ``rule`` (see the module docstring)."""
    if torch.equal(current, initial):
        return False
    if rule == "authors":
        return int(current.sum()) == int(previous.sum())
    return torch.equal(current, previous) and bool(current.any())


def train_mask(
    model: nn.Module,
    records: list[Record],
    config: DCMConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    path: FullSequencePath | OneTokenPath | None = None,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> DCMResult:
    """Learn a DCM mask on ``records``; returns the mask, its circuit and the history.

    ``path`` lets a caller reuse one prefix cache across a lambda sweep. With ``out_dir`` the mask,
    optimizer and history are checkpointed every ``checkpoint_every`` epochs (safetensors, see
    :mod:`peft_cca.dcm.checkpoint`) and the run's settings (``settings``, default :func:`run_settings`)
    are recorded there; ``resume=True`` continues from the checkpoint and refuses other settings.
    """
    config = config or DCMConfig()
    if not records:
        raise UsageError("DCM needs at least one training record")
    checkpoint = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if checkpoint is not None:
        check_settings(
            checkpoint.parent,
            settings or run_settings(config, records),
            overwrite=not resume,
            restart_hint=RESTART_HINT,
        )
        if resume:
            refuse_legacy(checkpoint.parent)
        else:  # a fresh run: a checkpoint of the settings just replaced must never be resumed later
            checkpoint.unlink(missing_ok=True)
    _frozen(model)
    spec = describe(model)
    if path is None:
        path = make_path(
            config.path, model, records, config.cache_budget_mb, config.overflow, progress, config.host_budget_mb
        )
    device = next(model.parameters()).device
    mask = ComponentMask(spec.shape, config.form).to(device)
    optimizer = torch.optim.Adam(mask.parameters(), lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.decay_every, gamma=config.decay_gamma)
        if config.decay_every
        else None
    )
    batches_per_epoch = math.ceil(len(records) / config.batch_size)
    patience = max(1, math.ceil(config.early_stop_fraction * batches_per_epoch)) if config.early_stop_fraction else None
    rule = config.stop_rule
    history: dict[str, Any] = {
        "config": asdict(config),
        "early_stop_rule": rule,
        "patience_steps": patience,
        "lr_schedule": config.lr_schedule(),
        "steps": [],
        "epochs": [],
        "stopped_early": False,
    }
    start_epoch, unchanged = 0, 0
    initial = _selection_key(mask)
    previous = initial
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, mask, optimizer, scheduler)
        start_epoch, unchanged, history = state["epoch"] + 1, state["unchanged"], state["history"]
        previous = _selection_key(mask)
        logger.info("resuming DCM from %s after epoch %d", checkpoint, state["epoch"])
    stop = history["stopped_early"]
    with MaskIntervention(model, spec, mask) as intervention:
        for epoch in tqdm(range(start_epoch, config.epochs), desc=f"DCM lambda={config.lam:g}", disable=not progress):
            if stop:
                break
            if rule == "authors":
                unchanged = 0
            epoch_loss, epoch_diff = [], []
            for indices in _batches(len(records), config.batch_size, config.seed, epoch):
                optimizer.zero_grad(set_to_none=True)
                loss, diff = batch_loss(path, intervention, mask, indices, config.lam)
                loss.backward()
                optimizer.step()
                mask.clamp_()
                current = _selection_key(mask)
                unchanged = unchanged + 1 if _same(rule, current, previous, initial) else 0
                previous = current
                epoch_loss.append(loss.item())
                epoch_diff.append(diff.detach().mean().item())
                history["steps"].append(
                    {"epoch": epoch, "loss": loss.item(), "logit_diff": epoch_diff[-1], "selected": int(current.sum())}
                )
                if patience is not None and epoch >= config.early_stop_after and unchanged >= patience:
                    stop = history["stopped_early"] = True
                    break
            if scheduler is not None:
                scheduler.step()
            counts = mask.to_circuit().counts()
            history["epochs"].append(
                {
                    "epoch": epoch,
                    "loss": sum(epoch_loss) / len(epoch_loss),
                    "logit_diff": sum(epoch_diff) / len(epoch_diff),
                    "selected": sum(counts.values()),
                    "counts": counts,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
            if checkpoint is not None and ((epoch + 1) % config.checkpoint_every == 0 or stop):
                save_checkpoint(
                    checkpoint, mask, optimizer, scheduler, {"epoch": epoch, "unchanged": unchanged, "history": history}
                )
    circuit = mask.to_circuit()
    history["circuit"] = circuit.stats()
    history["mask_mean"] = {k: mask.values[k].detach().mean().item() for k in COMPONENT_KINDS}
    if isinstance(path, OneTokenPath):
        history["cache"] = path.cache.summary()
    return DCMResult(mask=mask, circuit=circuit, history=history)
