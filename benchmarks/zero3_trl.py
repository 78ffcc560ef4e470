"""Does a CCA adapter train under TRL's SFTTrainer with DeepSpeed ZeRO-3 and a bf16 base? On CPUs, with gloo.

TRL passes ``autocast_adapter_dtype=False`` to ``get_peft_model`` under ZeRO-3, because some DeepSpeed releases
fail at the first optimizer step on a mix of bf16 and fp32 parameters. CCA honours the flag (bf16 deltas);
``--deltas fp32`` casts them back to fp32 before training, to see whether a given DeepSpeed needs it. A tiny random
Llama from ``tests/tiny_models.py``, three steps, two processes::

    pip install deepspeed            # DS_BUILD_OPS=0: no CUDA needed; not a peft-cca dependency
    torchrun --nproc_per_node 2 benchmarks/zero3_trl.py [--deltas fp32] [--method lora]
    PYTHONPATH=/tmp/ds-0.19.2 torchrun ...   # another DeepSpeed, from `pip install --target /tmp/ds-0.19.2`

Last line, on rank 0: ``RESULT {json}`` with the DeepSpeed version, the ZeRO stage, the trainable dtypes before
and after DeepSpeed wrapped the model, and the losses. A failure is DeepSpeed's own traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import deepspeed
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from peft_cca import CCAConfig, CCALayer, Circuit, describe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

DEEPSPEED_CONFIG = {
    "zero_optimization": {"stage": 3},
    "bf16": {"enabled": True},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
}


def trainable_dtypes(model: torch.nn.Module) -> list[str]:
    return sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["cca", "lora"], default="cca")
    parser.add_argument("--deltas", choices=["auto", "fp32"], default="auto", help="fp32: undo TRL's flag")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off to isolate dtypes")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    deepspeed.init_distributed(dist_backend="gloo")  # before the base is built, so that zero.Init partitions it
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=2,
            learning_rate=1e-2,
            report_to=[],
            use_cpu=True,
            bf16=True,
            save_strategy="no",
            logging_steps=1,
            max_length=32,
            deepspeed=DEEPSPEED_CONFIG,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        base = tiny_model("llama", dtype=torch.bfloat16)
        if args.method == "cca":
            circuit = Circuit(describe(base).shape, {0: {"q": [1], "mlp": [3, 17]}, 1: {"v": [0]}})
            peft_config = CCAConfig(circuit=circuit)
        else:
            peft_config = LoraConfig(target_modules=["q_proj", "v_proj"], r=4)
        data = Dataset.from_dict({"text": ["the answer is 42. ", "two plus two is 4. ", "hello world! "] * 4})
        trainer = SFTTrainer(
            model=base, args=config, train_dataset=data, processing_class=tiny_tokenizer(), peft_config=peft_config
        )
        if args.deltas == "fp32":
            for module in trainer.model.modules():
                if isinstance(module, CCALayer):
                    for adapter in list(module.cca_delta):
                        module.cast_delta(adapter, torch.float32)
        before = trainable_dtypes(trainer.model)
        trainer.train()
        result = {
            "deepspeed": deepspeed.__version__,
            "zero_stage": trainer.model_wrapped.zero_optimization_stage(),
            "method": args.method,
            "deltas": args.deltas,
            "trainable_dtypes": before,
            "trainable_dtypes_in_deepspeed": trainable_dtypes(trainer.model),
            "losses": [round(h["loss"], 6) for h in trainer.state.log_history if "loss" in h],
        }
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
