"""The DCM training loop: learn the mask, read off the circuit.

Loss per batch: ``-mean_b(logit_desired_b - logit_undesired_b) + lambda * sum(m)``; Adam, mask
clamped to [0, 1] after every step, optional step decay of the learning rate.

Early stopping: the run stops once the selected set (m > 0.5) has not changed for
``ceil(early_stop_fraction x batches per epoch)`` consecutive steps. Counting starts only after
``early_stop_after`` epochs, and only steps whose selection is non-empty count: in the paper form every
mask starts at 0 and needs at least 0.5 / lr Adam steps to cross the threshold, so "nothing selected,
unchanged" would otherwise stop every run long before any component could be selected.

Reproducible: the mask starts from a constant and the order of epoch ``e`` is a permutation drawn
from ``seed + e``, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from peft_cca.arch import COMPONENT_KINDS, ArchSpec, describe
from peft_cca.circuit import Circuit
from peft_cca.dcm.data import Record
from peft_cca.dcm.interventions import ComponentMask, FixedScales, MaskIntervention
from peft_cca.dcm.paths import FullSequencePath, OneTokenPath, make_path

logger = logging.getLogger(__name__)

CHECKPOINT = "dcm-checkpoint.pt"


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
    checkpoint_every: int = 5  # epochs; only with an output directory
    path: str = "fast"
    cache_budget_mb: float = 2048.0
    overflow: str = "spill"

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lambda must be >= 0, got {self.lam}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")


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


def train_mask(
    model: nn.Module,
    records: list[Record],
    config: DCMConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    path: FullSequencePath | OneTokenPath | None = None,
    progress: bool = True,
) -> DCMResult:
    """Learn a DCM mask on ``records``; returns the mask, its circuit and the history.

    ``path`` lets a caller reuse one prefix cache across a lambda sweep. With ``out_dir`` the mask,
    optimizer and history are checkpointed every ``checkpoint_every`` epochs; ``resume=True`` continues
    from that checkpoint.
    """
    config = config or DCMConfig()
    if not records:
        raise ValueError("DCM needs at least one training record")
    _frozen(model)
    spec = describe(model)
    if path is None:
        path = make_path(config.path, model, records, config.cache_budget_mb, config.overflow, progress)
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
    history: dict[str, Any] = {"config": asdict(config), "steps": [], "epochs": [], "stopped_early": False}
    start_epoch, unchanged = 0, 0
    checkpoint = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    if resume and checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        mask.load_state_dict(state["mask"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, unchanged, history = state["epoch"] + 1, state["unchanged"], state["history"]
        logger.info("resuming DCM from %s after epoch %d", checkpoint, state["epoch"])
    previous = _selection_key(mask)
    stop = history["stopped_early"]
    with MaskIntervention(model, spec, mask) as intervention:
        for epoch in tqdm(range(start_epoch, config.epochs), desc=f"DCM lambda={config.lam:g}", disable=not progress):
            if stop:
                break
            epoch_loss, epoch_diff = [], []
            for indices in _batches(len(records), config.batch_size, config.seed, epoch):
                optimizer.zero_grad(set_to_none=True)
                loss, diff = batch_loss(path, intervention, mask, indices, config.lam)
                loss.backward()
                optimizer.step()
                mask.clamp_()
                current = _selection_key(mask)
                # an empty selection is "not yet" (paper-form masks need >= 0.5 / lr steps to reach the threshold)
                unchanged = unchanged + 1 if torch.equal(current, previous) and bool(current.any()) else 0
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
                _save_checkpoint(checkpoint, mask, optimizer, scheduler, epoch, unchanged, history)
    circuit = mask.to_circuit()
    history["circuit"] = circuit.stats()
    history["mask_mean"] = {k: mask.values[k].detach().mean().item() for k in COMPONENT_KINDS}
    if isinstance(path, OneTokenPath):
        history["cache"] = path.cache.summary()
    return DCMResult(mask=mask, circuit=circuit, history=history)


def _save_checkpoint(file: Path, mask, optimizer, scheduler, epoch: int, unchanged: int, history) -> None:
    """Written to a temporary name and renamed, so an interrupted save never leaves a broken checkpoint."""
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    torch.save(
        {
            "mask": mask.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "unchanged": unchanged,
            "history": history,
        },
        tmp,
    )
    tmp.replace(file)
