"""DCM checkpoints that hold tensors and plain data only: one safetensors file, never a pickle.

``torch.load(weights_only=False)`` on a file in a run folder runs whatever code a planted pickle carries,
as the user. So the mask values and the optimizer's state tensors go into safetensors, and everything
else (epoch, early-stop counter, history, optimizer hyper-parameters, scheduler state) is JSON stored
in the same file's metadata: one file, written atomically, so an interrupted save leaves the previous one.
A pickle checkpoint of an older version is refused with a message, never opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from peft_cca.errors import CCAError
from peft_cca.runtime.runfolder import atomic_write_bytes, json_safe

CHECKPOINT = "dcm-checkpoint.safetensors"
LEGACY_CHECKPOINT = "dcm-checkpoint.pt"
_STATE_KEY = "dcm_state"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into tensors (by ``param.name`` key) and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(param), {})[name] = value
    return tensors, {"plain_state": plain, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    for param, values in meta["plain_state"].items():
        state.setdefault(int(param), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    file: Path,
    mask: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    progress: dict[str, Any],
) -> None:
    """Mask, optimizer, scheduler and ``progress`` (epoch, counters, history: plain data) in one file."""
    tensors = {f"mask.{k}": v.detach().cpu().contiguous() for k, v in mask.state_dict().items()}
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(optimizer_tensors)
    meta = {
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "progress": progress,
    }
    text = json.dumps(json_safe(meta), allow_nan=False)
    atomic_write_bytes(Path(file), save_safetensors(tensors, metadata={_STATE_KEY: text}))


def _metadata(data: bytes, file: Path) -> dict[str, Any]:
    """The JSON of a safetensors file's header, read without loading any tensor."""
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_len])
        return json.loads(header["__metadata__"][_STATE_KEY])
    except (ValueError, KeyError, TypeError) as err:
        raise CCAError(f"{file} is not a DCM checkpoint (no {_STATE_KEY} metadata): delete it and run again") from err


def load_checkpoint(
    file: Path,
    mask: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> dict[str, Any]:
    """Restore mask, optimizer and scheduler in place from :func:`save_checkpoint`'s file; returns the progress."""
    file = Path(file)
    data = file.read_bytes()
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as err:  # a pickle, a truncated file, anything else
        raise CCAError(
            f"{file} is not a safetensors DCM checkpoint ({err}); it was not loaded. Delete it (and run again "
            "without --resume to start afresh)"
        ) from err
    meta = _metadata(data, file)
    device = next(mask.parameters()).device
    mask.load_state_dict({k.removeprefix("mask."): v.to(device) for k, v in tensors.items() if k.startswith("mask.")})
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta["progress"]


def refuse_legacy(folder: Path) -> None:
    """Stop before a pickle checkpoint of an older version is ever opened (it could run code)."""
    legacy = Path(folder) / LEGACY_CHECKPOINT
    if legacy.exists():
        raise CCAError(
            f"{legacy} is a pickle checkpoint, which can run arbitrary code when loaded, so it is not loaded; "
            "delete it (and run again without --resume to start afresh)"
        )
