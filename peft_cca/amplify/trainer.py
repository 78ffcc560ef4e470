"""Stage 3: amplify the circuit with a ``transformers.Trainer``.

The loss is the paper's: ``-(logit[desired] - logit[undesired])`` at the last position of each
Error-Localization prefix, averaged over the whole dataset. Each optimizer step sees the whole dataset
(full-batch, as the authors do) through gradient accumulation, so the batch size only trades memory for
nothing else (``--micro-batch auto`` picks the largest that fits). Validation exact match runs at steps 2, 4,
6, 8, 10 and every 10 after; the best step's weights (kept on the CPU) are restored at the end and become the
adapter. Of a learning-rate sweep only the best run's state is kept as the sweep goes.

The "w/o mask" ablations: ``sites`` trains every circuit site (every q/k/v head row and MLP neuron,
``Circuit.full``) through the CCA adapter; ``all`` (the authors') trains every parameter of the base model
directly, embeddings, norms, o/gate/down and lm_head included, and is saved as a full model.

Trainer pieces replaced here and why:
- the sampler is sequential and the dataset is padded with zero-weight copies to a multiple of
  ``batch x processes x accumulation``, so one epoch is exactly one optimizer step on every process and
  accelerate never has to repeat real records to even out a shard (which would bias the mean);
- the loss is normalised by the dataset size, not by micro-batch counts, so it is the exact dataset mean
  whatever the number of micro-batches or processes (DDP averages gradients over processes).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from torch.utils.data import Dataset, SequentialSampler
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from peft_cca.defaults import CPU_TOKEN_BUDGET, DEFAULT_LRS, DEFAULT_STEPS, NO_MASK_LABELS, OPTIMIZERS
from peft_cca.errors import UsageError
from peft_cca.method.circuit import Circuit
from peft_cca.method.config import CCAConfig
from peft_cca.runtime.generation import left_pad
from peft_cca.runtime.placement import process_state, trainer_use_cpu
from peft_cca.runtime.runfolder import atomic_write_json
from peft_cca.tasks.prompts import DEFAULT_PROMPT_STYLE, PromptOptions

logger = logging.getLogger(__name__)

RECORD_FIELDS = ("prefix_ids", "desired_token_id", "undesired_token_id")

EvaluateFn = Callable[[nn.Module], float]
ForgettingFn = Callable[[nn.Module], Any]  # -> evaluation.forgetting.Forgetting (delta, stderr)


def eval_schedule(max_steps: int) -> list[int]:
    """The authors' validation steps: 2, 4, 6, 8, 10, then every 10 (up to ``max_steps``)."""
    return [s for s in (2, 4, 6, 8, 10) if s <= max_steps] + list(range(20, max_steps + 1, 10))


