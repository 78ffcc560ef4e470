"""DCM on one token vs the full sequence, on SmolLM2 with realistic Error-Localization records.

Both paths train the same mask (same seed, same batches, 5 epochs, no early stop), each in its own
subprocess so that its peak RSS is its own; the fast path's time includes building its KV cache.

Records: ``--data`` (a stage-1 dataset folder) when given; otherwise built here from real problems:
reasoning-gym basic_arithmetic in the few-shot prompt (a few hundred tokens), a greedy continuation,
and a pivot at a random generated position where the desired token is the model's runner-up and the
undesired one its greedy choice (the shape of a stage-1 record, not a verified error).

Last line: ``dcm_speedup=<x> mask_agreement=<fraction> peak_rss_ratio=<fast / full>``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from peft_cca.runtime.runfolder import atomic_write_json

MODEL = "smollm2-135m-instruct"


def build_records(n: int, shots: int, new_tokens: int, seed: int) -> list[dict]:
    from peft_cca.runtime.loading import load_model
    from peft_cca.tasks.prompts import build_prompt, encode_prompt
    from peft_cca.tasks.reasoning_gym_source import load_reasoning_gym

    model, tokenizer = load_model(MODEL)
    problems = load_reasoning_gym("basic_arithmetic", size=n, seed=seed)
    rng = random.Random(seed)
    records = []
    for problem in problems:
        prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, problem, style="fewshot", shots=shots))
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=new_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        generated = out.sequences[0, len(prompt_ids) :].tolist()
        k = rng.randrange(len(generated))
        top2 = out.scores[k][0].topk(2).indices.tolist()
        prefix = prompt_ids + generated[:k]
        records.append(
            {
                "problem_id": problem.id,
                "group_id": problem.group_id,
                "split": "train",
                "method": "prefix",
                "prefix_ids": prefix,
                "prefix_text": tokenizer.decode(prefix),
                "desired_token_id": top2[1],
                "desired_token": tokenizer.decode([top2[1]]),
                "undesired_token_id": top2[0],
                "undesired_token": tokenizer.decode([top2[0]]),
                "correct_trace": "sample",
                "question": problem.question,
                "gold_answer": problem.answer,
            }
        )
    return records


def worker(args: argparse.Namespace) -> None:
    """One path in a fresh process: time of 5 epochs (cache included) and peak RSS."""
    from peft_cca.dcm.train import DCMConfig, train_mask
    from peft_cca.localize.records import load_records
    from peft_cca.runtime.loading import load_model

    torch.set_num_threads(args.threads)
    model, _ = load_model(MODEL)
    records = load_records(args.data, vocab_size=model.get_input_embeddings().num_embeddings, splits=("train",))
    config = DCMConfig(
        lam=args.lam, epochs=args.epochs, batch_size=8, seed=0, path=args.worker, early_stop_fraction=None, lr=args.lr
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = train_mask(model, records, config, progress=False)
    seconds = time.perf_counter() - start
    torch.save(result.mask.flat(), Path(args.result) / f"{args.worker}.pt")
    stats = {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_before / 1024,
        "selected": len(result.circuit),
    }
    (Path(args.result) / f"{args.worker}.json").write_text(json.dumps(stats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Error-Localization dataset folder (default: build records here)")
    parser.add_argument("--records", type=int, default=16, help="records to build when --data is absent")
    parser.add_argument("--shots", type=int, default=8, help="few-shot exemplars per prompt (authors: 8)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated per built record")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument(
        "--lr",
        type=float,
        default=0.1,
        help="higher than the paper's 5e-3 so that masks cross 0.5 within 5 short epochs",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here (e.g. benchmarks/results/dcm-cpu.json)")
    parser.add_argument("--worker", choices=("fast", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = tmp
            records = build_records(args.records, args.shots, args.new_tokens, seed=0)
            (Path(tmp) / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        lengths = [len(json.loads(line)["prefix_ids"]) for line in (Path(data) / "records.jsonl").open()]
        print(
            f"records: {len(lengths)}, prefix tokens min/mean/max: {min(lengths)}/"
            f"{sum(lengths) / len(lengths):.0f}/{max(lengths)}",
            flush=True,
        )
        stats = {}
        for path in ("full", "fast"):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                path,
                "--result",
                tmp,
                "--data",
                data,
                "--epochs",
                str(args.epochs),
                "--lam",
                str(args.lam),
                "--lr",
                str(args.lr),
                "--threads",
                str(args.threads),
            ]
            subprocess.run(cmd, check=True)
            stats[path] = json.loads((Path(tmp) / f"{path}.json").read_text())
            print(
                f"{path:>4}: {stats[path]['seconds']:.1f} s, peak RSS {stats[path]['peak_rss_mb']:.0f} MB "
                f"(after model load {stats[path]['rss_after_load_mb']:.0f} MB), selected {stats[path]['selected']}",
                flush=True,
            )
        fast, full = torch.load(Path(tmp) / "fast.pt"), torch.load(Path(tmp) / "full.pt")
    figures = {
        "dcm_speedup": stats["full"]["seconds"] / stats["fast"]["seconds"],
        "mask_agreement": ((fast > 0.5) == (full > 0.5)).float().mean().item(),
        "peak_rss_ratio": stats["fast"]["peak_rss_mb"] / stats["full"]["peak_rss_mb"],
    }
    print(f"max |mask_fast - mask_full| = {(fast - full).abs().max().item():.2e} over {fast.numel()} components")
    print(
        f"dcm_speedup={figures['dcm_speedup']:.2f} mask_agreement={figures['mask_agreement']:.4f} "
        f"peak_rss_ratio={figures['peak_rss_ratio']:.3f}"
    )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "worker", "result")}
        atomic_write_json(args.json, {**figures, "paths": stats, "prefix_lengths": lengths, "settings": settings})


if __name__ == "__main__":
    main()
