"""Keys and values of every prefix except its last token, computed once for a whole DCM run.

Why this is exact: DCM scales components at the last position only. Under causal attention no
earlier position attends to the last one, and the weights are frozen, so positions 0..n-2 produce the
same keys and values with any mask. Their cache is computed once without gradients; each training
step then runs forward and backward for the last token only (see :class:`peft_cca.dcm.paths.OneTokenPath`).

Shared prefixes, stored once: the records of one problem, and all records built on the same few-shot
prompt, begin with a long common run of tokens. The records are sorted and cut into groups of neighbours
(the cut that stores the fewest tokens, by dynamic programming over the sorted order); a group's common
prefix is computed and stored once, and each record stores only its own suffix, computed on top of the
shared keys and values. The last token then attends over ``[shared ; suffix]``: the same keys and values
as the whole prefix, up to float summation order. At paper scale (512 records of ~1,000 tokens, 8-shot
prompts of ~800) this stores a few times fewer tokens.

Placement: each layer's tensors live on that layer's device (``device_map="auto"`` spreads layers over
GPUs) while the device budget lasts (default: half the device's free memory, ``torch.cuda.mem_get_info``),
then in host memory (pinned on CUDA, default budget: half the available RAM, psutil), then, past both,
records are recomputed when a batch needs them, or spilled to disk only when ``overflow="spill"``.
On a CPU model the device is the host: one budget. :meth:`PrefixCache.summary` reports where they went.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from peft_cca.errors import UsageError
from peft_cca.method.arch import describe
from peft_cca.runtime.generation import cache_argument

logger = logging.getLogger(__name__)

Overflow = Literal["recompute", "spill"]
OVERFLOWS = ("recompute", "spill")
AUTO_FRACTION = 0.5  # of free device memory / available RAM: the rest is for the training step itself

# One cached block: per layer, keys and values of shape (kv_heads, tokens, head_dim).
KV = list[tuple[torch.Tensor, torch.Tensor]]


def free_bytes(device: torch.device) -> int:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on CUDA, the host's available RAM otherwise."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return psutil.virtual_memory().available


def layer_devices(model: nn.Module) -> list[torch.device]:
    """Where each decoder layer runs (``device_map="auto"`` spreads them): its keys and values are kept there."""
    return [next(block.parameters()).device for block in describe(model).layers(model)]


def auto_device_budget(layer_devices: Sequence[torch.device]) -> float:
    """Bytes of cache the layers' devices can hold together: each block puts ``1/len(layer_devices)`` of its
    bytes on each layer's device (every layer caches the same tokens), so a device holding ``n`` of the layers
    bounds the total at ``AUTO_FRACTION * free / (n / layers)``; the tightest device decides."""
    counts = Counter(layer_devices)
    return min(AUTO_FRACTION * free_bytes(d) * len(layer_devices) / n for d, n in counts.items())


def _nbytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def _shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def group_by_shared_prefix(prefixes: Sequence[Sequence[int]]) -> list[tuple[list[int], int]]:
    """``(indices, shared length)`` groups of the non-empty prefixes that store the fewest tokens.

    A group of ``m`` prefixes with common prefix ``S`` stores ``S + sum(len - S)`` tokens; groups are runs of
    the lexicographically sorted prefixes (neighbours share the most), cut by dynamic programming. A group
    costs one extra token so that equal totals prefer fewer groups; a one-record group shares its whole prefix.
    """
    order = sorted((i for i, p in enumerate(prefixes) if p), key=lambda i: tuple(prefixes[i]))
    n = len(order)
    lengths = [len(prefixes[i]) for i in order]
    neighbour = [_shared_length(prefixes[order[j]], prefixes[order[j + 1]]) for j in range(n - 1)]
    best = [0] * (n + 1)  # best[j]: fewest tokens for order[:j]
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        shared, total = lengths[j - 1], lengths[j - 1]
        best[j], cut[j] = best[j - 1] + total + 1, j - 1
        for i in range(j - 2, -1, -1):  # group order[i:j]
            shared = min(shared, neighbour[i])
            if shared == 0:
                break
            total += lengths[i]
            cost = best[i] + total - (j - i - 1) * shared + 1
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        i = cut[j]
        members = order[i:j]
        shared = min(lengths[i:j]) if len(members) == 1 else min(neighbour[i : j - 1])
        groups.append((members, shared))
        j = i
    return groups[::-1]


def _forward_kv(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, past: KV | None) -> KV:
    """Run ``ids`` (right-padded) on top of ``past`` (batch-expanded); per-layer ``(B, H, T, D)`` keys/values.

    A plain ``DynamicCache`` (not one built from the config) keeps every position even for sliding-window
    layers, which the last token may still need when the window exceeds the gap.
    """
    from transformers import DynamicCache

    device = model.get_input_embeddings().weight.device
    cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
    model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        use_cache=True,
        logits_to_keep=1,
        **{cache_argument(model): cache},
    )
    return [(layer.keys, layer.values) for layer in cache.layers]


def _padded(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask: under causal attention padding after a token never changes it."""
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    attention = torch.zeros(len(rows), longest, dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention[row, : len(tokens)] = 1
    return ids, attention


@torch.no_grad()
def compute_prefix_kv(model: nn.Module, prefixes: list[list[int]]) -> list[KV]:
    """KV of each whole prefix (batched, right-padded), one block per prefix: the plain computation."""
    ids, attention = _padded(prefixes)
    kv = _forward_kv(model, ids, attention, None)
    return [
        [(k[row, :, : len(p)].clone(), v[row, :, : len(p)].clone()) for k, v in kv] for row, p in enumerate(prefixes)
    ]


@dataclass
class _Slot:
    """Where one block went: ``kv`` in memory (``tier`` device or host), ``file`` on disk, or neither."""

    tier: str
    kv: KV | None = None
    file: Path | None = None
    tokens: int = 0


class PrefixCache:
    """KV of ``prefix_ids[:-1]`` for every record: shared prefixes once, suffixes per record, placed by budget."""

    def __init__(
        self,
        model: nn.Module,
        prefixes: list[list[int]],
        budget_mb: float | None = None,
        overflow: Overflow = "recompute",
        spill_dir: str | Path | None = None,
        batch_size: int = 8,
        progress: bool = True,
        host_budget_mb: float | None = None,
    ) -> None:
        if overflow not in OVERFLOWS:
            raise UsageError(f"prefix cache overflow must be one of {OVERFLOWS}, not {overflow!r}")
        self.model = model
        self.prefixes = [list(p[:-1]) for p in prefixes]
        self.overflow = overflow
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.layer_devices = layer_devices(model)
        self.groups = group_by_shared_prefix(self.prefixes)
        self.group_of: dict[int, int] = {i: g for g, (members, _) in enumerate(self.groups) for i in members}
        self.shared: list[_Slot] = []
        self.suffix: dict[int, _Slot] = {}
        self._used = {"device": 0, "host": 0}
        self._budget = self._budgets(budget_mb, host_budget_mb)
        self._build(batch_size, progress)

    # -- placement -------------------------------------------------------------------------------
    def _budgets(self, device_mb: float | None, host_mb: float | None) -> dict[str, int]:
        on_host = all(d.type == "cpu" for d in self.layer_devices)
        host = host_mb * 2**20 if host_mb is not None else AUTO_FRACTION * free_bytes(torch.device("cpu"))
        if on_host:  # the device is the host: one budget, the device's when given
            return {"device": int(device_mb * 2**20 if device_mb is not None else host), "host": 0}
        device = device_mb * 2**20 if device_mb is not None else auto_device_budget(self.layer_devices)
        return {"device": int(device), "host": int(host)}

    def _place(self, kv: KV, name: str) -> _Slot:
        size, tokens = _nbytes(kv), kv[0][0].shape[-2]
        for tier in ("device", "host"):
            if self._used[tier] + size <= self._budget[tier]:
                self._used[tier] += size
                if tier == "host" and kv[0][0].device.type != "cpu":
                    pin = torch.cuda.is_available()
                    kv = [
                        (k.to("cpu").pin_memory() if pin else k.cpu(), v.to("cpu").pin_memory() if pin else v.cpu())
                        for k, v in kv
                    ]
                return _Slot(tier, kv=kv, tokens=tokens)
        if self.overflow == "spill":
            file = self._spill_path(name)
            save_file(
                {
                    f"{i}.{kv_name}": t.contiguous().cpu()
                    for i, pair in enumerate(kv)
                    for kv_name, t in zip("kv", pair, strict=True)
                },
                str(file),
            )
            return _Slot("disk", file=file, tokens=tokens)
        return _Slot("recompute", tokens=tokens)

    def _spill_path(self, name: str) -> Path:
        if self._spill_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="peft-cca-kv-")
            self._spill_dir = Path(self._tmp.name)
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir / f"kv-{name}.safetensors"

    def _read(self, slot: _Slot) -> KV | None:
        if slot.kv is not None:
            return slot.kv
        if slot.file is not None:
            tensors = load_file(str(slot.file))
            return [(tensors[f"{i}.k"], tensors[f"{i}.v"]) for i in range(len(self.layer_devices))]
        return None

    # -- building --------------------------------------------------------------------------------
    @torch.no_grad()
    def _build(self, batch_size: int, progress: bool) -> None:
        bar = tqdm(total=len(self.group_of), desc="prefix KV cache", disable=not progress, leave=False)
        for g, (members, shared) in enumerate(self.groups):
            head = self.prefixes[members[0]][:shared]
            shared_kv = compute_prefix_kv(self.model, [head])[0] if shared else []
            # placed first (many records read it); the local tensors still serve the suffixes below
            self.shared.append(self._place(shared_kv, f"g{g}") if shared else _Slot("device"))
            tails = [i for i in members if len(self.prefixes[i]) > shared]
            for start in range(0, len(tails), batch_size):
                batch = tails[start : start + batch_size]
                rows = [self.prefixes[i][shared:] for i in batch]
                ids, attention = _padded(rows)
                past = (
                    [
                        (k.unsqueeze(0).expand(len(batch), -1, -1, -1), v.unsqueeze(0).expand(len(batch), -1, -1, -1))
                        for k, v in shared_kv
                    ]
                    if shared
                    else None
                )
                if past:
                    attention = torch.cat([torch.ones(len(batch), shared, dtype=torch.long), attention], dim=1)
                kv = _forward_kv(self.model, ids, attention, past)
                for row, index in enumerate(batch):
                    end = shared + len(rows[row])
                    own = [(k[row, :, shared:end].clone(), v[row, :, shared:end].clone()) for k, v in kv]
                    self.suffix[index] = self._place(own, f"r{index}")
            bar.update(len(members))
        bar.close()
        logger.info("prefix KV cache: %s", self.summary())

    # -- reading ---------------------------------------------------------------------------------
    def parts(self, index: int) -> list[KV]:
        """The blocks whose concatenation is the KV of record ``index``'s cached prefix (``[]`` for none).

        Stored tensors are returned as they are: callers copy them, never mutate them.
        """
        if not self.prefixes[index]:
            return []
        shared = self._read(self.shared[self.group_of[index]]) if self.groups[self.group_of[index]][1] else []
        suffix_slot = self.suffix.get(index)
        suffix = self._read(suffix_slot) if suffix_slot is not None else []
        if shared is None or suffix is None:
            return compute_prefix_kv(self.model, [self.prefixes[index]])
        return [part for part in (shared, suffix) if part]

    def summary(self) -> dict[str, float | int | str]:
        slots = [*self.shared, *self.suffix.values()]
        whole = sum(len(p) for p in self.prefixes)
        stored = sum(s.tokens for s in slots)
        return {
            "records": len(self.prefixes),
            "groups": len(self.groups),
            "tokens_whole": whole,
            "tokens_stored": stored,
            "device_mb": self._used["device"] / 2**20,
            "host_mb": self._used["host"] / 2**20,
            "spilled_blocks": sum(s.tier == "disk" for s in slots),
            "recomputed_blocks": sum(s.tier == "recompute" for s in slots),
            "overflow": self.overflow,
        }
