"""Stage 1's run folder: the one module that writes and reads ``meta.json`` and ``summary.json``.

Every later stage (the circuit, amplify, LoRA, evaluate, the Python API) asks :func:`read_meta` what stage 1
recorded, so the keys of older folders (``task_spec``, ``seed`` for the split seed, ``kept_groups`` in the summary,
a tokenizer named by a bare string) are read here and nowhere else. ``format_version`` says which form a folder has:

- 1 (no ``format_version`` key): folders written before 0.2's run-folder owners; the tokenizer is its name and
  size, so a vocabulary that changed under the same size is found only by decoding records back to their text;
- 2: adds ``format_version`` and the tokenizer's vocabulary sha256 (:func:`tokenizer_fingerprint`), which
  :func:`~peft_cca.localize.records.load_records` compares with the tokenizer in use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import read_object
from peft_cca.runtime.runfolder import atomic_write_json

META = "meta.json"
SUMMARY = "summary.json"
FORMAT_VERSION = 2
_REMEDY = "rerun stage 1 (peft-cca localize) to rewrite it"


def tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """Identity of a tokenizer that survives renames: its name, size and a hash of its vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return {"name": getattr(tokenizer, "name_or_path", ""), "vocab_size": len(tokenizer), "sha256": digest}


def _first(data: dict[str, Any], *keys: str) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


@dataclass(frozen=True)
class Stage1Meta:
    """What a stage 1 run recorded, under one name per field whatever the folder's format version."""

    folder: Path
    model: str | None
    task: str | None
    split_seed: int
    task_limit: int | None  # the --limit stage 1 split with: later stages must load the same count
    groups: list[str] | None  # the groups kept for training; None: not recorded (every group)
    method: str | None
    prompt_style: str | None
    prompt_template: str | None
    num_fewshot: int
    fewshot_seed: int
    exemplar_ids: list[str] | None
    tokenizer: dict[str, Any]  # name and vocab_size; sha256 from format 2 on
    format_version: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def path(self) -> Path:
        return self.folder / META


def meta_path(folder: str | Path) -> Path:
    return Path(folder) / META


def has_meta(folder: str | Path) -> bool:
    return meta_path(folder).is_file()


def write_meta(folder: str | Path, meta: dict[str, Any]) -> None:
    """``meta`` as ``<folder>/meta.json`` (atomically), with the current format version."""
    atomic_write_json(meta_path(folder), {"format_version": FORMAT_VERSION, **meta})


def _tokenizer(raw: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer block: a :func:`tokenizer_fingerprint` dict, or (format 1) a bare name and a size key."""
    tok = raw.get("tokenizer")
    if isinstance(tok, dict):
        return dict(tok)
    found: dict[str, Any] = {"name": tok} if isinstance(tok, str) else {}
    for key in ("tokenizer_vocab_size", "vocab_size"):
        if key in raw:
            found["vocab_size"] = raw[key]
    return found


def read_raw_meta(folder: str | Path, *, error: type[UsageError] = UsageError) -> dict[str, Any]:
    """``meta.json`` as its JSON object; a missing or damaged file is one ``error`` line naming it."""
    path = meta_path(folder)
    if not path.is_file():
        raise error(f"{Path(folder)} has no {META}: give the folder stage 1 (peft-cca localize) wrote")
    return read_object(path, _REMEDY, error=error)


def read_meta(folder: str | Path, *, error: type[UsageError] = UsageError) -> Stage1Meta:
    """The typed record of a stage 1 run folder (format 1 or 2). Kept groups come from ``meta.json`` or, in
    folders that recorded them only there, ``summary.json``."""
    folder = Path(folder)
    raw = read_raw_meta(folder, error=error)
    summary = read_summary(folder, error=error)
    # an empty list of kept groups is a filter too (nothing to train on), not its absence
    groups = next((d[k] for d in (raw, summary) for k in ("groups", "kept_groups") if d.get(k) is not None), None)
    config = raw.get("config") or {}
    return Stage1Meta(
        folder=folder,
        model=raw.get("model"),
        task=_first(raw, "task", "task_spec"),
        split_seed=int(_first(raw, "split_seed", "seed") or 0),
        task_limit=config.get("limit"),
        groups=list(groups) if groups is not None else None,
        method=raw.get("method") or config.get("method"),
        prompt_style=raw.get("prompt_style"),
        prompt_template=raw.get("prompt_template"),
        num_fewshot=int(raw.get("num_fewshot") or 0),
        fewshot_seed=int(raw.get("fewshot_seed") or 0),
        exemplar_ids=raw.get("exemplar_ids"),
        tokenizer=_tokenizer(raw),
        format_version=int(raw.get("format_version", 1)),
        raw=raw,
    )


def write_summary(folder: str | Path, summary: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / SUMMARY, summary)


def read_summary(folder: str | Path, *, error: type[UsageError] = UsageError) -> dict[str, Any]:
    """``summary.json`` of a finished stage 1 run; ``{}`` while none is written."""
    path = Path(folder) / SUMMARY
    return read_object(path, _REMEDY, error=error) if path.is_file() else {}


def why_no_records(summary: dict[str, Any]) -> str:
    """Why a stage 1 run wrote no record, with counts per reason, from its summary; "" when it wrote some."""
    if not summary:
        return f"the run has not finished: no {SUMMARY} yet; rerun the same localize command to resume it"
    if summary.get("records", 0):
        return ""
    accuracy = summary.get("accuracy_by_group") or {}
    kept = set(summary.get("kept_groups") or [])
    capped = [g for g in accuracy if g not in kept]
    cap = summary.get("max_group_accuracy")
    reasons = []
    if capped:
        rule = f"above --max-group-accuracy {cap:g}" if cap is not None else "above the accuracy cap"
        reasons.append(f"{len(capped)} of {len(accuracy)} groups {rule} (the base already solves them; raise it)")
    if summary.get("localized_problems", 0) == 0 and not capped:
        reasons.append("no problem of the kept groups is in the localized split(s) (see --splits and --limit)")
    if summary.get("no_counterfactual"):
        reasons.append(
            f"{summary['no_counterfactual']} problems with no counterfactual among the samples (raise --n-samples)"
        )
    no_pivot = summary.get("counterfactuals_found", 0) - summary.get("pivots", 0)
    if no_pivot > 0:
        reasons.append(f"{no_pivot} counterfactuals with no pivot token (the traces never diverged usefully)")
    return "; ".join(reasons) or "no problem was localized"
