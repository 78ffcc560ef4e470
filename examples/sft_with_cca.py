"""The TRL SFTTrainer swap: an SFT script where ``peft_config=LoraConfig(...)`` becomes ``CCAConfig(circuit=...)``.

CCA's own loss is the logit difference (examples/cca_in_your_script.py); here the circuit is trained on SFT's
next-token loss instead, so only the circuit's rows change. The circuit comes from ``peft-cca circuit`` or
``peft_cca.find_circuit(..., out_dir=...)``:

    python examples/sft_with_cca.py --circuit runs/my-script/circuit/circuit.json --out runs/sft
"""

import argparse

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

import peft_cca
from peft_cca import CCAConfig

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="smollm2-135m-instruct", help="offline name, hub id or folder")
parser.add_argument("--task", default="rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1")
parser.add_argument("--circuit", required=True, help="a circuit.json")
parser.add_argument("--problems", type=int, default=64, help="problems to train on")
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--out", required=True)
args = parser.parse_args()

model, tokenizer = peft_cca.load_model(args.model)
problems = peft_cca.load_problems(args.task, limit=args.problems)
rows = [
    {
        "prompt": [{"role": "user", "content": problem.question}],
        "completion": [{"role": "assistant", "content": problem.solution or f"The answer is {problem.answer}."}],
    }
    for problem in problems
]

trainer = SFTTrainer(
    model,
    args=SFTConfig(
        f"{args.out}/trainer",
        max_steps=args.steps,
        learning_rate=1e-3,
        per_device_train_batch_size=4,
        bf16=torch.cuda.is_available(),  # TRL's default bf16=True stops a CPU run
        report_to="none",
    ),
    train_dataset=Dataset.from_list(rows),
    processing_class=tokenizer,
    peft_config=CCAConfig(circuit=args.circuit),  # where a LoRA script has LoraConfig(r=16, ...)
)
trainer.train()
trainer.save_model(f"{args.out}/adapter")
