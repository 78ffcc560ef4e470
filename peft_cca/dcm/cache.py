"""Keys and values of every prefix except its last token, computed once for a whole DCM run.

Why this is exact: DCM scales components at the last position only. Under causal attention no
earlier position attends to the last one, and the weights are frozen, so positions 0..n-2 produce the
same keys and values with any mask. Their cache is computed once without gradients; each training
step then runs forward and backward for the last token only (see :class:`peft_cca.dcm.paths.OneTokenPath`).

Memory: one record costs ``layers x 2 x kv_heads x (n-1) x head_dim`` floats. Past ``budget_mb`` the
cache either spills records to disk (memory-mapped on read) or drops them and recomputes them when a
batch needs them; which one happened is logged and reported by :meth:`PrefixCache.summary`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Overflow = Literal["spill", "recompute"]


@torch.no_grad()
def compute_prefix_kv(model: nn.Module, prefixes: list[list[int]]) -> list[torch.Tensor]:
    """KV of each prefix as one tensor ``(layers, 2, kv_heads, len, head_dim)``, batched.

    Prefixes are right-padded: under causal attention padding after a token never changes it.
    A full ``DynamicCache()`` (not one built from the config) keeps every position even for
    sliding-window layers, which the last token may still need when the window exceeds the gap.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    longest = max(len(p) for p in prefixes)
    ids = torch.zeros(len(prefixes), longest, dtype=torch.long)
    attention = torch.zeros(len(prefixes), longest, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        ids[row, : len(prefix)] = torch.tensor(prefix)
        attention[row, : len(prefix)] = 1
    cache = DynamicCache()
    model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    stacked = torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers])  # (L, 2, B, H, T, D)
    return [stacked[:, :, row, :, : len(prefix)].clone() for row, prefix in enumerate(prefixes)]


class PrefixCache:
    """KV of ``prefix_ids[:-1]`` for every record, in memory up to ``budget_mb``, then spilled or recomputed."""

    def __init__(
        self,
        model: nn.Module,
        prefixes: list[list[int]],
        budget_mb: float = 2048.0,
        overflow: Overflow = "spill",
        spill_dir: str | Path | None = None,
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        if overflow not in ("spill", "recompute"):
            raise ValueError(f"overflow must be 'spill' or 'recompute', not {overflow!r}")
        self.model = model
        self.prefixes = [list(p[:-1]) for p in prefixes]
        self.budget_bytes = int(budget_mb * 2**20)
        self.overflow = overflow
        self._memory: dict[int, torch.Tensor] = {}
        self._disk: dict[int, Path] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0
        self._build(batch_size, progress)

    def _spill_path(self, index: int) -> Path:
        if self._spill_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="peft-cca-kv-")
            self._spill_dir = Path(self._tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir / f"kv-{index}.pt"

    def _build(self, batch_size: int, progress: bool) -> None:
        # Group prefixes of similar length so that right padding wastes little work.
        order = sorted((i for i, p in enumerate(self.prefixes) if p), key=lambda i: len(self.prefixes[i]))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="prefix KV cache", disable=not progress, leave=False):
            kvs = compute_prefix_kv(self.model, [self.prefixes[i] for i in batch])
            for index, kv in zip(batch, kvs, strict=True):
                self._store(index, kv)
        if self._disk:
            logger.info(
                "prefix KV cache over budget: %d records spilled to %s (%.1f MB on disk)",
                len(self._disk),
                self._spill_dir,
                self.bytes_on_disk / 2**20,
            )
        dropped = len(order) - len(self._memory) - len(self._disk)
        if dropped:
            logger.info("prefix KV cache over budget: %d records will be recomputed when needed", dropped)
        logger.info("prefix KV cache: %d records, %.1f MB in memory", len(self._memory), self.bytes_in_memory / 2**20)

    def _store(self, index: int, kv: torch.Tensor) -> None:
        size = kv.numel() * kv.element_size()
        if self.bytes_in_memory + size <= self.budget_bytes:
            self._memory[index] = kv
            self.bytes_in_memory += size
        elif self.overflow == "spill":
            path = self._spill_path(index)
            torch.save(kv, path)
            self._disk[index] = path
            self.bytes_on_disk += size

    def get(self, index: int) -> torch.Tensor | None:
        """KV of record ``index`` (``None`` for a one-token prefix); never mutated by callers."""
        if not self.prefixes[index]:
            return None
        if index in self._memory:
            return self._memory[index]
        if index in self._disk:
            return torch.load(self._disk[index], mmap=True, weights_only=True)
        return compute_prefix_kv(self.model, [self.prefixes[index]])[0]

    def summary(self) -> dict[str, float | int | str]:
        cached = sum(1 for p in self.prefixes if p)
        return {
            "records": len(self.prefixes),
            "in_memory": len(self._memory),
            "spilled": len(self._disk),
            "recomputed": cached - len(self._memory) - len(self._disk),
            "memory_mb": self.bytes_in_memory / 2**20,
            "disk_mb": self.bytes_on_disk / 2**20,
            "overflow": self.overflow,
        }
