"""Stage 3's settings as one dataclass: what ``peft-cca amplify`` parses and :func:`~peft_cca.amplify.trainer.amplify`
takes, unchanged. Its defaults and help are the flags' (one source); torch-free, so ``--help`` builds at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft_cca.defaults import DEFAULT_LRS, DEFAULT_STEPS, NO_MASK_LABELS, OPTIMIZERS
from peft_cca.documented import described
from peft_cca.errors import UsageError
from peft_cca.evaluation.settings import Scoring
from peft_cca.sweep.settings import StepChoice


@dataclass(frozen=True)
class AmplifySettings:
    """CCA's lr sweep: the learning rates and steps, what trains, the loss, and how each step is chosen."""

    lrs: tuple[float, ...] = described("lr(s) to sweep", DEFAULT_LRS)
    steps: int = described("full-batch optimizer steps per lr", DEFAULT_STEPS)
    optimizer: str = described(f"the optimizer: {', '.join(sorted(OPTIMIZERS))} (the paper's: sgd)", "sgd")
    micro_batch: int | str = described(
        "rows per forward pass, or auto: the largest that fits (steps are always full-batch: the gradient is the "
        "same for every size)",
        8,
    )
    mlp_targets: tuple[str, ...] = described("which MLP projections a circuit neuron trains (up, gate, down)", ("up",))
    no_mask: str | None = described(
        'the "CCA w/o mask" ablations: sites (the default) trains every q/k/v head row and MLP neuron a circuit can '
        "hold; all (the authors') trains every parameter of the model and saves it in <out>/model",
        None,
    )
    objective: str = described(
        "the loss: paper, -(logit_d - logit_u) (the default); margin:M, max(0, M - (logit_d - logit_u)): a record "
        "stops pushing once its desired token leads by M logits (beyond the paper)",
        "paper",
    )
    seed: int = described("seed of the Trainer (data order, dropout)", 0)
    scoring: Scoring = field(default_factory=Scoring)
    step_choice: StepChoice = field(default_factory=StepChoice)

    def __post_init__(self) -> None:
        if self.no_mask not in (None, *NO_MASK_LABELS):
            raise UsageError(f"no_mask is {self.no_mask!r}; choose one of {', '.join(NO_MASK_LABELS)} (--no-mask)")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer {self.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
