"""CCA in your own training script: load, localize, find the circuit, train with CCATrainer, save, reload, merge.

python examples/cca_in_your_script.py --out runs/my-script            # the offline SmolLM2, a small run
accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml examples/cca_in_your_script.py --out runs/ddp
"""

import argparse

from accelerate import PartialState
from peft import PeftModel

import peft_cca
from peft_cca import CCAConfig, CCATrainer, CCATrainingArguments, DCMConfig, LocalizeConfig

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="smollm2-135m-instruct", help="offline name, hub id or folder")
parser.add_argument("--task", default="rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1")
parser.add_argument("--problems", type=int, default=40, help="problems to localize errors on")
parser.add_argument("--epochs", type=int, default=50, help="DCM epochs (the paper's 50)")
parser.add_argument("--dcm-lr", type=float, default=5e-3, help="DCM's Adam lr: a mask needs ~0.5/lr steps to turn on")
parser.add_argument("--steps", type=int, default=10, help="full-batch optimizer steps")
parser.add_argument("--out", required=True)
args = parser.parse_args()

model, tokenizer = peft_cca.load_model(args.model)  # offline names work with no hub access
settings = LocalizeConfig(limit=args.problems, splits=("train", "validation"), max_new_tokens=32, n_samples=4)
data = peft_cca.localize_errors(model, tokenizer, args.task, f"{args.out}/localize", settings)  # a DatasetDict
dcm = DCMConfig(epochs=args.epochs, lr=args.dcm_lr)
# DCM is deterministic: under `accelerate launch` every process finds the same circuit, and one writes its files
folder = f"{args.out}/circuit" if PartialState().is_main_process else None
circuit = peft_cca.find_circuit(model, data, lambdas=[1e-3, 1e-4], config=dcm, out_dir=folder)

# your own rows train beside the localized ones: the prompt text, then one desired and one undesired token
chat = [{"role": "user", "content": "State the final answer to the following arithmetic problem: 3 + 4 ="}]
prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
own_rows = [{"prompt": prompt, "desired": "7", "undesired": "8"}]

trainer = CCATrainer(
    model,
    args=CCATrainingArguments(f"{args.out}/trainer", learning_rate=1e-2, max_steps=args.steps, report_to="none"),
    train_dataset=[*data["train"], *own_rows],
    eval_dataset=data.get("validation", data["train"]),
    processing_class=tokenizer,
    peft_config=CCAConfig(circuit=circuit),
)
trainer.train()
print(trainer.evaluate())  # eval_loss, eval_logit_difference, eval_desired_wins
trainer.save_model(f"{args.out}/adapter")  # adapter_config.json + adapter_model.safetensors + README.md

if trainer.accelerator.is_main_process:  # one process reloads, merges and generates
    base, _ = peft_cca.load_model(args.model)
    merged = PeftModel.from_pretrained(base, f"{args.out}/adapter").merge_and_unload()
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = merged.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(repr(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)))
