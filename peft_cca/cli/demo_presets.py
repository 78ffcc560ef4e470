"""The demo's presets: the counts that set the size of each experiment, one field each. A field's metadata gives its
``peft-cca demo`` flag (help and argparse type), so adding a count is adding a field here and using it in the plan
(:mod:`~peft_cca.cli.demo_plan`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peft_cca.cli.commands.options import (
    comma_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from peft_cca.tasks.protocol import PAPER


def count(help: str, parse: Callable[[str], Any], **default: Any) -> Any:
    """A count of :class:`Preset`: its ``peft-cca demo`` flag's help and argparse type (``--<name>``)."""
    return field(metadata={"help": help, "type": parse}, **default)


FLOATS, RATES, SEEDS = comma_list(non_negative_float), comma_list(positive_float), comma_list(non_negative_int)


@dataclass(frozen=True)
class Preset:
    """Counts that set the size of the experiment; every one is a ``peft-cca demo`` flag that overrides it."""

    problems: int = count("problems drawn from the task (split 26/4/20 of every 50 per group)", positive_int)
    n_samples: int = count("sampled counterfactual traces per problem", positive_int)
    max_new_tokens: int = count("generation budget per trace of stage 1", positive_int)
    lambdas: tuple[float, ...] = count("DCM sparsity weights, comma-separated", FLOATS)
    max_fraction: float = count(
        "component budget of the lambda sweep, e.g. 0.02 (the paper's circuits are under 2%%)", probability
    )
    dcm_epochs: int = count("DCM epochs", positive_int)
    # Adam moves a mask at most lr per step: it needs >= 0.5 / lr steps to select anything
    dcm_lr: float = count("DCM Adam learning rate", positive_float)
    lrs: tuple[float, ...] = count("CCA learning rates, comma-separated", RATES)
    steps: int = count("CCA full-batch steps", positive_int)
    seeds: tuple[int, ...] = count("seeds, each a whole replicate, e.g. 0,1,2", SEEDS)
    val_limit: int = count("validation problems used to pick the best step", positive_int)
    test_limit: int | None = count("test problems evaluated", positive_int)
    retention_size: int = count("problems per retention task", positive_int)
    lora_lrs: tuple[float, ...] = count("LoRA learning rates, comma-separated", RATES)
    lora_epochs: int = count("LoRA epochs over the training problems", positive_int)
    eval_max_new_tokens: int | None = count(
        "generation budget of evaluation and validation (default: --max-new-tokens)", positive_int, default=None
    )
    dcm_decay_every: int | None = count("DCM StepLR step, in epochs (default: constant lr)", positive_int, default=None)
    dcm_decay_gamma: float = count("DCM StepLR factor", probability, default=0.5)

    @property
    def eval_tokens(self) -> int:
        return self.max_new_tokens if self.eval_max_new_tokens is None else self.eval_max_new_tokens


PRESETS: dict[str, Preset] = {
    # every stage for real at small counts, one lr: under 12 minutes on 2 idle CPU cores (benchmarks/demo_stages.py)
    "quick": Preset(
        problems=80,
        n_samples=3,
        max_new_tokens=32,
        lambdas=(1e-2,),
        max_fraction=0.02,
        dcm_epochs=10,
        dcm_lr=0.05,
        lrs=(1e-2,),
        steps=10,
        seeds=(0,),
        val_limit=16,
        test_limit=48,
        retention_size=8,
        lora_lrs=(2e-4,),
        lora_epochs=5,  # ~40 training problems at an effective batch of 32: 2 steps an epoch
    ),
    # the paper's protocol: lambda and lr sweeps, 50 steps, 3 seeds
    "full": Preset(
        problems=400,
        n_samples=10,
        max_new_tokens=64,
        lambdas=(1e-3, 3e-3, 1e-2, 3e-2),
        max_fraction=0.02,
        dcm_epochs=50,
        dcm_lr=5e-3,
        lrs=(1e-2, 5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5),
        steps=50,
        seeds=(0, 1, 2),
        val_limit=32,
        test_limit=None,
        retention_size=30,
        lora_lrs=(1e-4, 2e-4, 5e-4),
        lora_epochs=2,
    ),
    # the paper on GSM-Symbolic, for a GPU: 100 templates x 50 instances, the authors' budgets and DCM schedule
    # (tasks/protocol.py: PAPER), their lambda 1e-2 and lr 1e-4 inside the sweeps, every validation and test problem
    "paper": Preset(
        problems=5000,
        n_samples=10,
        max_new_tokens=PAPER.localize_max_new_tokens,
        eval_max_new_tokens=PAPER.eval_max_new_tokens,
        lambdas=(3e-3, 1e-2, 3e-2),
        max_fraction=0.02,
        dcm_epochs=50,
        dcm_lr=5e-3,
        dcm_decay_every=PAPER.dcm_decay_every,
        dcm_decay_gamma=PAPER.dcm_decay_gamma,
        lrs=(1e-2, 1e-3, 1e-4, 1e-5),
        steps=50,
        seeds=(0, 1, 2),
        val_limit=400,
        test_limit=None,
        retention_size=50,
        lora_lrs=(1e-4, 2e-4, 5e-4),
        lora_epochs=2,
    ),
}


# comparison arms a run may leave out, e.g. on a model where the full-model ablation costs hours on a CPU
SKIPPABLE = ("cca-nomask", "lora")


# offline general suite per preset: (tasks, all when empty; documents per task, per subject for MMLU, all when
# None; tokens of the forgetting corpus): minutes per evaluation on a CPU for quick, the whole suite for paper
GENERAL_SIZES: dict[str, tuple[tuple[str, ...], int | None, int]] = {
    # four standard benchmarks a 135M model is well above chance on (so it can lose points), 10 documents each
    "quick": (("cca_hellaswag_val", "cca_arc_easy_val", "cca_piqa_val", "cca_lambada_openai_test"), 10, 1000),
    "full": ((), 20, 5000),
    "paper": ((), None, 50000),
}
