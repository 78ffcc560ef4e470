"""``CCATrainer``: stage 3 as a ``transformers.Trainer`` in TRL's shape.

Used as ``SFTTrainer`` and ``DPOTrainer`` are::

    trainer = CCATrainer(model, args=CCATrainingArguments("out", learning_rate=1e-2, max_steps=10),
                         train_dataset=rows, eval_dataset=val_rows, processing_class=tokenizer,
                         peft_config=CCAConfig(circuit="runs/x/circuit/circuit.json"))
    trainer.train()

The loss is the paper's, ``-(logit[desired] - logit[undesired])`` at the last position of each prefix, or with
``objective="margin:M"`` the hinge ``max(0, M - diff)`` (:mod:`~peft_cca.amplify.loss`). What this
class changes in ``Trainer`` and why:

- rows are text or token ids (:mod:`~peft_cca.amplify.records`), batched by its own collator, which left-pads so the
  pivot is every row's last position; a ``data_collator`` of your own would move it, so it is refused;
- under ``full_batch`` (the paper's rule) the sampler is sequential and the dataset is padded with zero-weight copies
  (fewer than one micro-batch per process) so that one pass is one optimizer step on every process, and the loss
  is normalised by the dataset size, not by micro-batch counts: the gradient is the exact dataset mean whatever the
  micro-batch, the accumulation or the number of processes (DDP averages over processes);
- ``evaluate()`` reports ``eval_loss``, ``eval_logit_difference`` (the mean) and ``eval_desired_wins`` (the share of
  rows whose desired token beats the undesired one).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.data import SequentialSampler
from transformers import EvalPrediction, PrinterCallback, Trainer, TrainingArguments

from peft_cca.amplify.arguments import CCATrainingArguments
from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.objective import Objective
from peft_cca.amplify.records import RECORD_FIELDS, TEXT_FIELDS, PivotCollator, PivotDataset, training_rows
from peft_cca.errors import UsageError
from peft_cca.method.config import CCAConfig

logger = logging.getLogger(__name__)

REFUSED_KWARGS = {
    "data_collator": "CCATrainer batches rows itself (left-padded, the pivot at the last position); leave it out",
    "tokenizer": "pass the tokenizer as processing_class=, as Trainer and TRL's trainers take it",
}


def pivot_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """The mean logit difference and the share of rows where the desired token wins (ties lose)."""
    diff = np.asarray(prediction.predictions, dtype=np.float64).reshape(-1)
    return {"logit_difference": float(diff.mean()), "desired_wins": float((diff > 0).mean())}


def _model_name(model: Any) -> str:
    name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
    return str(name).rstrip("/").split("/")[-1]


def cca_arguments(args: TrainingArguments | None, model: Any) -> CCATrainingArguments:
    """``args`` as :class:`CCATrainingArguments`: a plain ``TrainingArguments`` keeps every value it holds (TRL's
    trainers convert theirs the same way); column removal does not apply to CCA's rows and is left out."""
    if args is None:
        return CCATrainingArguments(output_dir=f"{_model_name(model)}-CCA")
    if isinstance(args, CCATrainingArguments):
        return args
    if not isinstance(args, TrainingArguments):
        raise UsageError(f"args is a {type(args).__name__}; pass CCATrainingArguments(output_dir=..., ...)")
    values = args.to_dict()
    values["hub_token"] = args.hub_token  # to_dict hides it
    values.pop("remove_unused_columns", None)
    logger.info("args is a TrainingArguments: using it as CCATrainingArguments with the same values")
    return CCATrainingArguments(**values)


def _pad_token_id(pad_token_id: int | None, tokenizer, model: nn.Module) -> int:
    """The explicit id, else the tokenizer's pad (or eos) token, else the model config's; a one-line error if none."""
    candidates = [pad_token_id]
    if tokenizer is not None:
        candidates += [getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    config = getattr(model, "config", None)
    candidates += [getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)]
    for value in candidates:
        if isinstance(value, list | tuple) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise UsageError(
        "CCATrainer needs a padding token id: pass processing_class=tokenizer (its pad or eos token is used) or "
        "pad_token_id=<int>"
    )


def _is_split_mapping(dataset: Any) -> bool:
    return isinstance(dataset, Mapping) and not any(name in dataset for name in (*RECORD_FIELDS, *TEXT_FIELDS))


