"""Every stage at real model shapes and lengths: the old way against the new one, and the paper protocol's cost.

Models are random-init from the published hyper-parameters of Gemma-2-2B and OLMo-2-7B (no hub); ``--layers``
cuts the depth and ``--vocab`` the vocabulary so a CPU can run them. Each (stage, way) runs in a fresh process,
so its peak memory (CUDA: max allocated; CPU: peak RSS) is its own.

- ``decode`` (stage 1, evaluation, validation): greedy decoding. Old: transformers' ``generate`` one prompt at a
  time in fp32 (where the commands ran before the runtime placed them). New: the project's batched
  ``generation.generate`` in the runtime's placement (``--device``/``--dtype``; auto is bf16 on a GPU, fp32 on a CPU).
- ``dcm`` (stage 2): one epoch of ``dcm.train.train_mask``. Old: ``--path full`` (every prefix, every step). New:
  the one-token path over the prefix KV cache, whose build is timed apart: the speedup and the projection
  count it once per run of the protocol's 50 epochs, as ``circuit`` does.
- ``amplify`` (stage 3): one full-batch forward+backward of the logit difference through the CCA adapter. Old:
  fp32 base, no checkpointing. New: the runtime's dtype with gradient checkpointing.

Projection: the paper protocol (2,600 train problems x (1 greedy + 10 samples + ``--branch-completions``); DCM 50
epochs over 500 records; amplify 50 steps over all records for each of 4 learning rates, validation on 400
problems at 11 points; evaluation on 2,000 test problems), in device-hours from the measured rates, scaled to the
full depth (x full layers / measured layers). Rates measured at short lengths omit the growth of attention with
context, so at reduced lengths the projection is a lower bound.

Last line: ``<model> decode_speedup=<x> dcm_speedup=<x> amplify_memory_ratio=<new/old> projected_hours=<new>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

# Published hyper-parameters (config.json of google/gemma-2-2b and allenai/OLMo-2-1124-7B), built in code.
SHAPES = {
    "gemma2-2b": (
        "Gemma2Config",
        dict(
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=4096,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            max_position_embeddings=8192,
        ),
    ),
    "olmo2-7b": (
        "Olmo2Config",
        dict(
            vocab_size=100352,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            rms_norm_eps=1e-6,
            rope_theta=500000.0,
            max_position_embeddings=4096,
        ),
    ),
}
# The paper protocol's counts (DESIGN.md, "Scale").
TRAIN_PROBLEMS, SAMPLES, DCM_EPOCHS, RECORDS, STEPS, LRS = 2600, 10, 50, 500, 50, 4
TEST_PROBLEMS, VAL_PROBLEMS, VAL_POINTS = 2000, 400, 11


def build_model(shape: str, layers: int | None, vocab: int | None, dtype: torch.dtype, device: str):
    import transformers

    class_name, params = SHAPES[shape]
    params = {**params, **({"num_hidden_layers": layers} if layers else {}), **({"vocab_size": vocab} if vocab else {})}
    config = getattr(transformers, class_name)(**params, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def word_tokenizer(vocab: int):
    """A word-level tokenizer over ``vocab`` ids (``t0`` .. ``tN``): what the project's generate needs of one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab)}, unk_token="t3"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="t0", eos_token="t1", pad_token="t2")


def prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (length,), generator=generator).tolist() for _ in range(count)]


