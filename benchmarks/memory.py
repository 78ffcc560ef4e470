"""Memory of one full CCA update step on SmolLM2 with a ~1% circuit, three ways, same optimizer (AdamW):

(a) the CCA adapter (fp32 deltas for the circuit's rows only);
(b) the authors' way: the whole q/k/v/up weights the circuit touches are trainable, their gradients are
    masked to the circuit's rows by a hook, so gradient and optimizer state are dense;
(c) LoRA r=16 on q/k/v/o/gate/up/down.

Each variant runs in its own process, so its peak resident memory is its own. The peak is reset (Linux
``/proc/self/clear_refs``) after the model is loaded: it measures the update step (forward, backward,
optimizer step) on top of the resident model, not the one-off loading. Last line:
``grad_state_bytes_over_minimum=<w> peak_rss_ratio_vs_dense=<x> peak_rss_ratio_vs_lora=<y>``
where the minimum is the circuit's parameter count x 4 bytes x (1 gradient + 2 AdamW states).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
from adapter import realistic_circuit  # benchmarks/adapter.py: the same ~1% circuit shape as the adapter benchmark
from peft import LoraConfig, get_peft_model

from peft_cca import CCAConfig, describe
from peft_cca.amplify.loss import logit_difference
from peft_cca.amplify.records import PivotCollator
from peft_cca.method.model import plan_targets
from peft_cca.runtime.loading import load_model
from peft_cca.runtime.runfolder import atomic_write_json

VARIANTS = ("cca", "dense", "lora")
ADAMW_STATES = 2  # exp_avg and exp_avg_sq per parameter


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dense_masked(model, circuit) -> torch.nn.Module:
    """The authors' setup: whole weights trainable, gradient rows outside the circuit zeroed by a hook."""
    model.requires_grad_(False)
    for name, (side, index) in plan_targets(describe(model), circuit, ["up"]).items():
        weight = model.get_submodule(name).weight
        weight.requires_grad_(True)
        mask = torch.zeros_like(weight, dtype=torch.bool)
        if side == "output":
            mask[index] = True
        else:
            mask[:, index] = True
        weight.register_hook(lambda grad, mask=mask: grad * mask)
    return model


def _build(variant: str, model, circuit) -> torch.nn.Module:
    if variant == "cca":
        return get_peft_model(model, CCAConfig(circuit=circuit))
    if variant == "dense":
        return _dense_masked(model, circuit)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules=targets))


def measure(variant: str, model_name: str, fraction: float, batch: int, length: int, seed: int) -> dict:
    """One AdamW step of the logit-difference loss on ``batch`` prefixes of ``length`` tokens."""
    model, tokenizer = load_model(model_name)
    circuit = realistic_circuit(model, fraction, seed)
    circuit_params = sum(
        index.numel() * (model.get_submodule(name).weight.shape[1 if side == "output" else 0])
        for name, (side, index) in plan_targets(describe(model), circuit, ["up"]).items()
    )
    model = _build(variant, model, circuit)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch + 1, length), generator=generator).tolist()
    records = [
        {"prefix_ids": ids[i], "desired_token_id": ids[-1][i], "undesired_token_id": ids[-1][i + 1]}
        for i in range(batch)
    ]
    inputs = PivotCollator(tokenizer.pad_token_id)(records)
    resettable = _reset_peak()
    loss = -logit_difference(model, inputs).mean()
    loss.backward()
    optimizer.step()
    peak = _peak_rss_bytes()
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return {
        "variant": variant,
        "trainable_params": sum(p.numel() for p in params),
        "circuit_params": circuit_params,
        "grad_state_bytes": grad_bytes + state_bytes,
        "peak_rss_bytes": peak,
        "peak_reset": resettable,
        "circuit_percent": 100 * circuit.fraction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--fraction", type=float, default=0.01, help="circuit size as a fraction of components")
    # CCA steps are full-batch through accumulation, so the micro-batch is a free memory knob: 1 is each
    # method's minimum, where what differs (gradients, optimizer state, adapter activations) shows most.
    parser.add_argument("--batch", type=int, default=1, help="micro-batch of prefixes")
    parser.add_argument("--length", type=int, default=128, help="prefix length in tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here (benchmarks/results/memory-cpu.json)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.model, args.fraction, args.batch, args.length, args.seed)))
        return
    results = {}
    for variant in VARIANTS:
        options = {
            "--model": args.model,
            "--fraction": args.fraction,
            "--batch": args.batch,
            "--length": args.length,
            "--seed": args.seed,
        }
        command = [sys.executable, __file__, "--variant", variant, *(str(x) for kv in options.items() for x in kv)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    cca = results["cca"]
    print(
        f"circuit: {cca['circuit_percent']:.3f}% of components, {cca['circuit_params']:,} weights; "
        f"one AdamW step, batch {args.batch} x {args.length} tokens"
    )
    print(f"{'variant':<8} {'trainable':>12} {'grad+state MB':>14} {'peak RSS MB':>12}")
    for variant, r in results.items():
        print(
            f"{variant:<8} {r['trainable_params']:>12,} {r['grad_state_bytes'] / 2**20:>14.1f} "
            f"{r['peak_rss_bytes'] / 2**20:>12.1f}"
        )
    minimum = cca["circuit_params"] * 4 * (1 + ADAMW_STATES)
    w = cca["grad_state_bytes"] / minimum
    x = cca["peak_rss_bytes"] / results["dense"]["peak_rss_bytes"]
    y = cca["peak_rss_bytes"] / results["lora"]["peak_rss_bytes"]
    print(f"grad_state_bytes_over_minimum={w:.3f} peak_rss_ratio_vs_dense={x:.3f} peak_rss_ratio_vs_lora={y:.3f}")
    if args.json:
        figures = {"grad_state_bytes_over_minimum": w, "peak_rss_ratio_vs_dense": x, "peak_rss_ratio_vs_lora": y}
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "variant")}
        atomic_write_json(args.json, {**figures, "variants": results, "settings": settings})


if __name__ == "__main__":
    main()
