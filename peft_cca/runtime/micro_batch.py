"""The largest micro-batch that fits, for any trainer: probes on CUDA, a token budget elsewhere; under several
processes the smallest choice wins, so every process accumulates alike. What a probe runs (a CCA pivot record, a
LoRA SFT row) is the caller's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from peft_cca.defaults import CPU_TOKEN_BUDGET


def fit_micro_batch(start: int, probe: Callable[[int], None]) -> int:
    """The largest size from ``start`` down, halving, at which ``probe(size)`` runs without running out of memory."""
    size = max(1, start)
    while True:
        try:
            probe(size)
            return size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            torch.cuda.empty_cache()
            size //= 2


def _cuda_peak(device: torch.device, probe: Callable[[int], None], size: int) -> int:
    """Bytes a probe of ``size`` rows adds at its peak to what is allocated before it."""
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    probe(size)
    return torch.cuda.max_memory_allocated(device) - before


def cpu_token_budget(model: nn.Module) -> int:
    """Tokens per micro-batch off CUDA: a quarter of the available host memory over a rough upper estimate of what
    one token keeps for the backward pass (6 hidden-size and 4 intermediate-size values per layer in the weights'
    dtype), capped at ``CPU_TOKEN_BUDGET``: CPU kernels gain little from bigger batches."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not hidden or not layers:
        return CPU_TOKEN_BUDGET
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    per_token = layers * (6 * hidden + 4 * inner) * next(model.parameters()).element_size()
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the cap alone
        return CPU_TOKEN_BUDGET
    return max(1, min(CPU_TOKEN_BUDGET, available // 4 // per_token))


def auto_micro_batch(
    model: nn.Module,
    lengths: Sequence[int],
    probe: Callable[[int], None],
    cap: int | None = None,
) -> int:
    """The micro-batch ``--micro-batch auto`` trains with: never more than ``cap`` (default: every row).

    On CUDA, a row's memory is measured with probes of 1 and 2 copies of the longest row, the size that should
    fit in 90% of ``torch.cuda.mem_get_info``'s free memory is tried, halving on out-of-memory. Elsewhere the
    token budget of :func:`cpu_token_budget` bounds it. Under several processes the smallest choice wins, so
    every process accumulates alike. The choice changes memory and speed only: the full-batch gradient is the
    same for every size.
    """
    cap = max(1, cap or len(lengths))
    longest = max(lengths)
    device = next(model.parameters()).device
    if device.type == "cuda":
        peaks = [_cuda_peak(device, probe, size) for size in (1, 2)] if cap > 1 else []
        free, _ = torch.cuda.mem_get_info(device)
        if peaks:
            # the gradients are a fixed cost (peak at 1 row minus that row): the rows share what is left, less
            # room for an optimizer state of two copies of the trainable weights (AdamW's; SGD keeps none)
            per_row = max(1, peaks[1] - peaks[0])
            fixed = max(0, peaks[0] - per_row) + 2 * sum(
                p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
            )
            cap = min(cap, max(1, int((0.9 * free - fixed) / per_row)))
        size = fit_micro_batch(cap, probe)
    else:
        size = min(cap, max(1, cpu_token_budget(model) // max(1, longest)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        chosen = torch.tensor([size], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(chosen, op=torch.distributed.ReduceOp.MIN)
        size = int(chosen.item())
    return size
