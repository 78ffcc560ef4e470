"""Stage 1: traces, pivot tokens and the Error-Localization dataset (see ``run.localize``)."""

from peft_cca.localize.dataset import load_dataset
from peft_cca.localize.pivots import Pivot, branching_pivot_fast, branching_pivot_naive, prefix_pivot
from peft_cca.localize.run import LocalizeConfig, localize
from peft_cca.localize.traces import DecodeSettings, Trace, counterfactual, greedy_traces

__all__ = [
    "DecodeSettings",
    "LocalizeConfig",
    "Pivot",
    "Trace",
    "branching_pivot_fast",
    "branching_pivot_naive",
    "counterfactual",
    "greedy_traces",
    "load_dataset",
    "localize",
    "prefix_pivot",
]