def as_row(record: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The training fields of a record: a JSON dict of records.jsonl or a ``peft_cca.dcm.data.Record``."""
    if isinstance(record, Mapping):
        return {name: record[name] for name in RECORD_FIELDS}
    return {
        "prefix_ids": list(record.prefix_ids),
        "desired_token_id": record.desired,
        "undesired_token_id": record.undesired,
    }


def split_of(record: Mapping[str, Any] | Any) -> str:
    return record.get("split", "train") if isinstance(record, Mapping) else getattr(record, "split", "train")


class PivotDataset(Dataset):
    """Error-Localization records, padded with zero-weight copies to a multiple of ``multiple``."""

    def __init__(self, records: Iterable[Mapping[str, Any]], multiple: int = 1) -> None:
        rows = [as_row(record) for record in records]
        if not rows:
            raise ValueError("no Error-Localization records to train on")
        self.num_records = len(rows)
        padded = math.ceil(len(rows) / multiple) * multiple
        self.rows = [{**row, "weight": 1.0} for row in rows]
        self.rows += [{**rows[i % len(rows)], "weight": 0.0} for i in range(padded - len(rows))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


@dataclass
class PivotCollator:
    """Left-pads prefixes so the pivot is the last position of every row; positions ignore the padding."""

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = left_pad([f["prefix_ids"] for f in features], self.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            # the same positions generate() gives a left-padded row: the pivot logits match the unpadded prefix
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "desired": torch.tensor([f["desired_token_id"] for f in features], dtype=torch.long),
            "undesired": torch.tensor([f["undesired_token_id"] for f in features], dtype=torch.long),
            "weight": torch.tensor([float(f.get("weight", 1.0)) for f in features], dtype=torch.float32),
        }


def check_schedule(lrs: Sequence[float], steps: int, what: str = "amplify") -> None:
    """Refuse a sweep that would train nothing or diverge at once: transformers reads ``max_steps <= 0`` as
    "use epochs" (1 or 3 steps), and a NaN lr gives NaN weights."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise UsageError(f"{what}: steps is {steps!r}; give a whole number of optimizer steps >= 1 (--steps)")
    if not lrs:
        raise UsageError(f"{what}: no learning rate to sweep; give at least one (--lr)")
    for lr in lrs:
        if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise UsageError(f"{what}: learning rate {lr!r} must be a finite number > 0 (--lr)")


def logit_difference(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-row ``logit[desired] - logit[undesired]`` at the last position."""
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=1,
    )
    last = outputs.logits[:, -1, :].float()
    return (last.gather(-1, batch["desired"][:, None]) - last.gather(-1, batch["undesired"][:, None])).squeeze(-1)


def fit_micro_batch(start: int, probe: Callable[[int], None]) -> int:
    """The largest size from ``start`` down, halving, at which ``probe(size)`` runs without running out of memory."""
    size = max(1, start)
    while True:
        try:
            probe(size)
            return size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            torch.cuda.empty_cache()
            size //= 2


def _probe_records(model: nn.Module, longest: Mapping[str, Any], pad_token_id: int) -> Callable[[int], None]:
    """A forward and backward pass of ``size`` copies of the longest record; gradients are dropped after."""

    def probe(size: int) -> None:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in PivotCollator(pad_token_id)([longest] * size).items()}
        try:
            logit_difference(model, batch).sum().backward()
        finally:
            model.zero_grad(set_to_none=True)

    return probe


def _cuda_peak(device: torch.device, probe: Callable[[int], None], size: int) -> int:
    """Bytes a probe of ``size`` rows adds at its peak to what is allocated before it."""
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    probe(size)
    return torch.cuda.max_memory_allocated(device) - before


def cpu_token_budget(model: nn.Module) -> int:
    """Tokens per micro-batch off CUDA: a quarter of the available host memory over a rough upper estimate of what
    one token keeps for the backward pass (6 hidden-size and 4 intermediate-size values per layer in the weights'
    dtype), capped at ``CPU_TOKEN_BUDGET``: CPU kernels gain little from bigger batches."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not hidden or not layers:
        return CPU_TOKEN_BUDGET
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    per_token = layers * (6 * hidden + 4 * inner) * next(model.parameters()).element_size()
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the cap alone
        return CPU_TOKEN_BUDGET
    return max(1, min(CPU_TOKEN_BUDGET, available // 4 // per_token))


def auto_micro_batch(
    model: nn.Module,
    lengths: Sequence[int],
    probe: Callable[[int], None],
    cap: int | None = None,
) -> int:
    """The micro-batch ``--micro-batch auto`` trains with: never more than ``cap`` (default: every row).

    On CUDA, a row's memory is measured with probes of 1 and 2 copies of the longest row, the size that should
    fit in 90% of ``torch.cuda.mem_get_info``'s free memory is tried, halving on out-of-memory. Elsewhere the
    token budget of :func:`cpu_token_budget` bounds it. Under several processes the smallest choice wins, so
    every process accumulates alike. The choice changes memory and speed only: the full-batch gradient is the
    same for every size.
    """
    cap = max(1, cap or len(lengths))
    longest = max(lengths)
    device = next(model.parameters()).device
    if device.type == "cuda":
        peaks = [_cuda_peak(device, probe, size) for size in (1, 2)] if cap > 1 else []
        free, _ = torch.cuda.mem_get_info(device)
        if peaks:
            # the gradients are a fixed cost (peak at 1 row minus that row): the rows share what is left, less
            # room for an optimizer state of two copies of the trainable weights (AdamW's; SGD keeps none)
            per_row = max(1, peaks[1] - peaks[0])
            fixed = max(0, peaks[0] - per_row) + 2 * sum(
                p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
            )
            cap = min(cap, max(1, int((0.9 * free - fixed) / per_row)))
        size = fit_micro_batch(cap, probe)
    else:
        size = min(cap, max(1, cpu_token_budget(model) // max(1, longest)))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        chosen = torch.tensor([size], device=device if device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(chosen, op=torch.distributed.ReduceOp.MIN)
        size = int(chosen.item())
    return size


def resolve_micro_batch(
    micro_batch: int | str, model: nn.Module, records: Sequence[Mapping[str, Any]], pad_token_id: int
) -> int:
    """``micro_batch`` as a number: ``"auto"`` measured on ``model`` at the longest record."""
    if micro_batch != "auto":
        if not isinstance(micro_batch, int) or isinstance(micro_batch, bool) or micro_batch < 1:
            raise UsageError(f"micro-batch {micro_batch!r} must be 'auto' or an integer >= 1 (--micro-batch)")
        return micro_batch
    rows = [as_row(r) for r in records]
    longest = max(rows, key=lambda r: len(r["prefix_ids"]))
    world = process_state().num_processes
    cap = math.ceil(len(rows) / world)  # a process never sees more rows than its share
    return auto_micro_batch(
        model, [len(r["prefix_ids"]) for r in rows], _probe_records(model, longest, pad_token_id), cap
    )


class CCATrainer(Trainer):
    """Full-batch logit-difference training of a CCA (or any PEFT) model on Error-Localization records.

    ``args.gradient_accumulation_steps`` is overwritten so that one optimizer step covers the whole dataset
    on all processes together; ``per_device_train_batch_size`` is the micro-batch size.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        records: Iterable[Mapping[str, Any]],
        pad_token_id: int,
        **kwargs: Any,
    ) -> None:
        records = list(records)
        per_round = args.per_device_train_batch_size * args.world_size
        args.gradient_accumulation_steps = max(1, math.ceil(len(records) / per_round))
        args.remove_unused_columns = False
        dataset = PivotDataset(records, multiple=per_round * args.gradient_accumulation_steps)
        super().__init__(
            model=model, args=args, train_dataset=dataset, data_collator=PivotCollator(pad_token_id), **kwargs
        )
        self.remove_callback(PrinterCallback)  # library code logs; the loss curve is in state.log_history

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> torch.utils.data.Sampler:
        # order is irrelevant to a full-batch gradient; sequential keeps every process's shard fixed
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict]:
        diff = logit_difference(model, inputs)
        # sum / N on each process, x processes because DDP averages: the gradient is the exact dataset mean
        scale = self.accelerator.num_processes / self.train_dataset.num_records
        loss = -(diff * inputs["weight"]).sum() * scale
        return (loss, {"logit_difference": diff}) if return_outputs else loss


def cca_training_arguments(
    output_dir: str | Path,
    lr: float,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 8,
    optimizer: str = "sgd",
    seed: int = 0,
    **overrides: Any,
) -> TrainingArguments:
    """The authors' setting: constant lr, no warmup, no weight decay, no clipping, ``steps`` full-batch steps."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": lr,
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "optim": OPTIMIZERS[optimizer],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,
        "dataloader_drop_last": False,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # without a GPU, say so: accelerate then runs several processes on the CPU with gloo instead of one
        "use_cpu": not torch.cuda.is_available(),
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (the CCA deltas, or every weight for ``--no-mask all``): the
    accelerator's memory stays for training."""
    return {name: _whole(p).to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _whole(param: torch.Tensor) -> torch.Tensor:
    """The full value of a parameter: under FSDP2 a parameter is a DTensor holding one shard per process, and a
    saved adapter must hold every row, so shards are gathered (a collective: every process calls this)."""
    from torch.distributed.tensor import DTensor

    return param.detach().full_tensor() if isinstance(param, DTensor) else param.detach()


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Write full values (from :func:`trainable_state`) back; a sharded parameter takes its own shard of them."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    for name, value in state.items():
        param = params[name]
        if isinstance(param, DTensor):
            value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        param.copy_(value)


@torch.no_grad()
def reset_deltas(model: nn.Module) -> None:
    """Zero every CCA delta: the model is the base model again, ready for another learning rate."""
    for name, param in model.named_parameters():
        if "cca_delta" in name:
            param.zero_()


class BestStepCallback(TrainerCallback):
    """Validation at the scheduled steps; keeps the best step's trainable weights and restores them at the end.

    Evaluates at the steps of ``schedule``, and with ``every`` also at each multiple of it and at the last
    step (the LoRA baseline's "every N steps"). Ties keep the earlier step. Step 0 (the untouched model) is
    evaluated for the curve when ``evaluate_at_start``, but the chosen step is always a trained one. With no
    scheduled step reached, the final weights are evaluated and kept (never a score of -inf).

    ``forgetting_fn`` (a :class:`~peft_cca.evaluation.forgetting.ForgettingMeter`) adds each step's forgetting
    to the history. ``max_forgetting`` then keeps the best-validated step whose forgetting is at most that many
    nats per token; the paper's rule (best validation, forgetting unseen) is still recorded as ``paper_step``.
    When no trained step stays under the bound, the one that forgot least is kept and ``bound_met`` is False.
    """

    def __init__(
        self,
        evaluate_fn: EvaluateFn,
        schedule: Iterable[int],
        evaluate_at_start: bool = True,
        save_dir: str | Path | None = None,
        every: int | None = None,
        forgetting_fn: ForgettingFn | None = None,
        max_forgetting: float | None = None,
    ) -> None:
        if max_forgetting is not None and forgetting_fn is None:
            raise ValueError("max_forgetting needs a forgetting_fn to measure each step with")
        self.evaluate_fn = evaluate_fn
        self.schedule = set(schedule)
        self.every = every
        self.evaluate_at_start = evaluate_at_start
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.forgetting_fn = forgetting_fn
        self.max_forgetting = max_forgetting
        self.history: list[dict[str, float]] = []
        self.best_step: int | None = None
        self.best_score = -math.inf
        self.paper_step: int | None = None
        self.paper_score = -math.inf
        self.bound_met: bool | None = None if max_forgetting is None else True
        self._best_state: dict[str, torch.Tensor] | None = None
        self._least_forgetting: tuple[float, int, float, dict[str, torch.Tensor]] | None = None

    def _evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        entry = {"step": step, "score": float(self.evaluate_fn(model))}
        if self.forgetting_fn is not None:
            reading = self.forgetting_fn(model)
            entry["forgetting"], entry["forgetting_stderr"] = reading.delta, reading.stderr
        model.train(was_training)
        self.history.append(entry)
        logger.info("step %d: validation %.4f%s", step, entry["score"], _forgetting_note(entry))
        return entry

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.evaluate_at_start:
            self._evaluate(model, 0)

    def _due(self, step: int, max_steps: int) -> bool:
        periodic = self.every is not None and (step % self.every == 0 or step == max_steps)
        return step in self.schedule or periodic

    def _within_bound(self, entry: Mapping[str, float]) -> bool:
        return self.max_forgetting is None or entry["forgetting"] <= self.max_forgetting

    def _consider(self, model: nn.Module, entry: Mapping[str, float]) -> None:
        step, score = int(entry["step"]), entry["score"]
        if score > self.paper_score:
            self.paper_score, self.paper_step = score, step
        if self._within_bound(entry):
            if score > self.best_score:
                self.best_score, self.best_step = score, step
                self._best_state = trainable_state(model)
        elif self._best_state is None and (
            self._least_forgetting is None or entry["forgetting"] < self._least_forgetting[0]
        ):  # the fallback, kept only while no step has met the bound
            self._least_forgetting = (entry["forgetting"], step, score, trainable_state(model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state.global_step, state.max_steps):
            self._consider(model, self._evaluate(model, state.global_step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._best_state is None and self._least_forgetting is None:  # no scheduled step reached (or NaN)
            entry = self._evaluate(model, state.global_step)
            self._consider(model, entry)
            if self._best_state is None and self._least_forgetting is None:  # a NaN score compares to nothing
                self.best_step, self.best_score = state.global_step, entry["score"]
                self._best_state = trainable_state(model)
        if self._best_state is None:  # every trained step forgot more than the bound
            forgot, self.best_step, self.best_score, self._best_state = self._least_forgetting
            self._least_forgetting, self.bound_met = None, False
            logger.warning(
                "no step stayed within --max-forgetting %g nats/token: keeping step %d, which forgot least (%.4f)",
                self.max_forgetting,
                self.best_step,
                forgot,
            )
        load_trainable_state(model, self._best_state)
        if self.save_dir is not None and state.is_world_process_zero:
            model.save_pretrained(self.save_dir)

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        return self._best_state


def _forgetting_note(entry: Mapping[str, float]) -> str:
    if "forgetting" not in entry:
        return ""
    return f", forgetting {entry['forgetting']:+.4f} ± {entry['forgetting_stderr']:.4f} nats/token"


@dataclass
class RunResult:
    """One learning rate of the sweep: the validation curve, the loss curve and the chosen step."""

    lr: float
    best_step: int
    best_score: float
    history: list[dict[str, float]]
    losses: list[dict[str, float]]
    base_score: float | None = None
    micro_batch: int | None = None
    paper_step: int | None = None  # the paper's rule within this run (best validation), when a bound chose
    paper_score: float | None = None
    bound_met: bool | None = None  # None: no --max-forgetting; False: no step stayed under it
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_training(
        cls, lr: float, trainer: Trainer, callback: BestStepCallback, evaluate_at_start: bool
    ) -> RunResult:
        """The run a finished ``Trainer`` and its :class:`BestStepCallback` describe (CCA or LoRA alike)."""
        losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
        return cls(
            lr=lr,
            best_step=int(callback.best_step),
            best_score=callback.best_score,
            history=callback.history,
            losses=losses,
            base_score=callback.history[0]["score"] if evaluate_at_start and callback.history else None,
            paper_step=callback.paper_step,
            paper_score=callback.paper_score,
            bound_met=callback.bound_met,
            state=callback.best_state,
        )

    def forgetting_at(self, step: int | None) -> float | None:
        """The forgetting measured at ``step`` (None when it was not measured)."""
        return next((e.get("forgetting") for e in self.history if e["step"] == step), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state")
        return data


@dataclass
class AmplifyResult:
    """The sweep; ``model`` holds the best run's best step; ``adapter_dir`` is where it was saved."""

    model: nn.Module
    best: RunResult
    runs: list[RunResult]
    adapter_dir: Path | None = None
    max_forgetting: float | None = None

    @property
    def selection(self) -> dict[str, Any] | None:
        """:func:`selection_summary` of the sweep (None when forgetting was not measured)."""
        return selection_summary(self.runs, self.max_forgetting)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "best": self.best.to_dict(),
            "runs": [run.to_dict() for run in self.runs],
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir else None,
        }
        if self.selection is not None:
            data["selection"] = self.selection
        return data


def train_one(
    model: nn.Module,
    records: Sequence[Mapping[str, Any]],
    evaluate_fn: EvaluateFn,
    lr: float,
    pad_token_id: int,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int | str = 8,
    optimizer: str = "sgd",
    seed: int = 0,
    output_dir: str | Path | None = None,
    schedule: Iterable[int] | None = None,
    evaluate_at_start: bool = True,
    forgetting_fn: ForgettingFn | None = None,
    max_forgetting: float | None = None,
) -> RunResult:
    """Train ``model``'s trainable weights from their current values at one ``lr``; leaves the best step loaded.

    ``batch_size`` is the micro-batch: a number or ``"auto"`` (:func:`auto_micro_batch`). ``forgetting_fn`` and
    ``max_forgetting``: as :class:`BestStepCallback`'s.
    """
    check_schedule([lr], steps)
    batch_size = resolve_micro_batch(batch_size, model, records, pad_token_id)
    callback = BestStepCallback(
        evaluate_fn,
        eval_schedule(steps) if schedule is None else schedule,
        evaluate_at_start=evaluate_at_start,
        forgetting_fn=forgetting_fn,
        max_forgetting=max_forgetting,
    )
    with tempfile.TemporaryDirectory() as scratch:
        # the Trainer runs where the runtime placed the model (a CPU placement on a GPU machine, MPS on a Mac)
        use_cpu = trainer_use_cpu(model)
        args = cca_training_arguments(output_dir or scratch, lr, steps, batch_size, optimizer, seed, use_cpu=use_cpu)
        trainer = CCATrainer(model, args, records, pad_token_id, callbacks=[callback])
        trainer.train()
    run = RunResult.from_training(lr, trainer, callback, evaluate_at_start)
    run.micro_batch = batch_size
    return run


def add_run(runs: list[RunResult], run: RunResult, base_score: float | None) -> float:
    """Append one lr's run; the untouched model scores the same for every lr, so it is evaluated once.

    Only the best run so far keeps its state (ties keep the earlier, larger-listed lr): at paper scale, or with
    ``--no-mask all``, a state per lr would not fit in host memory.
    """
    base_score = run.base_score if base_score is None else base_score
    run.base_score = base_score
    if run.history and run.history[0]["step"] != 0:
        run.history.insert(0, {"step": 0, "score": base_score})
    best = best_run(runs) if runs else None
    if best is not None and _rank(run) > _rank(best):
        best.state = None
    elif best is not None:
        run.state = None
    runs.append(run)
    return base_score


def best_run(runs: Sequence[RunResult]) -> RunResult:
    """The run with the best validation score; ``max`` keeps the first of equals, the larger lr listed first.

    Under ``--max-forgetting`` a run with a step within the bound beats every run without one.
    """
    return max(runs, key=_rank)


def _rank(run: RunResult) -> tuple[bool, float]:
    """How runs of a sweep compare: within the forgetting bound first, then validation (best_run, add_run)."""
    return (run.bound_met is not False, run.best_score)


def selection_summary(runs: Sequence[RunResult], max_forgetting: float | None) -> dict[str, Any] | None:
    """What the forgetting-bounded rule and the paper's rule each pick over the sweep, and the cost in validation.

    None when forgetting was not measured. ``cost`` is the paper pick's validation score minus the chosen one's
    (what the bound gave up on the target); ``saved`` the forgetting it avoided (nats per token).
    """
    if not runs or not any("forgetting" in e for r in runs for e in r.history):
        return None
    chosen = best_run(runs)
    paper = max(runs, key=lambda r: r.paper_score if r.paper_score is not None else r.best_score)
    paper_step = paper.paper_step if paper.paper_step is not None else paper.best_step
    paper_score = paper.paper_score if paper.paper_score is not None else paper.best_score
    picks = {
        "chosen": {"lr": chosen.lr, "step": chosen.best_step, "score": chosen.best_score},
        "paper": {"lr": paper.lr, "step": paper_step, "score": paper_score},
    }
    picks["chosen"]["forgetting"] = chosen.forgetting_at(chosen.best_step)
    picks["paper"]["forgetting"] = paper.forgetting_at(paper_step)
    saved = None
    if picks["paper"]["forgetting"] is not None and picks["chosen"]["forgetting"] is not None:
        saved = picks["paper"]["forgetting"] - picks["chosen"]["forgetting"]
    return {
        "rule": "max-forgetting" if max_forgetting is not None else "paper",
        "max_forgetting": max_forgetting,
        "bound_met": chosen.bound_met,
        **picks,
        "cost": paper_score - chosen.best_score,
        "saved": saved,
    }


def save_result(
    result: AmplifyResult,
    output_dir: str | Path | None,
    summary_name: str,
    *,
    folder: str = "adapter",
    tokenizer=None,
    **extra: Any,
) -> None:
    """``<output_dir>/<folder>/`` (the adapter, or a full model with its tokenizer) and the sweep summary as
    strict JSON, written by the main process only."""
    if output_dir is None or not process_state().is_main_process:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.adapter_dir = out / folder
    result.model.save_pretrained(result.adapter_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(result.adapter_dir)
    atomic_write_json(out / summary_name, {**result.to_dict(), **extra})


def forgetting_meter(
    model: nn.Module, tokenizer, forgetting_tokens: int | None, max_forgetting: float | None
) -> ForgettingFn | None:
    """A :class:`~peft_cca.evaluation.forgetting.ForgettingMeter` on ``model`` as it is now (the base), or None.

    Measured when ``forgetting_tokens`` is given, or on the default 5,000 tokens when only ``max_forgetting`` is.
    """
    if not forgetting_tokens and max_forgetting is None:
        return None
    from peft_cca.evaluation.forgetting import DEFAULT_MAX_TOKENS, ForgettingMeter

    tokens = forgetting_tokens or DEFAULT_MAX_TOKENS
    logger.info("forgetting: measuring the base on %d tokens of held-out Wikipedia", tokens)
    return ForgettingMeter.of_base(model, tokenizer, max_tokens=tokens)


def meter_tokens(meter: ForgettingFn | None) -> int | None:
    """How many tokens each forgetting reading scores (None without a meter), for the run's summary."""
    return None if meter is None else meter.base.n_tokens


def wrap(model: nn.Module, circuit: Circuit | None, mlp_targets: Sequence[str] = ("up",)) -> PeftModel:
    """``model`` as a CCA PeftModel (unchanged when it already is a PeftModel)."""
    if isinstance(model, PeftModel):
        return model
    if circuit is None:
        raise ValueError("amplify needs a circuit to wrap a base model (or pass a PeftModel)")
    return get_peft_model(model, CCAConfig(circuit=circuit, mlp_targets=list(mlp_targets)))


def train_every_parameter(model: nn.Module) -> nn.Module:
    """The authors' "w/o mask": every parameter of the base model is trainable (the model is trained in place)."""
    if isinstance(model, PeftModel):
        raise ValueError("--no-mask all trains the base model itself: pass the model, not a PeftModel")
    for param in model.parameters():
        param.requires_grad_(True)
    dtype = next(model.parameters()).dtype
    if dtype in (torch.bfloat16, torch.float16):
        # unlike CCA's fp32 deltas, these weights take each step in their own dtype: a step below half their
        # rounding interval (about 0.4% of a weight in bf16) changes nothing
        logger.warning(
            "--no-mask all trains every parameter in %s: steps smaller than the weights' rounding are lost; "
            "--dtype float32 keeps them (twice the memory for weights and gradients)",
            str(dtype).removeprefix("torch."),
        )
    return model


def amplify(
    model: nn.Module,
    tokenizer,
    records: Iterable[Mapping[str, Any]],
    circuit: Circuit | None,
    val_problems: Sequence | None = None,
    *,
    lrs: Sequence[float] = DEFAULT_LRS,
    steps: int = DEFAULT_STEPS,
    optimizer: str = "sgd",
    batch_size: int | str = 8,
    mlp_targets: Sequence[str] = ("up",),
    prompt_style: str = DEFAULT_PROMPT_STYLE,
    max_new_tokens: int = 256,
    eval_batch_size: int = 16,
    evaluate_fn: EvaluateFn | None = None,
    output_dir: str | Path | None = None,
    seed: int = 0,
    no_mask: str | None = None,
    prompt_options: PromptOptions | None = None,
    forgetting_tokens: int | None = None,
    max_forgetting: float | None = None,
) -> AmplifyResult:
    """Learning-rate sweep of CCA; the best run (by validation macro exact match) is loaded and saved.

    ``evaluate_fn(model) -> float`` replaces the validation exact match on ``val_problems`` when given.
    ``no_mask``: None (train ``circuit``), ``"sites"`` (every circuit site) or ``"all"`` (every parameter of
    the base model, saved as a full model in ``<output_dir>/model``). Writes ``<output_dir>/adapter/`` and
    ``<output_dir>/amplify.json`` when ``output_dir`` is set. ``batch_size`` is the micro-batch or ``"auto"``.
    ``prompt_options``: stage 1's template and exemplars, so validation prompts as the pivots were found.
    ``forgetting_tokens``: measure forgetting (cross-entropy rise on that many tokens of held-out Wikipedia) at
    every validation step; ``max_forgetting`` (nats per token; measured on 5,000 tokens unless given) keeps the
    best-validated step within it instead of the paper's best-validated step.
    """
    check_schedule(lrs, steps)
    if no_mask not in (None, *NO_MASK_LABELS):
        raise UsageError(f"no_mask is {no_mask!r}; choose one of {', '.join(NO_MASK_LABELS)} (--no-mask)")
    records = [r for r in records if split_of(r) == "train"]
    if not records:
        raise UsageError("amplify: no training records (split 'train') in the run; run localize first")
    if no_mask == "all":
        trained = train_every_parameter(model)
        initial = trainable_state(trained)  # every lr starts from the base model again
    else:
        trained = wrap(model, Circuit.full(model) if no_mask == "sites" else circuit, mlp_targets)
    if evaluate_fn is None:
        from peft_cca.evaluation.exact_match import validation_scorer

        # validation covers every template, as in the paper (run_problems filters only training)
        evaluate_fn = validation_scorer(
            tokenizer,
            val_problems or [],
            prompt_style=prompt_style,
            batch_size=eval_batch_size,
            max_new_tokens=max_new_tokens,
            what="amplify",
            prompt_options=prompt_options,
        )

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro_batch = resolve_micro_batch(batch_size, trained, records, pad_id)
    if no_mask != "all":
        reset_deltas(trained)  # the reference is the base model, also when a trained PeftModel was passed
    meter = forgetting_meter(trained, tokenizer, forgetting_tokens, max_forgetting)
    runs: list[RunResult] = []
    base_score: float | None = None
    for lr in lrs:
        if no_mask == "all":
            load_trainable_state(trained, initial)
        else:
            reset_deltas(trained)
        run = train_one(
            trained,
            records,
            evaluate_fn,
            lr,
            pad_id,
            steps=steps,
            batch_size=micro_batch,
            optimizer=optimizer,
            seed=seed,
            evaluate_at_start=base_score is None,
            forgetting_fn=meter,
            max_forgetting=max_forgetting,
        )
        base_score = add_run(runs, run, base_score)
        logger.info("lr %g: best validation %.4f at step %d", lr, run.best_score, run.best_step)
    best = best_run(runs)
    load_trainable_state(trained, best.state)
    result = AmplifyResult(model=trained, best=best, runs=runs, max_forgetting=max_forgetting)
    extra: dict[str, Any] = {"micro_batch": micro_batch, "no_mask": no_mask, "forgetting_tokens": meter_tokens(meter)}
    if no_mask is not None:
        extra["label"] = NO_MASK_LABELS[no_mask]
    if no_mask == "all":
        save_result(result, output_dir, "amplify.json", folder="model", tokenizer=tokenizer, **extra)
    else:
        save_result(result, output_dir, "amplify.json", **extra)
    return result
