"""Protocols: the settings an experiment on a task family follows, in one place.

The paper's protocol on GSM-Symbolic (``PAPER``) is the authors' code: their 8-shot prompt without chat
template, 2,500 new tokens to localize and 1,500 to evaluate, samples at T=0.8 when greedy is wrong and 1.2
when right with top-k 50 and top-p 1.0, DCM with StepLR(5 epochs, 0.9), a 26/4/20 split per template with
the under-0.8 filter on training only. The offline reasoning-gym target (``DEFAULT``) keeps the settings
calibrated for a 135M model on a CPU (README, "The default target task").

Commands take a setting from :func:`protocol_for` of their task when the user did not set its flag, so
``peft-cca localize --task gsm-symbolic:main`` follows the paper without further flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from peft_cca.tasks import DEFAULT_TASK
from peft_cca.tasks.splits import DEFAULT_ACCURACY_THRESHOLD

# Spec kinds that are GSM-Symbolic (hub, a local JSONL, or the annotated offline templates).
GSM_SYMBOLIC_KINDS = ("gsm-symbolic", "gsm-symbolic-file", "gsm-symbolic-templates")


@dataclass(frozen=True)
class Protocol:
    """Defaults of every stage for one task family; each has a flag on its command."""

    name: str
    task: str  # the default task spec of a demo that follows this protocol
    prompt_style: str
    localize_max_new_tokens: int
    eval_max_new_tokens: int  # test evaluation and stage-3/LoRA validation
    temperature_when_wrong: float  # sampling a counterfactual when the greedy trace is wrong
    temperature_when_right: float
    top_k: int | None  # None: no top-k cut
    top_p: float
    dcm_decay_every: int | None  # StepLR step size in epochs; None: constant lr
    dcm_decay_gamma: float
    split: tuple[int, int, int]  # train / validation / test parts of each group
    max_group_accuracy: float  # groups at or above it are not trained on (validation and test keep them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PAPER = Protocol(
    name="paper",
    # offline annotated templates, so that the one GPU command needs no hub; gsm-symbolic:main is the hub copy
    task="gsm-symbolic-templates:en",
    prompt_style="authors",
    localize_max_new_tokens=2500,
    eval_max_new_tokens=1500,
    temperature_when_wrong=0.8,
    temperature_when_right=1.2,
    top_k=50,
    top_p=1.0,
    dcm_decay_every=5,
    dcm_decay_gamma=0.9,
    split=(26, 4, 20),
    max_group_accuracy=DEFAULT_ACCURACY_THRESHOLD,
)

DEFAULT = Protocol(
    name="default",
    task=DEFAULT_TASK,
    prompt_style="auto",
    localize_max_new_tokens=96,
    eval_max_new_tokens=256,
    temperature_when_wrong=0.8,
    temperature_when_right=1.2,
    top_k=50,  # the authors' sampler everywhere (transformers' default, which their code used)
    top_p=1.0,
    dcm_decay_every=None,
    dcm_decay_gamma=0.5,
    split=(26, 4, 20),
    max_group_accuracy=DEFAULT_ACCURACY_THRESHOLD,
)

PROTOCOLS = {p.name: p for p in (PAPER, DEFAULT)}


def spec_kinds(task: str) -> list[str]:
    """The kind of every part of a (possibly ``;``-joined) task spec, without parsing its options."""
    return [part.strip().partition(":")[0] for part in task.split(";") if part.strip()]


def protocol_for(task: str | None) -> Protocol:
    """``PAPER`` when every part of ``task`` is GSM-Symbolic, else ``DEFAULT`` (None: the default task)."""
    kinds = spec_kinds(task or DEFAULT_TASK)
    return PAPER if kinds and all(kind in GSM_SYMBOLIC_KINDS for kind in kinds) else DEFAULT


def setting(value: Any, task: str | None, name: str) -> Any:
    """``value`` when the user gave it (not None), else the protocol's ``name`` for ``task``."""
    return getattr(protocol_for(task), name) if value is None else value
