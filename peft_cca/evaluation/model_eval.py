"""Everything Tables 1 and 2 need for one model: which configuration it is, target exact match, general abilities."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from peft_cca.evaluation.drift import NEUTRAL_TEXTS, kl_drift
from peft_cca.evaluation.exact_match import evaluate_exact_match, on_main
from peft_cca.evaluation.lm_eval_bridge import lm_eval_bridge
from peft_cca.evaluation.retention import retention, retention_problems
from peft_cca.evaluation.settings import EvaluationSettings
from peft_cca.tasks.problem import Problem


def adapter_summary(model: nn.Module) -> dict[str, Any]:
    """Which configuration a model is ("Base", "CCA w/ mask", "CCA w/o mask", "LoRA"), with its circuit's stats."""
    config = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    if config is None:
        return {"config": "Base", "mask_percent": None, "circuit_counts": None, "circuit_layers": None}
    # PeftType is a str enum: str() gives "PeftType.CCA" on Python 3.11+, its value is "CCA"
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    if peft_type != "CCA":
        return {
            "config": "LoRA" if peft_type == "LORA" else peft_type,
            "mask_percent": None,
            "circuit_counts": None,
            "circuit_layers": None,
        }
    circuit = config.get_circuit()
    layers = {
        layer: {kind: len(circuit.selected(int(layer), kind)) for kind in ("q", "k", "v", "mlp")}
        for layer in map(str, range(circuit.shape.num_layers))
    }
    return {
        "config": "CCA w/o mask" if circuit.fraction == 1.0 else "CCA w/ mask",
        "mask_percent": 100.0 * circuit.fraction,
        "circuit_counts": circuit.counts(),
        "circuit_layers": layers,
        "num_layers": circuit.shape.num_layers,
        "kind_sizes": {kind: circuit.shape.count(kind) for kind in ("q", "k", "v", "mlp")},  # per layer
    }


def evaluate_model(
    model: nn.Module,
    tokenizer,
    test_problems: Sequence[Problem],
    settings: EvaluationSettings | None = None,
    *,
    val_problems: Sequence[Problem] | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Everything Tables 1 and 2 need for one model: ``{"test", "validation", "general": {...}}`` plus its config.

    ``settings`` (:class:`~peft_cca.evaluation.settings.EvaluationSettings`, what ``peft-cca evaluate`` parses) say
    what is measured. KL drift is measured against the same model with adapters disabled (0 for a bare base model);
    every process computes it (it is small, and so it is the same number in any launch); lm-eval runs on the main
    process. ``cache`` is a folder from :func:`prepare_cache` whose sub-folders keep finished batches per section.
    ``settings.scoring.prompt_options`` (stage 1's template and exemplars) prompt the target task only, not the
    general suite. The offline general suite (``general_limit`` documents per task, per subject for MMLU; default
    its CPU limits) and the cross-entropy on held-out Wikipedia text run on the main process; the cross-entropy
    keeps its per-document sums so that the report pairs every arm with the base per document. ``seconds`` holds
    each section's wall time (a resumed section counts only what it computed).
    """
    settings = settings or EvaluationSettings()
    scoring = settings.scoring
    prompt_options = scoring.prompt_options
    em = scoring.exact_match_options(with_prompt=False)  # the target task adds stage 1's prompt, retention not
    seconds: dict[str, float] = {}  # wall time per section, so a slow evaluation says where its time went

    @contextmanager
    def clock(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds[name] = round(time.perf_counter() - start, 1)

    def section(name: str) -> dict[str, Any]:
        return {**em, "cache": None if cache is None else Path(cache) / name}

    retention_tasks, batch_size = settings.retention_tasks, scoring.batch_size
    held_out = retention_problems(retention_tasks, settings.retention_size) if retention_tasks else []  # fails now
    result: dict[str, Any] = {**adapter_summary(model)}
    # per-problem results kept: a change against the base gets its paired standard error (compare's Table 1)
    with clock("test"):
        result["test"] = evaluate_exact_match(
            model,
            tokenizer,
            test_problems,
            **section("test"),
            prompt_options=prompt_options,
            return_completions=True,
            progress="test exact match",
        )
    if val_problems:
        with clock("validation"):
            result["validation"] = evaluate_exact_match(
                model,
                tokenizer,
                val_problems,
                **section("validation"),
                prompt_options=prompt_options,
                progress="validation",
            )
    general: dict[str, Any] = {}
    if retention_tasks:
        with clock("retention"):
            general["retention"] = retention(
                model, tokenizer, problems=held_out, **section("retention"), progress="retention"
            )
    if settings.kl:
        adapted = hasattr(model, "disable_adapter")
        with clock("kl"):
            general["kl"] = kl_drift(model, tokenizer, NEUTRAL_TEXTS, batch_size=batch_size) if adapted else 0.0
    if settings.lm_eval_tasks:
        hub_tasks, hub_limit = list(settings.lm_eval_tasks), settings.lm_eval_limit
        with clock("lm_eval"):
            general["lm_eval"] = on_main(lambda: lm_eval_bridge(model, tokenizer, hub_tasks, limit=hub_limit))
    if settings.general_tasks:
        from peft_cca.evaluation.general_suite import run_general_suite

        general_tasks = list(settings.general_tasks)
        limits = dict.fromkeys(general_tasks, settings.general_limit) if settings.general_limit else None
        with clock("general_suite"):
            suite = on_main(
                lambda: run_general_suite(model, tokenizer, general_tasks, limits=limits, batch_size=batch_size)
            )
        general["lm_eval"] = {**general.get("lm_eval", {}), **suite}
    if settings.forgetting_tokens:
        from peft_cca.evaluation.forgetting import cross_entropy

        forgetting_tokens = settings.forgetting_tokens
        with clock("cross_entropy"):
            reading = on_main(
                lambda: asdict(cross_entropy(model, tokenizer, max_tokens=forgetting_tokens, progress="cross-entropy"))
            )
        general["cross_entropy"] = reading
    result["seconds"] = seconds
    result["general"] = general
    return result
