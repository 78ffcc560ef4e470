"""The LoRA baseline's settings as one dataclass: what ``peft-cca lora`` parses and
:func:`~peft_cca.baselines.lora.lora_sft` takes, unchanged. Torch-free, so ``--help`` builds at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft_cca.defaults import DEFAULT_LORA_LRS
from peft_cca.documented import described
from peft_cca.evaluation.settings import Scoring
from peft_cca.sweep.settings import StepChoice


@dataclass(frozen=True)
class LoraSettings:
    """The paper's LoRA hyper-parameters, the lrs swept, and how each step is chosen (as CCA's, for a fair
    comparison)."""

    lrs: tuple[float, ...] = described("lr(s) to sweep", DEFAULT_LORA_LRS)
    rank: int = described("LoRA rank (the paper's: 16)", 16)
    alpha: int = described("LoRA alpha (the paper's: 32)", 32)
    dropout: float = described("LoRA dropout", 0.1)
    epochs: float = described("epochs over the training problems", 2.0)
    effective_batch: int = described("problems per optimizer step, over every process and accumulation", 32)
    per_device_batch: int | str = described(
        "rows per forward pass on each process, or auto: the largest that fits and divides the effective batch "
        "(the effective batch, and so the gradient, stays the same)",
        8,
    )
    # a fraction, not a count: a fixed 5 warmup steps swallowed whole runs on small training splits
    warmup_fraction: float = described("share of the steps spent warming the lr up (cosine schedule after)", 0.1)
    weight_decay: float = described("AdamW weight decay", 0.01)
    max_grad_norm: float = described("gradient clipping norm", 1.0)
    eval_every: int = described("validation every N steps", 10)
    max_length: int | None = described("cut training rows to N tokens (default: the longest row, nothing cut)", None)
    max_steps: int = described("cap the optimizer steps (default: the epochs decide)", -1)
    seed: int = described("seed of the LoRA initialisation and the Trainer", 0)
    scoring: Scoring = field(default_factory=Scoring)
    step_choice: StepChoice = field(default_factory=StepChoice)

    def hyperparameters(self) -> dict[str, object]:
        """What lora.json records as the run's settings: every field but the lrs, scoring and step choice."""
        skip = ("lrs", "scoring", "step_choice")
        return {name: value for name, value in self.__dict__.items() if name not in skip}