def peak_mb(device: str) -> float:
    """CUDA: the most memory allocated so far; CPU: the peak resident set so far (a process-wide maximum)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_decode(args, way: str, device: str, dtype: torch.dtype) -> dict:
    from peft_cca.runtime.generation import generate

    model = build_model(args.shape, args.layers, args.vocab, dtype, device)
    vocab, built = model.config.vocab_size, peak_mb(device)
    # the old way decodes one prompt at a time, so one prompt gives its rate (and keeps a full-size CPU run short)
    inputs = prompts(1 if way == "old" else args.batch, args.prompt, vocab)
    start = time.perf_counter()
    if way == "old":
        for ids in inputs:
            model.generate(
                torch.tensor([ids], device=device),
                max_new_tokens=args.trace,
                min_new_tokens=args.trace,
                do_sample=False,
                pad_token_id=2,
            )
    else:
        generate(model, word_tokenizer(vocab), inputs, max_new_tokens=args.trace, batch_size=args.batch)
    sync(device)
    seconds = time.perf_counter() - start
    tokens = len(inputs) * args.trace
    return {"seconds": seconds, "rate": tokens / seconds, "unit": "new tokens/s", "work_mb": peak_mb(device) - built}


def measure_dcm(args, way: str, device: str, dtype: torch.dtype) -> dict:
    from peft_cca.dcm.paths import make_path
    from peft_cca.dcm.train import DCMConfig, train_mask
    from peft_cca.localize.records import Record

    model = build_model(args.shape, args.layers, args.vocab, dtype, device)
    vocab, built = model.config.vocab_size, peak_mb(device)
    shared = prompts(1, args.prompt, vocab, seed=1)[0]  # the 8-shot prompt every record of a problem shares
    records = [
        Record(tuple(shared + trace[: args.trace // 2 + i]), 5 + i, 6 + i)
        for i, trace in enumerate(prompts(args.records, args.trace, vocab, seed=2))
    ]
    config = DCMConfig(
        lam=1e-3, epochs=1, batch_size=8, path="full" if way == "old" else "fast", early_stop_fraction=None
    )
    # the prefix cache is built once per run and reused by every epoch: timed apart, so that the projection
    # counts it once for the protocol's 50 epochs instead of once per epoch
    start = time.perf_counter()
    path = make_path(config.path, model, records, progress=False)
    sync(device)
    build = time.perf_counter() - start
    start = time.perf_counter()
    train_mask(model, records, config, path=path, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rate": len(records) / seconds,
        "unit": "record-epochs/s",
        "build_seconds": build,
        "work_mb": peak_mb(device) - built,
    }


def dcm_protocol_seconds(measured: dict, records: int) -> float:
    """Seconds of the protocol's DCM (cache built once, then ``DCM_EPOCHS`` epochs) over ``RECORDS`` records."""
    return RECORDS / records * measured.get("build_seconds", 0.0) + DCM_EPOCHS * RECORDS / measured["rate"]


def measure_amplify(args, way: str, device: str, dtype: torch.dtype) -> dict:
    from peft import get_peft_model

    from peft_cca import CCAConfig, Circuit, describe
    from peft_cca.amplify.loss import logit_difference
    from peft_cca.amplify.records import PivotCollator

    model = build_model(args.shape, args.layers, args.vocab, dtype, device)
    if way == "new":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    shape = describe(model).shape
    # about 1% of the components in every layer: one head of each kind and every 100th neuron
    neurons = list(range(0, shape.intermediate_size, 100))
    selected = {layer: {"q": [0], "k": [0], "v": [0], "mlp": neurons} for layer in range(shape.num_layers)}
    peft_model = get_peft_model(model, CCAConfig(circuit=Circuit(shape, selected))).train()
    vocab, built = model.config.vocab_size, peak_mb(device)
    rows = [
        {"prefix_ids": ids, "desired_token_id": 5, "undesired_token_id": 6}
        for ids in prompts(args.records, args.prompt + args.trace, vocab)
    ]
    collate = PivotCollator(pad_token_id=2)
    start = time.perf_counter()
    for begin in range(0, len(rows), args.micro_batch):
        batch = {k: v.to(device) for k, v in collate(rows[begin : begin + args.micro_batch]).items()}
        (-logit_difference(peft_model, batch).sum() / len(rows)).backward()
    sync(device)
    seconds = time.perf_counter() - start
    tokens = len(rows) * (args.prompt + args.trace)
    return {"seconds": seconds, "rate": tokens / seconds, "unit": "train tokens/s", "work_mb": peak_mb(device) - built}


def worker(args) -> None:
    from peft_cca.runtime.placement import resolve_runtime

    torch.set_num_threads(args.threads)
    runtime = resolve_runtime(args.device, args.dtype)
    old = args.way == "old"
    device = "cpu" if old and args.stage == "decode" else runtime.device
    dtype = torch.float32 if old else runtime.torch_dtype
    measure = {"decode": measure_decode, "dcm": measure_dcm, "amplify": measure_amplify}[args.stage]
    result = measure(args, args.way, device, dtype)
    result |= {"peak_mb": peak_mb(device), "device": device, "dtype": str(dtype).removeprefix("torch.")}
    Path(args.result).write_text(json.dumps(result))


