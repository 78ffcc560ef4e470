"""Defaults shared by the library and the command parsers, in a module that imports nothing heavy.

The parsers read their defaults from here so that building them (``peft-cca --help``) never imports torch;
the library modules (trainer, LoRA baseline, evaluation) import the same values, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

# stage 3 (amplify): the paper's learning-rate sweep, full-batch steps, and optimizer names -> TrainingArguments.optim
DEFAULT_LRS: tuple[float, ...] = (1e-2, 5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5)
DEFAULT_STEPS = 50
OPTIMIZERS = {"sgd": "sgd", "adamw": "adamw_torch"}

# the two "w/o mask" ablations (``amplify --no-mask sites|all``) and their row labels in the reports (the same
# strings as peft_cca.reports.tables.NOMASK_SITES / NOMASK_ALL; a test keeps them equal)
NO_MASK_LABELS = {"sites": "CCA w/o mask (circuit sites)", "all": "CCA w/o mask (all parameters)"}

# ``--micro-batch auto`` off CUDA: at most this many tokens (of the longest row) per micro-batch
CPU_TOKEN_BUDGET = 16384

# general-capability benchmarks run through lm-eval (they need the hub)
LM_EVAL_TASKS: tuple[str, ...] = ("mmlu_stem", "mmlu_humanities", "triviaqa", "truthfulqa_mc2")

# the LoRA baseline's learning-rate sweep
DEFAULT_LORA_LRS: tuple[float, ...] = (5e-5, 1e-4, 2e-4, 5e-4)


@dataclass(frozen=True)
class LoraSettings:
    """The paper's LoRA hyper-parameters (everything but the learning rate, which is swept)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.1
    epochs: float = 2.0
    effective_batch: int = 32
    per_device_batch: int | str = 8  # the micro-batch, or "auto"
    # a fraction, not a count: a fixed 5 warmup steps swallowed whole runs on small training splits
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 10
    max_length: int | None = None  # None: the longest example's tokens (nothing is cut)
    max_steps: int = -1  # > 0 caps the run (tests, quick looks)
