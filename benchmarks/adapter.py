"""Adapter size and forward overhead of CCA on SmolLM2 with a ~1% circuit.

Compares, in one run: the saved CCA adapter against its minimum (selected rows x in_features x 4
bytes), against a LoRA r=16 adapter on q/k/v/o/gate/up/down, and the forward time of the unmerged
and merged CCA model against the bare base model (interleaved rounds, medians: these machines are
noisy). Last line:
``adapter_bytes_over_minimum=<w> adapter_bytes_ratio_vs_lora=<x> unmerged_overhead=<y> merged_overhead=<z>``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from peft_cca import CCAConfig, Circuit, describe
from peft_cca.method.model import plan_targets
from peft_cca.runtime.loading import load_model


def realistic_circuit(model, fraction: float, seed: int) -> Circuit:
    """About ``fraction`` of all components: a few heads of each kind, the rest MLP neurons (as DCM finds)."""
    shape = describe(model).shape
    generator = torch.Generator().manual_seed(seed)
    budget = round(fraction * shape.total_components)
    heads = {"q": budget // 25, "k": budget // 60, "v": budget // 60}
    heads["mlp"] = budget - sum(heads.values())
    masks = {}
    for kind, count in heads.items():
        flat = torch.zeros(shape.num_layers * shape.count(kind), dtype=torch.bool)
        flat[torch.randperm(flat.numel(), generator=generator)[:count]] = True
        masks[kind] = flat.view(shape.num_layers, shape.count(kind))
    return Circuit.from_masks(shape, masks)


def saved_bytes(peft_model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size


def minimum_bytes(model, circuit: Circuit) -> int:
    """Selected rows x the width of each row x 4 bytes: what any exact fp32 row adapter must store."""
    plan = plan_targets(describe(model), circuit, ["up"])
    total = 0
    for name, (side, index) in plan.items():
        module = model.get_submodule(name)
        width = module.in_features if side == "output" else module.out_features
        total += index.numel() * width * 4
    return total


@torch.inference_mode()
def forward_times(models: dict[str, torch.nn.Module], ids: torch.Tensor, rounds: int) -> dict[str, float]:
    for model in models.values():  # warm-up
        model(ids)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model(ids)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--fraction", type=float, default=0.01, help="share of all components in the circuit")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence in the timed forward")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    base, _ = load_model(args.model)
    bare = copy.deepcopy(base)
    circuit = realistic_circuit(base, args.fraction, args.seed)
    print(f"circuit: {circuit}")

    cca = get_peft_model(base, CCAConfig(circuit=circuit))
    with torch.no_grad():
        for name, param in cca.named_parameters():
            if "cca_delta" in name:
                param.normal_(std=1e-3)
    cca.eval()
    cca_bytes = saved_bytes(cca)
    minimum = minimum_bytes(bare, circuit)
    merged = copy.deepcopy(cca).merge_and_unload()

    lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = get_peft_model(copy.deepcopy(bare), LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets))
    lora_bytes = saved_bytes(lora)
    del lora

    print(f"CCA adapter: {cca_bytes:,} bytes; minimum {minimum:,}; LoRA r=16 adapter: {lora_bytes:,} bytes")
    print(f"trainable parameters: CCA {cca.get_nb_trainable_parameters()[0]:,}")

    ids = torch.randint(
        0, bare.config.vocab_size, (args.batch, args.length), generator=torch.Generator().manual_seed(1)
    )
    times = forward_times({"base": bare, "unmerged": cca, "merged": merged}, ids, args.rounds)
    for name, seconds in times.items():
        print(f"forward {name}: {seconds * 1000:.1f} ms (median of {args.rounds})")
    print(
        f"adapter_bytes_over_minimum={cca_bytes / minimum:.4f} "
        f"adapter_bytes_ratio_vs_lora={cca_bytes / lora_bytes:.3f} "
        f"unmerged_overhead={times['unmerged'] / times['base']:.3f} "
        f"merged_overhead={times['merged'] / times['base']:.3f}"
    )


if __name__ == "__main__":
    main()