def project(shape: str, layers: int, rates: dict[str, dict], args) -> dict[str, float]:
    """Device-hours of the paper protocol per stage from the new way's measured rates."""
    depth = SHAPES[shape][1]["num_hidden_layers"] / layers
    trace = args.protocol_trace
    decode = rates["decode"]["rate"] / depth
    stage1 = TRAIN_PROBLEMS * ((1 + SAMPLES) * trace + args.branch_completions * trace / 2) / decode
    dcm = dcm_protocol_seconds(rates["dcm"], args.records) * depth
    amplify_train = LRS * STEPS * RECORDS * (args.protocol_prompt + trace / 2) / (rates["amplify"]["rate"] / depth)
    validation = LRS * VAL_POINTS * VAL_PROBLEMS * trace / decode
    evaluation = TEST_PROBLEMS * trace / decode
    seconds = {"localize": stage1, "circuit": dcm, "amplify": amplify_train + validation, "evaluate": evaluation}
    return {stage: s / 3600 for stage, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--layers", type=int, help="cut the depth to this many layers (default: the real depth)")
    parser.add_argument("--vocab", type=int, help="cut the vocabulary (default: the real one)")
    parser.add_argument("--prompt", type=int, default=1000, help="prompt tokens (8-shot: ~1,000)")
    parser.add_argument("--trace", type=int, default=2000, help="trace tokens (paper: 1,500-2,500)")
    parser.add_argument("--batch", type=int, default=8, help="prompts decoded (the new way decodes them together)")
    parser.add_argument("--records", type=int, default=16, help="DCM records and amplify rows")
    parser.add_argument("--micro-batch", type=int, default=4, help="amplify rows per forward+backward")
    parser.add_argument(
        "--stages", nargs="+", default=["decode", "dcm", "amplify"], choices=["decode", "dcm", "amplify"]
    )
    parser.add_argument("--device", default="auto", help="the new way's device (runtime rules)")
    parser.add_argument("--dtype", default="auto", help="the new way's dtype (runtime rules; auto: bf16 on a GPU)")
    parser.add_argument("--protocol-prompt", type=int, default=1000, help="projection: prompt tokens")
    parser.add_argument("--protocol-trace", type=int, default=2000, help="projection: trace tokens")
    parser.add_argument("--branch-completions", type=int, default=5, help="projection: branch completions/problem")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write every figure here (benchmarks/results/scale-cpu.json)")
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        worker(args)
        return
    forwarded = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if v is not None and not isinstance(v, list) and k != "json"
    ]
    summary = []
    report: dict[str, dict] = {}
    for shape in args.models:
        layers = args.layers or SHAPES[shape][1]["num_hidden_layers"]
        rates: dict[str, dict] = {}
        print(f"{shape}: {layers} layers, prompt {args.prompt}, trace {args.trace}", flush=True)
        for stage in args.stages:
            measured = {}
            for way in ("old", "new"):
                result = Path(f"/tmp/scale-{shape}-{stage}-{way}.json")
                command = [sys.executable, __file__, *forwarded, f"--shape={shape}", f"--stage={stage}", f"--way={way}"]
                subprocess.run([*command, f"--result={result}"], check=True)
                measured[way] = json.loads(result.read_text())
                result.unlink()
                m = measured[way]
                print(
                    f"  {stage:8} {way}: {m['rate']:10.2f} {m['unit']:16} peak {m['peak_mb']:8.0f} MB, "
                    f"work {m['work_mb']:7.1f} MB "
                    f"({m['device']}, {m['dtype']}, {m['seconds']:.1f} s)",
                    flush=True,
                )
            rates[stage] = measured["new"]
            speed = measured["new"]["rate"] / measured["old"]["rate"]
            if stage == "dcm":  # the whole protocol's DCM, the cache build counted once
                speed = dcm_protocol_seconds(measured["old"], args.records) / dcm_protocol_seconds(
                    measured["new"], args.records
                )
            # the work's own memory (above the built model), floored at 1 MB so a tiny run does not divide by 0
            memory = max(measured["new"]["work_mb"], 1.0) / max(measured["old"]["work_mb"], 1.0)
            print(f"  {stage:8} speedup {speed:.2f}x, work memory new/old {memory:.2f}", flush=True)
            rates[f"{stage}_ratios"] = {"speedup": speed, "memory": memory}
            report.setdefault(shape, {"layers": layers})[stage] = {**measured, "speedup": speed, "memory_ratio": memory}
        if all(stage in rates for stage in ("decode", "dcm", "amplify")):
            hours = project(shape, layers, rates, args)
            print(
                f"  projected {rates['decode']['device']}-hours (paper protocol, new way, full depth): "
                + ", ".join(f"{k} {v:.1f}" for k, v in hours.items())
            )
            report[shape]["projected_hours"] = hours
            summary.append(
                f"{shape} decode_speedup={rates['decode_ratios']['speedup']:.2f} "
                f"dcm_speedup={rates['dcm_ratios']['speedup']:.2f} "
                f"amplify_memory_ratio={rates['amplify_ratios']['memory']:.2f} "
                f"projected_hours={sum(hours.values()):.1f}"
            )
    print(" | ".join(summary))
    if args.json:
        from peft_cca.runtime.runfolder import atomic_write_json

        settings = {k: v for k, v in vars(args).items() if k not in ("json", "shape", "stage", "way", "result")}
        atomic_write_json(args.json, {"summary": summary, "models": report, "settings": settings})


if __name__ == "__main__":
    main()