class CCATrainer(Trainer):
    """Train a circuit (or any PEFT adapter) on Error-Localization rows with the paper's logit-difference loss.

    Args:
        model: a base model (with ``peft_config``), a ``PeftModel``, or a model name for
            :func:`peft_cca.load_model` (an offline name, a hub id or a folder).
        args: :class:`CCATrainingArguments` (the paper's defaults); ``None`` uses them with ``<model>-CCA`` as
            ``output_dir``; a plain ``TrainingArguments`` is taken with its values.
        train_dataset: rows of text ``{prompt, desired, undesired}`` or of token ids ``{prefix_ids,
            desired_token_id, undesired_token_id}``: a list, a ``datasets.Dataset`` or
            ``peft_cca.load_error_localization(folder)["train"]``.
        eval_dataset: rows as ``train_dataset`` (or a dict of them) for ``evaluate()``.
        processing_class: the tokenizer; tokenizes text rows and gives the padding id.
        peft_config: wrap ``model`` with this adapter first (``CCAConfig(circuit=...)``; any ``PeftConfig`` works).
        callbacks: as ``Trainer``'s; :class:`~peft_cca.BestStepCallback` adds validation and the best step.
        pad_token_id: the padding id when there is no ``processing_class``.
    """

    def __init__(
        self,
        model: nn.Module | str,
        args: TrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: PeftConfig | None = None,
        callbacks: list | None = None,
        *,
        pad_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        for name, why in REFUSED_KWARGS.items():
            if name in kwargs:
                raise UsageError(f"{name}=: {why}")
        if isinstance(model, str):
            from peft_cca.runtime.loading import load_model

            model, tokenizer = load_model(model)
            processing_class = processing_class if processing_class is not None else tokenizer
        args = cca_arguments(args, model)
        if peft_config is not None:
            if isinstance(model, PeftModel):
                raise UsageError("peft_config= was given but model is already a PeftModel: pass one or the other")
            model = get_peft_model(model, peft_config)
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError(
                "model has no trainable parameter: pass peft_config=CCAConfig(circuit=...) or a model from "
                "get_peft_model"
            )
        pad = _pad_token_id(pad_token_id, processing_class, model)
        vocab = model.get_input_embeddings().num_embeddings
        rows = training_rows(train_dataset, processing_class, vocab, "train_dataset")
        args = copy.copy(args)  # the accumulation computed below must not change the caller's object
        multiple = 1
        if args.full_batch:
            per_process = math.ceil(len(rows) / args.world_size)
            # a micro-batch never holds more rows than a process has: no padding past one micro-batch
            args.per_device_train_batch_size = min(args.per_device_train_batch_size, per_process)
            args.gradient_accumulation_steps = math.ceil(per_process / args.per_device_train_batch_size)
            multiple = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
        dataset = PivotDataset(rows, multiple=multiple)
        if eval_dataset is not None:
            if _is_split_mapping(eval_dataset):
                eval_dataset = {
                    name: PivotDataset(training_rows(split, processing_class, vocab, f"eval_dataset[{name!r}]"))
                    for name, split in eval_dataset.items()
                }
            else:
                eval_dataset = PivotDataset(training_rows(eval_dataset, processing_class, vocab, "eval_dataset"))
        kwargs.setdefault("compute_metrics", pivot_metrics)
        super().__init__(
            model=model,
            args=args,
            data_collator=PivotCollator(pad),
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        if args.disable_tqdm:
            self.remove_callback(PrinterCallback)  # library code logs; the loss curve is in state.log_history

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Trainer's card (training results, hyperparameters), then the CCA sections it would overwrite: how to
        load the adapter, the circuit, the base's hub id (``push_to_hub`` writes its card over the adapter's)."""
        super().create_model_card(*args, **kwargs)
        config = getattr(self.model, "peft_config", {}).get("default")
        if self.is_world_process_zero() and isinstance(config, CCAConfig):
            config.write_card(self.args.output_dir)

    @property
    def loss_is_scaled_for_ga(self) -> bool:
        # full-batch losses are already divided by the dataset size; mini-batch ones are means Trainer divides
        return bool(self.args.full_batch)

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        if not self.args.full_batch:
            return super()._get_train_sampler(train_dataset)
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
        weight = inputs["weight"]
        per_record = Objective.parse(self.args.objective).per_record(diff) * weight
        if self.args.full_batch and model.training:
            # sum / N on each process, x processes because DDP averages: the gradient is the exact dataset mean
            loss = per_record.sum() * (self.accelerator.num_processes / self.train_dataset.num_records)
        else:
            loss = per_record.sum() / weight.sum().clamp(min=1.0)
        return (loss, {"logit_difference": diff}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss and each row's logit difference (as predictions; the row weights stand as labels)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            diff = logit_difference(model, inputs).detach()
        loss = Objective.parse(self.args.objective).per_record(diff).mean()
        if prediction_loss_only:
            return loss, None, None
        return loss, diff, inputs["weight"]
