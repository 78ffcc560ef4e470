"""What a demo will cost before it runs: the tokens each kind of stage processes, and its device-hours at assumed
throughputs, printed with the plan (``describe``)."""

from __future__ import annotations

from dataclasses import dataclass

from peft_cca.cli.demo_plan import DemoSettings, _csv, plan
from peft_cca.cli.demo_presets import SKIPPABLE
from peft_cca.tasks.protocol import protocol_for
from peft_cca.tasks.splits import split_counts

# Assumptions of the cost estimate, printed with it. Throughputs: a 2B model in bf16 on one H100 with batched
# Hugging Face generation (decode) and batched forward+backward (train); scale them for other models and devices.
DECODE_TOKENS_PER_S = 1500.0
TRAIN_TOKENS_PER_S = 20000.0  # forward+backward tokens; a forward alone is counted as a third of one
PROMPT_TOKENS = {"authors": 900, "fewshot": 900, "chat": 80, "auto": 80}  # 8-shot prompts are ~900 tokens
TYPICAL_TRACE = 300  # GSM8K-style chains of thought are 100-300 tokens; traces rarely fill a large budget
BRANCH_COMPLETIONS = 4  # fast branching completes a few divergent positions per pair


@dataclass(frozen=True)
class StageCost:
    """Tokens one kind of stage processes over every seed, and its time at the assumed throughputs."""

    stage: str
    decode_tokens: float
    train_tokens: float  # forward+backward tokens (a forward-only token counts 1/3)

    def hours(self) -> float:
        return (self.decode_tokens / DECODE_TOKENS_PER_S + self.train_tokens / TRAIN_TOKENS_PER_S) / 3600


def estimate_cost(settings: DemoSettings, trace: int | None = None) -> list[StageCost]:
    """Token counts per stage with traces of ``trace`` tokens (default: the budgets capped at TYPICAL_TRACE).

    Upper bound on the work, not a forecast: every localized problem is assumed to give a record, and every
    split at the paper's 26/4/20 proportions.
    """
    from peft_cca.sweep.callbacks import eval_schedule

    c = settings.counts()
    style = protocol_for(settings.target()).prompt_style
    prompt = PROMPT_TOKENS.get(style, PROMPT_TOKENS["fewshot"])
    loc_trace = min(c.max_new_tokens, trace or TYPICAL_TRACE)
    eval_trace = min(c.eval_tokens, trace or TYPICAL_TRACE)
    train, validation, test = split_counts(c.problems)
    localized = train + (validation if len(c.lambdas) > 1 else 0)
    val = validation if c.val_limit is None else min(validation, c.val_limit)
    test = test if c.test_limit is None else min(test, c.test_limit)
    record = prompt + loc_trace / 2  # a pivot sits inside the trace
    evals = len(eval_schedule(c.steps)) + 1  # the schedule and step 0
    arms = [a for a in ("cca", "cca-nomask") if a not in settings.skip]
    evaluated = 1 + len(arms) + ("lora" not in settings.skip)  # the base model and every arm
    per_seed = [
        StageCost("localize", localized * loc_trace * (1 + c.n_samples + BRANCH_COMPLETIONS), localized * prompt / 3),
        StageCost("circuit", 0.0, len(c.lambdas) * localized * (record / 3 + c.dcm_epochs)),
        StageCost(
            "amplify",
            len(arms) * len(c.lrs) * evals * val * eval_trace,
            len(arms) * len(c.lrs) * c.steps * train * record,
        ),
        StageCost(
            "lora",
            0.0 if "lora" in settings.skip else len(c.lora_lrs) * 4 * val * eval_trace,
            0.0 if "lora" in settings.skip else len(c.lora_lrs) * c.lora_epochs * train * (prompt + eval_trace),
        ),
        StageCost(
            "evaluate",
            evaluated * (test + len(settings.retention_tasks) * c.retention_size) * eval_trace,
            0.0,
        ),
    ]
    seeds = len(c.seeds)
    return [StageCost(s.stage, s.decode_tokens * seeds, s.train_tokens * seeds) for s in per_seed]


def describe(settings: DemoSettings) -> list[str]:
    """What the demo will run and what it will cost, printed before any work starts."""
    c = settings.counts()
    protocol = protocol_for(settings.target())
    train, validation, test = split_counts(c.problems)
    stages = plan(settings)
    lines = [
        f"plan: {len(stages)} stages, model {settings.model}, task {settings.target()} "
        f"(protocol {protocol.name}: prompt {protocol.prompt_style}, top-k {protocol.top_k}, "
        f"T {protocol.temperature_when_wrong}/{protocol.temperature_when_right})",
        f"  seeds {','.join(map(str, c.seeds))}, each a whole replicate; {c.problems} problems, about "
        f"{train}/{validation}/{test} train/validation/test (26/4/20 per group; under-0.8 filter on train only)",
        f"  localize: {c.n_samples} samples per problem, {c.max_new_tokens} new tokens, {settings.method}",
        f"  circuit: lambdas {_csv(c.lambdas)} (within {100 * c.max_fraction:g}% of components), {c.dcm_epochs} "
        f"epochs, Adam {c.dcm_lr:g}"
        + ("" if c.dcm_decay_every is None else f", StepLR({c.dcm_decay_every}, {c.dcm_decay_gamma:g})"),
        f"  amplify: lrs {_csv(c.lrs)}, {c.steps} steps; arms: "
        + ", ".join(a for a in ("cca", *SKIPPABLE) if a not in settings.skip),
        f"  lora: lrs {_csv(c.lora_lrs)}, {c.lora_epochs} epochs; evaluate: {c.eval_tokens} new tokens, "
        f"{'all' if c.test_limit is None else c.test_limit} test problems, retention {c.retention_size} x "
        f"{len(settings.retention_tasks)} tasks",
        f"cost estimate (assumed, for a 2B model on one H100: {DECODE_TOKENS_PER_S:g} decoded and "
        f"{TRAIN_TOKENS_PER_S:g} trained tokens/s, "
        f"{PROMPT_TOKENS.get(protocol.prompt_style, 900)}-token prompts, traces of at most {TYPICAL_TRACE} tokens):",
    ]
    typical, full = estimate_cost(settings), estimate_cost(settings, trace=max(c.max_new_tokens, c.eval_tokens))
    for cost, bound in zip(typical, full, strict=True):
        lines.append(
            f"  {cost.stage:<9} {cost.decode_tokens / 1e6:9.2f} M decoded, {cost.train_tokens / 1e6:9.2f} M trained "
            f"tokens: {cost.hours():7.2f} device-hours (traces at the full budget: {bound.hours():.1f})"
        )
    total, bound = sum(c.hours() for c in typical), sum(c.hours() for c in full)
    lines.append(f"  total {total:.1f} device-hours (at most {bound:.1f} if every trace filled its budget)")
    return lines
