"""``CCATrainingArguments``: ``TrainingArguments`` with the paper's defaults and CCA's own fields.

The paper (and the authors' code) trains the circuit with plain SGD at a constant learning rate, no warmup, no
weight decay, no clipping, and one optimizer step per pass over the whole Error-Localization dataset. Those are
the defaults here, so a user who changes only ``learning_rate`` and ``max_steps`` runs the paper's stage 3.

``full_batch`` decides what the batch fields mean:

- on (the paper's rule): ``per_device_train_batch_size`` is the micro-batch (memory only), the trainer computes
  the gradient accumulation that makes one optimizer step cover every record on every process, and one epoch is
  one step. A ``gradient_accumulation_steps`` of your own would contradict that, so it is refused;
- off: ordinary mini-batch steps, exactly as ``Trainer`` takes them (your batch, your accumulation, shuffled).

Fields that cannot mean anything for a one-token logit-difference loss are refused in one line each
(:func:`refusals`), never silently changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from peft_cca.amplify.objective import OBJECTIVES_HELP, Objective
from peft_cca.defaults import DEFAULT_STEPS
from peft_cca.errors import UsageError
from peft_cca.sweep.callbacks import eval_schedule


@dataclass
class CCATrainingArguments(TrainingArguments):
    """``TrainingArguments`` for :class:`~peft_cca.CCATrainer`, with the paper's stage-3 defaults.

    Args (beyond ``TrainingArguments``'):
        full_batch: one optimizer step per pass over the whole training set (the paper's rule; the trainer
            computes the accumulation and ``per_device_train_batch_size`` is only the micro-batch). ``False``:
            ordinary mini-batch steps with your batch size and accumulation.
        validation_steps: the steps at which validation callbacks (:class:`~peft_cca.BestStepCallback`) score the
            model; ``None`` is the paper's schedule, 2, 4, 6, 8, 10, then every 10.
        max_forgetting: keep the best-validated step whose forgetting (cross-entropy rise on held-out text, nats
            per token) is at most this; ``None`` is the paper's rule (best validation, forgetting unseen).
        objective: ``"paper"`` (the default) or ``"margin:M"``: a record stops contributing once its desired
            token leads by ``M`` logits (:class:`~peft_cca.amplify.loss.Objective`).
    """

    learning_rate: float = field(default=1e-3, metadata={"help": "SGD learning rate (the paper sweeps 1e-2..1e-5)."})
    max_steps: int = field(default=DEFAULT_STEPS, metadata={"help": "Optimizer steps (full-batch: passes)."})
    optim: str = field(default="sgd", metadata={"help": "The optimizer; the paper's is plain SGD."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "The paper keeps the lr constant."})
    warmup_steps: float = field(default=0, metadata={"help": "No warmup, as in the paper."})
    weight_decay: float = field(default=0.0, metadata={"help": "No weight decay, as in the paper."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "0 turns clipping off, as in the paper."})
    logging_steps: float = field(default=1, metadata={"help": "Log the loss at every (full-batch) step."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "CCATrainer reads its own record columns; True is refused."}
    )
    full_batch: bool = field(
        default=True,
        metadata={"help": "One optimizer step per pass over the whole training set (the paper's rule)."},
    )
    validation_steps: list[int] | None = field(
        default=None, metadata={"help": "Steps at which validation callbacks score; None: 2,4,6,8,10, every 10."}
    )
    max_forgetting: float | None = field(
        default=None, metadata={"help": "Keep the best-validated step within this forgetting (nats/token)."}
    )
    objective: str = field(default="paper", metadata={"help": OBJECTIVES_HELP})

    def __post_init__(self) -> None:
        problem = next(iter(refusals(self)), None)
        if problem is not None:
            raise UsageError(problem)
        super().__post_init__()
        if self.validation_steps is not None:
            self.validation_steps = sorted({int(step) for step in self.validation_steps})

    def validation_schedule(self, max_steps: int) -> list[int]:
        """The steps validation runs at within ``max_steps``."""
        if self.validation_steps is None:
            return eval_schedule(max_steps)
        return [step for step in self.validation_steps if step <= max_steps]


def refusals(args: Any) -> Iterable[str]:
    """One line per ``TrainingArguments`` setting that CCA training cannot honour, naming the field and why."""
    full = getattr(args, "full_batch", True)
    if full and args.gradient_accumulation_steps != 1:
        yield (
            f"gradient_accumulation_steps={args.gradient_accumulation_steps}: with full_batch=True every optimizer "
            "step covers the whole train_dataset and the trainer computes the accumulation itself; leave it at 1, "
            "or set full_batch=False for mini-batch steps"
        )
    if full and args.dataloader_drop_last:
        yield "dataloader_drop_last=True would drop records from a full-batch step; leave it False"
    strategy = getattr(args, "train_sampling_strategy", "random")
    if full and strategy not in ("random", "sequential"):
        yield (
            f"train_sampling_strategy={strategy!r}: the order of records cannot change a full-batch step (CCATrainer "
            "reads them in order); leave it 'random', or set full_batch=False"
        )
    if full and getattr(args, "auto_find_batch_size", False):
        yield (
            "auto_find_batch_size=True: under full_batch the micro-batch changes memory only; give "
            "per_device_train_batch_size (peft_cca's amplify --micro-batch auto measures one)"
        )
    if getattr(args, "label_smoothing_factor", 0):
        yield (
            f"label_smoothing_factor={args.label_smoothing_factor}: the CCA loss is a logit difference, not a "
            "cross-entropy over labels; leave it 0"
        )
    if args.remove_unused_columns:
        yield (
            "remove_unused_columns=True would drop the record columns CCATrainer trains on (prompt/desired/undesired "
            "or prefix_ids/desired_token_id/undesired_token_id); leave it False"
        )
    objective = getattr(args, "objective", "paper")
    try:
        Objective.parse(objective)
    except UsageError as err:
        yield str(err)
    if getattr(args, "max_forgetting", None) is not None and not args.max_forgetting >= 0:
        yield f"max_forgetting={args.max_forgetting}: give a bound >= 0 in nats per token, or None"
