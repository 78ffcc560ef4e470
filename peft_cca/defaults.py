"""Defaults shared by the library and the command parsers, in a module that imports nothing heavy.

The parsers read their defaults from here so that building them (``peft-cca --help``) never imports torch;
the library modules (trainer, LoRA baseline, evaluation) import the same values, so the two cannot drift.
"""

from __future__ import annotations

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


# `peft-cca calibrate`: the base-accuracy band of a retention task that can show forgetting, and the candidates
RETENTION_BAND = (0.3, 0.7)
# forgetting bounds (nats per token of held-out Wikipedia) the report replays over curves that measured it
FORGETTING_BOUNDS = (0.005, 0.01, 0.02, 0.05)
# the retention suite per offline model, as `peft-cca calibrate` chose it (results/retention-calibration/: the base
# scores 30-70% on each, n=32, greedy, 128 tokens); other models get tasks.DEFAULT_RETENTION_TASKS
CALIBRATED_RETENTION_TASKS: dict[str, tuple[str, ...]] = {
    "smollm2-135m-instruct": ("products?max_digits=1", "products?max_digits=2", "gcd?max_value=20", "lcm?max_value=10"),
    "gemma3-270m": ("number_sequence", "gcd?max_value=20", "lcm?max_value=10"),
}
# reasoning-gym generators with a checkable answer that a small model can partly do (counting, ordering,
# spelling, unit facts, small arithmetic), each at settings a 100M-1B model is not hopeless on
RETENTION_CANDIDATES: tuple[str, ...] = (
    "aiw",
    "number_sequence",
    "products",
    "products?max_digits=1",
    "products?max_digits=2",
    "gcd?max_value=20",
    "lcm?max_value=10",
    "count_bits?max_n=16",
    "base_conversion?max_value=20",
    "leg_counting?min_animals=1&max_animals=1",
    "letter_counting?min_words=3&max_words=5",
    "spell_backward?min_word_len=3&max_word_len=5",
    "word_sequence_reversal?min_words=3&max_words=4",
    "number_sorting?min_numbers=3&max_numbers=4&min_decimals=0&max_decimals=0",
    "basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=2",
    "calendar_arithmetic",
    "family_relationships?min_family_size=4&max_family_size=4",
    "syllogism",
)
